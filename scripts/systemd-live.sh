#!/usr/bin/env bash
# The Debian package's units started by a real systemd: a manual check,
# not part of the test command (scripts/test-deb.sh runs the units'
# ExecStart under setpriv, since systemd is not PID 1 in CI's container).
#
# It makes a Debian bookworm root filesystem with debootstrap (cached in
# /var/cache/autodeploy-systemd-live/ as a tarball, and in Docker as the
# image systemd-live-autodeploy:bookworm-KEY, so a rerun skips both),
# boots it in a container whose PID 1 is systemd, installs the .deb that
# scripts/test-deb.sh would build (dpkg -i) and follows the README's
# production path:
#   - both units pass `systemd-analyze verify` and are installed disabled;
#   - autodeploy.service (systemctl enable --now): the first start's admin
#     token is in the journal; with one set in autodeploy.env, it answers
#     /healthz, /readyz and the API on loopback, runs as autodeploy with
#     its sandbox on the process, keeps its database in
#     /var/lib/autodeploy; `systemd-analyze security` is printed;
#   - autodeploy-agent.service, with the host's docker socket mounted and a
#     node token from the API: its node shows online, and a push of a
#     compose project is deployed by it (docker compose reaches the socket
#     from inside the unit's sandbox; the service runs on the host's
#     Docker Engine);
#   - `systemctl reload` sends SIGHUP; a second dpkg -i restarts both;
#     `systemctl stop` ends each with exit status 0 and "Deactivated
#     successfully"; no set token is in the journal; `dpkg --purge` with
#     both running leaves nothing.
# The container and the deployed service are removed on any exit; the
# cache and the image stay (README.md, "Install as a service", says how
# to drop them). Root only, with debootstrap (installed if missing), a
# running Docker Engine and the dev binary `cargo build -p autodeploy`
# makes. Exits non-zero naming the step that failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# As scripts/test-deb.sh: the version that packages a dev-profile binary.
CARGO_DEB_VERSION=3.8.0
target_dir=${CARGO_TARGET_DIR:-target}
binary=$target_dir/debug/autodeploy
cache=/var/cache/autodeploy-systemd-live
mirror=http://deb.debian.org/debian
# systemd as init; curl and git for the checks; docker.io for the docker
# CLI and group (its daemons are masked: the host's engine is used) and
# docker-compose for the agent's deploys; procps and iproute2 to look
# around. The package's own Depends (libc6, libgcc-s1, git, systemd) come
# with these.
packages=systemd,systemd-sysv,dbus,curl,ca-certificates,git,docker.io,docker-compose,procps,iproute2
key=$(printf 'bookworm %s %s' "$packages" "$mirror" | sha256sum | cut -c1-12)
rootfs_tar=$cache/bookworm-$key.tar
image=systemd-live-autodeploy:bookworm-$key
container=autodeploy-systemd-live-$$
# The compose project a deploy makes: autodeploy-NAME-ID (set once known).
compose_project=""

step=starting
# A root filesystem being made: removed on failure (debootstrap leaves
# its /proc mounted in it).
rootfs=""
drop_rootfs() {
    local mount
    for mount in $(findmnt -rno TARGET | grep -F "$rootfs/" | sort -r); do
        umount -l "$mount"
    done
    rm -rf "$rootfs" "$rootfs_tar.tmp"
}
step() {
    step=$*
    echo "==> $*"
}
fail() {
    echo "error: systemd-live: $step: $*" >&2
    exit 1
}
in_c() {
    docker exec "$container" "$@"
}

cleanup() {
    status=$?
    if [ "$status" -ne 0 ] && docker inspect "$container" >/dev/null 2>&1; then
        echo "--- the units' journal in the container" >&2
        in_c journalctl --no-pager -n 60 -u autodeploy -u autodeploy-agent >&2 || true
    fi
    if [ -n "$compose_project" ]; then
        for id in $(docker ps -aq --filter "label=com.docker.compose.project=$compose_project"); do
            docker rm -f -v "$id" >/dev/null || echo "error: systemd-live: docker rm $id failed" >&2
        done
        docker network rm "${compose_project}_default" >/dev/null 2>&1 || true
        # Only a tag: the build added no layer to the cached image.
        docker rmi "${compose_project}_app" >/dev/null 2>&1 || true
    fi
    if docker inspect "$container" >/dev/null 2>&1; then
        docker rm -f -v "$container" >/dev/null || echo "error: systemd-live: docker rm $container failed" >&2
    fi
    [ -z "${work:-}" ] || rm -rf "$work"
    [ -z "$rootfs" ] || drop_rootfs
    if [ "$status" -ne 0 ]; then
        echo "error: systemd-live: FAILED at: $step" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "it runs debootstrap and privileged containers: run it as root"
[ -x "$binary" ] || fail "$binary is missing: run \`cargo build -p autodeploy\` first"
docker info >/dev/null 2>&1 || fail "the Docker Engine does not answer (docker info)"
# jq reads the API's answers.
scripts/apt-install.sh debootstrap dpkg-dev jq
work=$(mktemp -d /tmp/autodeploy-systemd-live.XXXXXX)

step "cargo deb (the dev-profile binary, as scripts/test-deb.sh packages it)"
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
deb=$work/autodeploy.deb
cargo deb -p autodeploy --profile dev --no-build --fast -o "$deb"

step "root filesystem ($rootfs_tar)"
if [ ! -f "$rootfs_tar" ]; then
    mkdir -p "$cache"
    rootfs=$cache/rootfs-$key.tmp
    drop_rootfs
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        fail "debootstrap failed: see $cache/debootstrap.log"
    # The host's engine serves the socket; dockerd and containerd would
    # only fail to start in the container.
    chroot "$rootfs" systemctl mask docker.service docker.socket containerd.service >/dev/null
    chroot "$rootfs" apt-get clean
    tar -C "$rootfs" -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    drop_rootfs
    rootfs=""
fi
echo "$(du -h "$rootfs_tar" | cut -f1) $rootfs_tar"

step "docker import ($image)"
if ! docker image inspect "$image" >/dev/null 2>&1; then
    docker import "$rootfs_tar" "$image" >/dev/null
fi

step "boot systemd as PID 1 (container $container)"
sock=$(readlink -f /var/run/docker.sock)
[ -S "$sock" ] || fail "no docker socket at /var/run/docker.sock"
# Every capability, no seccomp or AppArmor profile, a writable /proc and
# /sys, the host's cgroup namespace and cgroupfs writable: what systemd
# needs to make its own cgroups (under the container's) and the units'
# sandboxes. Not --privileged: inside a container without
# CAP_SYS_RESOURCE (as CI's), it asks for that capability and runc fails.
caps=(--cap-add ALL)
cap_bnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
if ((!((16#$cap_bnd >> 24) & 1))); then
    echo "note: no CAP_SYS_RESOURCE here, so none in the container either"
    caps+=(--cap-drop SYS_RESOURCE)
fi
# /run is a tmpfs as on a booted machine; the host's docker socket is
# mounted into it for the agent.
docker run -d --name "$container" "${caps[@]}" --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --security-opt systempaths=unconfined --cgroupns=host \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
    -v "$sock:/run/docker.sock" -e container=docker \
    "$image" /sbin/init >/dev/null
state=""
for _ in $(seq 1 240); do
    state=$(in_c systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in
running) ;;
degraded)
    echo "systemd is degraded; failed units:"
    in_c systemctl --no-pager --failed
    ;;
*) fail "systemd did not finish booting within 120 s (is-system-running: ${state:-no answer})" ;;
esac
echo "PID 1: $(in_c cat /proc/1/comm), $(in_c systemctl --version | head -n 1), system $state"

step "dpkg -i in the container"
docker cp "$deb" "$container:/root/autodeploy.deb"
in_c dpkg -i /root/autodeploy.deb || fail "dpkg -i failed"
in_c getent passwd autodeploy >/dev/null || fail "the postinst did not create user autodeploy"
for unit in autodeploy.service autodeploy-agent.service; do
    enabled=$(in_c systemctl is-enabled "$unit" || true)
    [ "$enabled" = disabled ] || fail "$unit is $enabled after install, not disabled"
    # As scripts/test-deb.sh, but with the dependencies' units there.
    in_c systemd-analyze verify "/usr/lib/systemd/system/$unit" || fail "systemd-analyze verify $unit failed"
done
echo "both units installed, disabled, and pass systemd-analyze verify"

url=http://127.0.0.1:8080
# Polls `check` every 0.5 s, at most 60 s, while `unit` is active.
wait_for() {
    local what=$1 unit=$2
    shift 2
    for _ in $(seq 1 120); do
        "$@" && return 0
        in_c systemctl is-active -q "$unit" || fail "$unit is $(in_c systemctl is-active "$unit") before $what"
        sleep 0.5
    done
    fail "no $what within 60 s"
}
# The sandbox is on the running process, not only in its unit file: no
# new privileges, a seccomp filter, no capabilities, and in its mount
# namespace a read-only /usr and /etc but a writable state directory.
confined() {
    local pid=$1 state_dir=$2 status
    status=$(in_c grep -E '^(NoNewPrivs|Seccomp|CapEff):' "/proc/$pid/status" | tr -s '\t ' ' ' | tr '\n' ' ')
    [ "$status" = "CapEff: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 " ] || fail "process $pid is not confined: $status"
    for path in /usr /etc; do
        [[ ,$(in_c nsenter -t "$pid" -m findmnt -no OPTIONS -T "$path"), == *,ro,* ]] || fail "$path is writable for process $pid"
    done
    [[ ,$(in_c nsenter -t "$pid" -m findmnt -no OPTIONS -T "$state_dir"), == *,rw,* ]] || fail "$state_dir is read-only for process $pid"
    echo "process $pid: $status/usr and /etc read-only, $state_dir writable; $(in_c grep 'Max open files' "/proc/$pid/limits" | tr -s ' ')"
}
# A whole journal, read before matching: `journalctl | grep -q` fails
# under pipefail when grep stops reading early.
journal_of() {
    in_c journalctl --no-pager -o cat -u "$1"
}
healthz() {
    in_c curl -fs -o /dev/null "$url/healthz"
}

step "systemctl enable --now autodeploy (no admin token set: the first start makes one)"
# As the README says; enabled, the unit also stays loaded after its stop,
# so `systemctl show` still has its main process's exit status.
in_c systemctl enable --now autodeploy || fail "systemctl enable --now autodeploy failed"
wait_for "$url/healthz" autodeploy.service healthz
# The README's way to the first start's token (never printed here).
first_token=$(in_c journalctl --no-pager -o cat -u autodeploy -g 'admin token' | sed -n 's/^admin token (shown once, keep it): //p')
[ -n "$first_token" ] || fail "journalctl -u autodeploy -g 'admin token' found no token"
in_c curl -fsS -o /dev/null -H "Authorization: Bearer $first_token" "$url/api/status" ||
    fail "the token from the journal was refused"
echo "the first start's admin token is in the journal and is taken"

step "an admin token in autodeploy.env, systemctl restart autodeploy"
admin_token=ad-live-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
in_c sed -i "s/^#AUTODEPLOY_ADMIN_TOKEN=.*/AUTODEPLOY_ADMIN_TOKEN=$admin_token/" /etc/autodeploy/autodeploy.env
in_c grep -qx "AUTODEPLOY_ADMIN_TOKEN=$admin_token" /etc/autodeploy/autodeploy.env || fail "autodeploy.env has no #AUTODEPLOY_ADMIN_TOKEN= line to set"
in_c systemctl restart autodeploy || fail "systemctl restart autodeploy failed"
# api GET|POST PATH [JSON]: the API in the container, as admin.
api() {
    local args=(-fsS -H "Authorization: Bearer $admin_token")
    [ $# -lt 3 ] || args+=(-H 'content-type: application/json' -d "$3")
    in_c curl "${args[@]}" -X "$1" "$url$2"
}
wait_for "$url/healthz after the restart" autodeploy.service healthz
ready=$(in_c curl -sS -o /dev/null -w '%{http_code}' "$url/readyz")
[ "$ready" = 200 ] || fail "/readyz answered $ready, not 200"
main_pid=$(in_c systemctl show -p MainPID --value autodeploy)
user=$(in_c ps -o user= -p "$main_pid")
[ "$user" = autodeploy ] || fail "serve runs as $user, not autodeploy"
api GET /api/status >/dev/null || fail "the admin token from autodeploy.env was refused"
for file in /var/lib/autodeploy/autodeploy.db /var/lib/autodeploy/secret.key; do
    owner=$(in_c stat -c %U "$file" 2>/dev/null) || fail "$file was not made"
    [ "$owner" = autodeploy ] || fail "$file belongs to $owner, not autodeploy"
done
confined "$main_pid" /var/lib/autodeploy
echo "active, /healthz and /readyz answer, MainPID $main_pid runs as $user, $(in_c ls /var/lib/autodeploy | tr '\n' ' ')in /var/lib/autodeploy"

step "systemd-analyze security autodeploy.service"
in_c systemd-analyze security --no-pager autodeploy.service >"$work/security-serve.txt" || true
tail -n 1 "$work/security-serve.txt"

step "systemctl enable --now autodeploy-agent (node live-1, the host's docker socket)"
# The socket keeps the host's group id: the container's group docker,
# which the agent's unit adds, gets that id.
sock_gid=$(stat -c %g "$sock")
in_c groupmod -o -g "$sock_gid" docker
answer=$(api POST /api/nodes '{"name":"live-1"}') || fail "POST /api/nodes failed"
node_token=$(jq -r '.token // empty' <<<"$answer")
[ -n "$node_token" ] || fail "adding a node gave no token"
in_c sed -i -e "s|^AUTODEPLOY_CONTROL_PLANE=.*|AUTODEPLOY_CONTROL_PLANE=$url|" \
    -e "s/^#AUTODEPLOY_NODE_TOKEN=.*/AUTODEPLOY_NODE_TOKEN=$node_token/" \
    -e "s/^AUTODEPLOY_AGENT_OPTIONS=.*/AUTODEPLOY_AGENT_OPTIONS=--heartbeat-seconds 1/" /etc/autodeploy/agent.env
in_c systemctl enable --now autodeploy-agent || fail "systemctl enable --now autodeploy-agent failed"
node_online() {
    api GET /api/nodes | jq -e 'any(.[]; .name == "live-1" and .online == true)' >/dev/null
}
wait_for "node live-1 online (the agent's heartbeat)" autodeploy-agent.service node_online
agent_pid=$(in_c systemctl show -p MainPID --value autodeploy-agent)
user=$(in_c ps -o user= -p "$agent_pid")
[ "$user" = autodeploy ] || fail "the agent runs as $user, not autodeploy"
confined "$agent_pid" /var/lib/autodeploy-agent
echo "active, node live-1 online, MainPID $agent_pid runs as $user"

step "a push deployed by the agent through the host's docker"
project_name=live$$
answer=$(api POST /api/projects "{\"name\":\"$project_name\",\"project_type\":\"compose\",\"expose_service\":\"app\",\"expose_port\":8080,\"auto_deploy_enabled\":true}") ||
    fail "POST /api/projects failed"
project_id=$(jq -r '.id // empty' <<<"$answer")
push_token=$(jq -r '.push_token // empty' <<<"$answer")
[[ -n $project_id && -n $push_token ]] || fail "creating a project gave no id or push token"
compose_project=autodeploy-$project_name-$project_id
# Built FROM this very image, which the host's engine has: the agent's
# `pull` skips a service with no image, and nothing is pulled (this
# machine may reach no registry; docker-compose v1 ignores pull_policy).
in_c sh -c "set -e; mkdir -p /root/app; cd /root/app; git init -q -b main
    printf 'FROM $image\n' >Dockerfile
    printf 'services:\n  app:\n    build: .\n    command: [\"sleep\", \"infinity\"]\n' >docker-compose.yml
    git add .; git -c user.name=live -c user.email=live@invalid commit -q -m deploy
    git push -q http://x:$push_token@127.0.0.1:8080/git/$project_id.git main" || fail "git push to the hosted repository failed"
deployment_status() {
    api GET "/api/projects/$project_id/deployments" | jq -r 'max_by(.id) | .status // empty'
}
status=""
for _ in $(seq 1 360); do
    status=$(deployment_status || true)
    case "$status" in succeeded | failed) break ;; esac
    sleep 0.5
done
case "$status" in
succeeded) ;;
failed)
    api GET "/api/projects/$project_id/deployments" |
        jq -r 'max_by(.id) | .error, (.log_tail // "" | split("\n") | .[-15:] | join("\n"))' >&2 || true
    fail "the deployment failed"
    ;;
*) fail "the deployment is ${status:-not there} after 180 s, not finished" ;;
esac
running=$(docker ps -q --filter "label=com.docker.compose.project=$compose_project" --filter status=running)
[ -n "$running" ] || fail "no running container of compose project $compose_project on the host's engine"
echo "deployment succeeded; container $running of $compose_project runs on the host's engine"

step "systemd-analyze security autodeploy-agent.service"
in_c systemd-analyze security --no-pager autodeploy-agent.service >"$work/security-agent.txt" || true
tail -n 1 "$work/security-agent.txt"

step "systemctl reload autodeploy (ExecReload sends SIGHUP from inside the sandbox)"
main_pid=$(in_c systemctl show -p MainPID --value autodeploy)
in_c systemctl reload autodeploy || fail "systemctl reload autodeploy failed"
# No AUTODEPLOY_POLICY is set: the daemon says so, and keeps running.
sighup() {
    [[ $(journal_of autodeploy) == *"SIGHUP: no --policy file to reload"* ]]
}
wait_for "the daemon's answer to SIGHUP in the journal" autodeploy.service sighup
[ "$(in_c systemctl show -p MainPID --value autodeploy)" = "$main_pid" ] || fail "the reload replaced the main process"
journal_of autodeploy | grep "SIGHUP"

step "dpkg -i again while both run (an upgrade restarts them, keeps the settings)"
serve_before=$(in_c systemctl show -p MainPID --value autodeploy)
agent_before=$(in_c systemctl show -p MainPID --value autodeploy-agent)
in_c dpkg -i /root/autodeploy.deb >/dev/null || fail "the second dpkg -i failed"
for unit in autodeploy autodeploy-agent; do
    in_c systemctl is-active -q "$unit" || fail "$unit is $(in_c systemctl is-active "$unit") after the upgrade"
    [ "$(in_c systemctl is-enabled "$unit")" = enabled ] || fail "$unit is not enabled after the upgrade"
done
serve_after=$(in_c systemctl show -p MainPID --value autodeploy)
agent_after=$(in_c systemctl show -p MainPID --value autodeploy-agent)
[ "$serve_after" != "$serve_before" ] || fail "the upgrade did not restart autodeploy"
[ "$agent_after" != "$agent_before" ] || fail "the upgrade did not restart autodeploy-agent"
wait_for "$url/healthz after the upgrade" autodeploy.service healthz
api GET /api/status >/dev/null || fail "the admin token from autodeploy.env was refused after the upgrade"
wait_for "node live-1 online after the upgrade" autodeploy-agent.service node_online
echo "restarted: autodeploy $serve_before -> $serve_after, autodeploy-agent $agent_before -> $agent_after; edited settings kept"

# A clean stop: the main process exited 0 by itself on SIGTERM (not
# killed by it, which systemd would also call a success).
stop_unit() {
    local unit=$1 props journal before
    step "systemctl stop $unit"
    before=$(journal_of "$unit" | wc -l)
    in_c systemctl stop "$unit" || fail "systemctl stop $unit failed"
    props=$(in_c systemctl show -p ActiveState -p Result -p ExecMainCode -p ExecMainStatus "$unit" | sort | tr '\n' ' ')
    echo "$props"
    [ "$props" = "ActiveState=inactive ExecMainCode=1 ExecMainStatus=0 Result=success " ] ||
        fail "$unit did not stop cleanly (ExecMainCode=1 is an exit, not a signal): $props"
    # Only what the stop logged: earlier restarts logged the same line.
    journal=$(journal_of "$unit" | tail -n +$((before + 1)))
    [[ $journal == *"$unit: Deactivated successfully."* ]] ||
        fail "the journal of $unit has no \"Deactivated successfully\" since the stop"
    tail -n 3 <<<"$journal"
}
stop_unit autodeploy-agent.service
stop_unit autodeploy.service

step "no token in the journal"
# (The first start's token is there by design: none was set.)
journal=$(in_c journalctl --no-pager -o cat)
for secret in "$admin_token" "$node_token" "$push_token"; do
    [[ $journal != *"$secret"* ]] || fail "a token is in the journal"
done

step "dpkg --purge while both run (the prerm stops them; nothing is left)"
in_c systemctl start autodeploy autodeploy-agent || fail "systemctl start of both units failed"
uid=$(in_c id -u autodeploy)
in_c dpkg --purge autodeploy >/dev/null || fail "dpkg --purge failed"
for unit in autodeploy autodeploy-agent; do
    state=$(in_c systemctl is-active "$unit" || true)
    [ "$state" = inactive ] || fail "$unit is $state after the purge, not inactive"
done
left=$(in_c ps -o pid=,comm= -u "$uid" || true)
[ -z "$left" ] || fail "processes of uid $uid are left after the purge: $left"
! in_c getent passwd autodeploy >/dev/null || fail "user autodeploy is left after the purge"
for path in /usr/bin/autodeploy /etc/autodeploy /var/lib/autodeploy /var/lib/autodeploy-agent \
    /usr/lib/systemd/system/autodeploy.service /usr/lib/systemd/system/autodeploy-agent.service \
    /etc/systemd/system/multi-user.target.wants/autodeploy.service \
    /etc/systemd/system/multi-user.target.wants/autodeploy-agent.service; do
    ! in_c test -e "$path" || fail "$path is left after the purge"
done

step "both units started, served, deployed, reloaded, upgraded, stopped and purged cleanly under systemd"
