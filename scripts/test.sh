#!/usr/bin/env bash
# The test command: installs what the checks need on a fresh Debian machine,
# then runs formatting, lints and every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and tests use: the build's (as in run.sh), the
# git servers, the registry and its tools, what the docker test builds, and
# the browser the web UI tests drive (chromium through chromedriver), and
# promtool (Debian's prometheus) for the metrics test; python3-aiosmtpd
# for the notification tests' SMTP sink.
scripts/apt-install.sh gcc libc6-dev pkg-config libssl-dev openssl git openssh-client openssh-server \
    nginx fcgiwrap docker-registry skopeo apache2-utils tar busybox-static docker-compose sqlite3 \
    iproute2 postgresql chromium chromium-driver prometheus python3-aiosmtpd

# The end-to-end tests drive a real Docker Engine; without one they would
# fail late and one by one, so stop here first, saying why.
echo "==> docker info (the end-to-end tests need a running Docker Engine)"
if ! docker_err=$(docker info 2>&1 >/dev/null); then
    echo "error: the Docker Engine does not answer: \`docker info\` failed:" >&2
    echo "$docker_err" | tail -n 5 >&2
    echo "Start the Docker Engine (e.g. \`service docker start\`), then run scripts/test.sh again." >&2
    exit 1
fi

# Nothing the tests start may outlive them: every process they start
# carries this run's mark in its environment, and at the end (also when a
# step fails) scripts/check-leftovers.sh lists any process, $TMPDIR/autodeploy-*
# path or Docker object that is new since this snapshot, and fails the run.
export AUTODEPLOY_TEST_RUN="$$-$(date +%s)"
leftovers_snapshot=$(mktemp)
scripts/check-leftovers.sh snapshot "$leftovers_snapshot"
check_leftovers() {
    local rc=$?
    echo "==> nothing left behind (scripts/check-leftovers.sh)"
    scripts/check-leftovers.sh check "$leftovers_snapshot" || rc=1
    rm -f "$leftovers_snapshot"
    exit $rc
}
trap check_leftovers EXIT

# The policy guest is built for this target by host/build.rs.
rustup target add wasm32-unknown-unknown
rustup component add rustfmt clippy

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy (host and guest, native)"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo clippy (guest, wasm32: the wit-bindgen layer only builds there)"
cargo clippy -p autodeploy-guest --target wasm32-unknown-unknown -- -D warnings
cargo clippy -p autodeploy-guest --target wasm32-unknown-unknown --features wit-0-1-0 -- -D warnings
cargo clippy -p autodeploy-sync-windows --target wasm32-unknown-unknown -- -D warnings
echo "==> cargo test"
cargo test --workspace
# --- Debian package (issue 16): package the dev binary cargo test just
# built (no release build), dpkg -i it, verify the systemd units, run serve
# and the agent as the units would, then purge. Installs cargo-deb once.
echo "==> Debian package (scripts/test-deb.sh)"
scripts/test-deb.sh
# --- end Debian package
# The same suites again against a real PostgreSQL: pg_virtualenv runs them
# inside one throw-away cluster (PGHOST, PGPORT, PGUSER and PGPASSWORD set);
# each test makes a database of its own there (host/tests/common/db.rs).
# Then the PostgreSQL-only tests (ignored in the plain run above): replicas
# sharing one database, leases and leadership across replicas, and the
# 3-replica cluster with its kills.
echo "==> cargo test on PostgreSQL (store, API, web UI sessions, triggers, agents, nodes, deploy control, web UI in the browser, notifications; replicas; cluster)"
pg_virtualenv -t sh -c 'set -e
export AUTODEPLOY_TEST_DATABASE=postgres
cargo test -p autodeploy --test store --test api --test web_http --test git_trigger --test image_watch --test agent_deploys --test nodes --test deploy_control --test web_ui --test webhooks --test registry_hooks --test registry_creds --test observability --test notifications
cargo test -p autodeploy --test replicas --test leases --test cluster -- --include-ignored'
