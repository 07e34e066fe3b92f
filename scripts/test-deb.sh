#!/usr/bin/env bash
# The Debian package, end to end: builds it with cargo-deb from the binary
# `cargo test` already built (the dev profile: no second, release build of
# wasmtime), installs it with dpkg, verifies both systemd units, runs the
# installed control plane and agent as their units would (as user
# autodeploy, with /etc/autodeploy/*.env), then purges the package and
# checks nothing of it is left. Root only: it installs a package.
#
# systemd is not PID 1 in CI's container, so the units' ExecStart runs
# under setpriv with the unit's User, Group, SupplementaryGroups,
# Environment, EnvironmentFile and WorkingDirectory; the sandbox itself is
# checked statically (`systemd-analyze verify` and `security`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: 3.x packages a dev-profile binary with a warning, a later
# version may refuse to.
CARGO_DEB_VERSION=3.8.0
target_dir=${CARGO_TARGET_DIR:-target}
binary=$target_dir/debug/autodeploy
deb=$target_dir/debian/autodeploy-test.deb
units=/usr/lib/systemd/system
# What the package installs or its units make; all must go with the purge.
package_paths=(/usr/bin/autodeploy /etc/autodeploy /var/lib/autodeploy /var/lib/autodeploy-agent
    "$units/autodeploy.service" "$units/autodeploy-agent.service" /usr/lib/sysusers.d/autodeploy.conf
    /usr/share/doc/autodeploy)

fail() {
    echo "error: test-deb: $*" >&2
    exit 1
}

package_state() {
    dpkg-query -W -f='${db:Status-Status}' autodeploy 2>/dev/null || true
}

[ "$(id -u)" -eq 0 ] || fail "it installs a package with dpkg: run it as root"
[ -x "$binary" ] || fail "$binary is missing: the package holds the binary \`cargo test\` built; run \`cargo build -p autodeploy\` first"
# setpriv (util-linux) runs the units' commands as their user; systemd
# brings systemd-analyze and systemd-sysusers (the package's postinst);
# dpkg-dev has dpkg-shlibdeps, which cargo-deb asks for the library
# dependencies.
scripts/apt-install.sh util-linux systemd dpkg-dev curl
# Someone else's install, or a run that was killed: never purge what this
# run did not install.
state=$(package_state)
case "$state" in "" | not-installed) ;; *) fail "the autodeploy package is on this machine already ($state): this test installs and purges it; remove it first (dpkg --purge autodeploy)" ;; esac
for path in "${package_paths[@]}"; do
    [ ! -e "$path" ] || fail "$path exists though the package is not installed: remove it first"
done
! getent passwd autodeploy >/dev/null || fail "user autodeploy exists though the package is not installed: remove it first (userdel autodeploy)"

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "==> cargo install cargo-deb $CARGO_DEB_VERSION"
    started=$SECONDS
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
    echo "cargo-deb installed in $((SECONDS - started)) s"
fi

work=$(mktemp -d /tmp/autodeploy-deb.XXXXXX)
installed=""
pids=()
cleanup() {
    status=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*.log; do
            [ -e "$log" ] || continue
            echo "--- $log" >&2
            tail -n 40 "$log" >&2
        done
    fi
    [ -z "$installed" ] || dpkg --purge autodeploy >/dev/null || echo "error: test-deb: dpkg --purge autodeploy failed" >&2
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

echo "==> cargo deb (the dev-profile binary cargo test built)"
started=$SECONDS
# --no-build: package what is there; --fast: the test needs no small file.
cargo deb -p autodeploy --profile dev --no-build --fast -o "$deb"
echo "packaged in $((SECONDS - started)) s: $(du -h "$deb" | cut -f1)"

echo "==> dpkg -i"
installed=yes
dpkg -i "$deb"
[ "$(package_state)" = installed ] || fail "dpkg -i did not leave autodeploy installed: $(package_state)"
getent passwd autodeploy >/dev/null || fail "the postinst did not create user autodeploy"
for conf in /etc/autodeploy/autodeploy.env /etc/autodeploy/agent.env; do
    grep -qx "$conf" /var/lib/dpkg/info/autodeploy.conffiles || fail "$conf is not a conffile"
    [ "$(stat -c %a:%U "$conf")" = 600:root ] || fail "$conf is $(stat -c %a:%U "$conf"), not 600:root: it holds secrets"
done

echo "==> systemd-analyze verify and security"
for unit in autodeploy.service autodeploy-agent.service; do
    systemd-analyze verify "$units/$unit"
    # 2.0 on systemd's 0-10 scale ("OK"): both units score 1.5 as shipped.
    systemd-analyze security --offline=true --threshold=20 "$units/$unit" >"$work/security-$unit.txt" 2>&1 ||
        fail "$unit is less confined than it was: $(tail -n 1 "$work/security-$unit.txt")"
done

# Runs a unit's ExecStart as systemd would, in the background of this
# shell; sets started_pid (setpriv, env, sh and the command exec one
# another, so it is the command's).
start_unit() {
    local unit=$1 log=$2 file=$units/$1
    key() { sed -n "s/^$1=//p" "$file"; }
    local user group groups envfile dir exec_start home
    user=$(key User) group=$(key Group) groups=$(key SupplementaryGroups)
    envfile=$(key EnvironmentFile) dir=$(key WorkingDirectory) exec_start=$(key ExecStart)
    home=$(getent passwd "$user" | cut -d: -f6)
    # What systemd's StateDirectory= makes before the start.
    install -d -o "$user" -g "$group" -m 0700 "$dir"
    # systemd reads the EnvironmentFile as root (it is 0600), then drops to
    # the unit's user: so does this.
    # shellcheck disable=SC2046 # one word per Environment= assignment
    (cd "$dir" && exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$home" USER="$user" LOGNAME="$user" $(key Environment) \
        sh -c 'set -a; . "$1"; set +a; exec setpriv --reuid="$2" --regid="$3" --groups="$4" --no-new-privs sh -c "exec $5"' \
        sh "$envfile" "$user" "$group" "$group${groups:+,$groups}" "$exec_start") >"$log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
}

# Polls `check` every 0.1 s, at most 60 s, while process `pid` lives.
wait_for() {
    local what=$1 pid=$2
    shift 2
    for _ in $(seq 1 600); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || fail "the process ended before $what"
        sleep 0.1
    done
    fail "no $what within 60 s"
}

# Ends `pid` with SIGTERM, as systemctl stop does, and expects a clean exit.
stop_unit() {
    local what=$1 pid=$2 code=0
    kill -TERM "$pid"
    wait "$pid" || code=$?
    [ "$code" -eq 0 ] || fail "$what exited $code on SIGTERM, not 0"
}

echo "==> autodeploy serve as autodeploy.service runs it"
# The edits an admin makes: a fixed token, and here any free port.
admin_token=ad-deb-test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
sed -i -e 's/^AUTODEPLOY_LISTEN=.*/AUTODEPLOY_LISTEN=127.0.0.1:0/' \
    -e "s/^#AUTODEPLOY_ADMIN_TOKEN=.*/AUTODEPLOY_ADMIN_TOKEN=$admin_token/" /etc/autodeploy/autodeploy.env
grep -qx "AUTODEPLOY_ADMIN_TOKEN=$admin_token" /etc/autodeploy/autodeploy.env || fail "autodeploy.env has no #AUTODEPLOY_ADMIN_TOKEN= line to set"
start_unit autodeploy.service "$work/serve.log"
serve_pid=$started_pid
wait_for "the listening line" "$serve_pid" grep -q "autodeploy listening on http://" "$work/serve.log"
url=$(sed -n 's|^autodeploy listening on \(http://[^ ]*\).*|\1|p' "$work/serve.log" | head -n 1)
wait_for "$url/healthz" "$serve_pid" curl -fsS -o /dev/null "$url/healthz"
[ "$(ps -o user= -p "$serve_pid")" = autodeploy ] || fail "serve runs as $(ps -o user= -p "$serve_pid"), not autodeploy"
# The env file's token is the admin token; a wrong one is refused.
curl -fsS -o /dev/null -H "Authorization: Bearer $admin_token" "$url/api/status" ||
    fail "the admin token from autodeploy.env was refused"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ad-deb-test-wrong-token" "$url/api/status")
[ "$code" = 401 ] || fail "a wrong admin token got $code, not 401"
# The state is where the env file says, the user's and private.
for file in /var/lib/autodeploy/autodeploy.db /var/lib/autodeploy/secret.key; do
    [ -f "$file" ] || fail "$file was not made"
    [ "$(stat -c %U "$file")" = autodeploy ] || fail "$file belongs to $(stat -c %U "$file")"
done
[ "$(stat -c %a /var/lib/autodeploy/secret.key)" = 600 ] || fail "secret.key is not 0600"

echo "==> autodeploy agent as autodeploy-agent.service runs it"
answer=$(curl -fsS -H "Authorization: Bearer $admin_token" -H 'content-type: application/json' \
    -d '{"name":"deb-test"}' "$url/api/nodes")
node_token=$(printf '%s' "$answer" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$node_token" ] || fail "adding a node gave no token"
sed -i -e "s|^AUTODEPLOY_CONTROL_PLANE=.*|AUTODEPLOY_CONTROL_PLANE=$url|" \
    -e "s/^#AUTODEPLOY_NODE_TOKEN=.*/AUTODEPLOY_NODE_TOKEN=$node_token/" /etc/autodeploy/agent.env
grep -qx "AUTODEPLOY_NODE_TOKEN=$node_token" /etc/autodeploy/agent.env || fail "agent.env has no #AUTODEPLOY_NODE_TOKEN= line to set"
start_unit autodeploy-agent.service "$work/agent.log"
agent_pid=$started_pid
node_online() {
    local nodes
    nodes=$(curl -fsS -H "Authorization: Bearer $admin_token" "$url/api/nodes") && [[ $nodes == *'"online":true'* ]]
}
wait_for "node deb-test online (the agent's heartbeat)" "$agent_pid" node_online
[ "$(ps -o user= -p "$agent_pid")" = autodeploy ] || fail "the agent runs as $(ps -o user= -p "$agent_pid"), not autodeploy"
# The agent's unit reaches the docker socket through its supplementary
# group; the control plane's, without it, does not.
setpriv --reuid=autodeploy --regid=autodeploy --groups=autodeploy,docker docker info >/dev/null 2>"$work/docker-agent.log" ||
    fail "user autodeploy with group docker cannot use docker: $(tail -n 1 "$work/docker-agent.log")"
if setpriv --reuid=autodeploy --regid=autodeploy --groups=autodeploy docker info >/dev/null 2>&1; then
    fail "user autodeploy reaches docker without the agent unit's group: the control plane could too"
fi
[ -d /var/lib/autodeploy-agent/inflight ] || fail "the agent made no inflight dir under /var/lib/autodeploy-agent"

for secret in "$admin_token" "$node_token"; do
    ! grep -qF "$secret" "$work/serve.log" "$work/agent.log" || fail "a token from the env files is in a log"
done

stop_unit "the agent" "$agent_pid"
stop_unit "serve" "$serve_pid"
pids=()

echo "==> dpkg -i again (an upgrade keeps the edited settings and the state)"
dpkg -i "$deb"
grep -qx "AUTODEPLOY_ADMIN_TOKEN=$admin_token" /etc/autodeploy/autodeploy.env || fail "reinstalling replaced the edited autodeploy.env"
grep -qx "AUTODEPLOY_NODE_TOKEN=$node_token" /etc/autodeploy/agent.env || fail "reinstalling replaced the edited agent.env"
[ -f /var/lib/autodeploy/secret.key ] || fail "reinstalling removed /var/lib/autodeploy/secret.key"

echo "==> dpkg --purge"
installed=""
dpkg --purge autodeploy
[ "$(package_state)" = not-installed ] || [ -z "$(package_state)" ] || fail "autodeploy is still known to dpkg after the purge: $(package_state)"
for path in "${package_paths[@]}"; do
    [ ! -e "$path" ] || fail "$path is left after the purge"
done
! getent passwd autodeploy >/dev/null || fail "user autodeploy is left after the purge"
! getent group autodeploy >/dev/null || fail "group autodeploy is left after the purge"
if grep -rqs autodeploy /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked; then
    fail "deb-systemd-helper state for autodeploy is left after the purge"
fi
echo "==> the package installs, serves, runs the agent and purges cleanly"
