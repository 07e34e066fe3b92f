#!/usr/bin/env bash
# What the tests left behind: processes, temporary directories and Docker
# objects. scripts/test.sh takes a snapshot before the tests and checks
# after them; only what is new since the snapshot counts.
#
#   scripts/check-leftovers.sh snapshot FILE   record what exists now
#   scripts/check-leftovers.sh check [FILE]    list what is left (beyond
#                                              FILE); exit 1 if anything is
#   scripts/check-leftovers.sh list            list, exit 0
#
# What counts as the tests':
# - a process whose command line or working directory is under
#   $TMPDIR/autodeploy-* (every server the tests start keeps its files
#   there: git daemon, sshd -f, nginx -c, fcgiwrap -s, docker-registry
#   serve, autodeploy serve/agent, chromedriver), one whose working
#   directory is this repository's host/ (where `cargo test` runs test
#   binaries: nginx workers rewrite their command line and environment, but
#   keep it), a test binary's reaper,
#   a process whose environment carries AUTODEPLOY_TEST_RUN=<this run> (set
#   by scripts/test.sh, inherited by everything the run starts), and every
#   descendant of one of these (nginx workers, chromium);
# - a file or directory $TMPDIR/autodeploy-*;
# - Docker containers, networks and volumes of compose projects named
#   autodeploy-* (what the agent names them), and images of the tests'
#   loopback registries (127.0.0.1:PORT/..., 127.0.0.2:PORT/...) or built
#   by the agent (autodeploy-*), and dangling images.
# The Docker Engine itself, other users' processes and anything that
# existed at the snapshot are never listed.
set -uo pipefail

tmp=${TMPDIR:-/tmp}
tmp=${tmp%/}
prefix="$tmp/autodeploy-"
run=${AUTODEPLOY_TEST_RUN:-}
# `cargo test` runs test binaries in the package's directory: what they
# start keeps it as its working directory unless it changes it.
package="$(cd "$(dirname "$0")/.." && pwd)/host"
reaper=autodeploy-test-reaper

# One line per item: KEY<TAB>what it is. KEY identifies it across a
# snapshot (a pid with its start time, so a reused pid is another process).
list_processes() {
    local self=$$ p pid ppid start stat rest
    declare -A parent starttime cmd flagged keep
    local -a args envs
    local cwd e
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        read -r stat 2>/dev/null <"$p/stat" || continue
        # "pid (comm) state ppid ...": comm may hold spaces.
        rest=${stat##*) }
        read -r _ ppid _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ start _ <<<"$rest"
        parent[$pid]=$ppid
        starttime[$pid]=$start
        mapfile -d '' args 2>/dev/null <"$p/cmdline" || continue
        cmd[$pid]="${args[*]}"
        [ -n "${cmd[$pid]}" ] || continue # kernel threads
        cwd=$(readlink "$p/cwd" 2>/dev/null)
        if [[ ${cmd[$pid]} == *"$prefix"* || $cwd == "$prefix"* || ${cmd[$pid]} == *"$reaper"* ||
            $cwd == "$package" || $cwd == "$package/"* ]]; then
            flagged[$pid]=1
        elif [ -n "$run" ] && mapfile -d '' envs 2>/dev/null <"$p/environ"; then
            for e in "${envs[@]}"; do
                if [ "$e" = "AUTODEPLOY_TEST_RUN=$run" ]; then
                    flagged[$pid]=1
                    break
                fi
            done
        fi
    done
    # This script, what it runs and its callers (scripts/test.sh) carry the
    # run's variable too: never listed.
    for pid in "${!parent[@]}"; do
        p=$pid
        while [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != 1 ]; do
            if [ "$p" = "$self" ]; then keep[$pid]=1; break; fi
            p=${parent[$p]:-}
        done
    done
    p=$self
    while [ -n "$p" ] && [ "$p" != 0 ]; do keep[$p]=1; p=${parent[$p]:-}; done
    # Descendants of a flagged process are the tests' too.
    local grew=1
    while [ $grew = 1 ]; do
        grew=0
        for pid in "${!parent[@]}"; do
            if [ -z "${flagged[$pid]:-}" ] && [ -n "${flagged[${parent[$pid]}]:-}" ]; then
                flagged[$pid]=1
                grew=1
            fi
        done
    done
    for pid in "${!flagged[@]}"; do
        [ -z "${keep[$pid]:-}" ] || continue
        [ -d "/proc/$pid" ] || continue
        printf 'process %s:%s\tprocess %s (parent %s): %s\n' "$pid" "${starttime[$pid]}" \
            "$pid" "${parent[$pid]}" "${cmd[$pid]:0:200}"
    done
}

list_paths() {
    local f
    for f in "$prefix"*; do
        [ -e "$f" ] || continue
        printf 'path %s\ttemporary %s %s\n' "$f" "$([ -d "$f" ] && echo directory || echo file)" "$f"
    done
}

list_docker() {
    command -v docker >/dev/null && docker info >/dev/null 2>&1 || return 0
    docker ps -a --format '{{.ID}} {{.Names}} {{.Label "com.docker.compose.project"}}' |
        while read -r id name project; do
            [[ $name == autodeploy-* || $project == autodeploy-* ]] &&
                printf 'container %s\tdocker container %s (compose project %s)\n' "$id" "$name" "${project:--}"
        done
    docker network ls --format '{{.ID}} {{.Name}}' | while read -r id name; do
        [[ $name == autodeploy-* ]] && printf 'network %s\tdocker network %s\n' "$id" "$name"
    done
    docker volume ls --format '{{.Name}}' | while read -r name; do
        [[ $name == autodeploy-* ]] && printf 'volume %s\tdocker volume %s\n' "$name" "$name"
    done
    docker images -a --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}' | while read -r id ref; do
        case $ref in
        127.0.0.1:* | 127.0.0.2:* | localhost:* | autodeploy-* | '<none>:<none>')
            printf 'image %s %s\tdocker image %s (%s)\n' "$id" "$ref" "$ref" "$id"
            ;;
        esac
    done
}

list_all() {
    list_processes
    list_paths
    list_docker
}

# What is listed now and not in the snapshot FILE (if any).
new_items() {
    local snapshot=${1:-}
    if [ -n "$snapshot" ]; then
        list_all | awk -F'\t' -v snapshot="$snapshot" '
            BEGIN { while ((getline line < snapshot) > 0) { split(line, f, "\t"); seen[f[1]] = 1 } }
            !($1 in seen)' 
    else
        list_all
    fi
}

case ${1:-} in
snapshot)
    [ -n "${2:-}" ] || { echo "usage: $0 snapshot FILE" >&2; exit 2; }
    list_all >"$2"
    n=$(wc -l <"$2")
    [ "$n" = 0 ] || echo "check-leftovers: $n item(s) existed before the tests; they are not counted"
    ;;
list)
    new_items "${2:-}" | cut -f2-
    ;;
check)
    # Test binaries' reapers finish just after their binary exits (they
    # end its servers, then remove its directory): give them a moment.
    deadline=$((SECONDS + 15))
    while [ -n "$(new_items "${2:-}")" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.2
    done
    left=$(new_items "${2:-}")
    if [ -n "$left" ]; then
        echo "error: the tests left these behind (scripts/check-leftovers.sh):" >&2
        cut -f2- <<<"$left" | sed 's/^/  /' >&2
        echo "Every test-started process, temporary directory and Docker object must be" >&2
        echo "ended or removed by its guard (host/tests/common/reap.rs); see README, Tests." >&2
        exit 1
    fi
    echo "check-leftovers: no process, $prefix* path or Docker object left behind"
    ;;
*)
    echo "usage: $0 snapshot FILE | check [FILE] | list [FILE]" >&2
    exit 2
    ;;
esac
