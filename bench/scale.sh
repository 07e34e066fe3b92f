#!/usr/bin/env bash
# Scale figures (bench/README.md, "Scale"): the real `autodeploy serve`
# (release build) with 10,000 external projects on SQLite, then 100,000 on
# PostgreSQL in a throw-away cluster (Debian's pg_virtualenv). Each run
# prints lines starting with "scale:". Needs what scripts/test.sh installs
# (git, postgresql).
#   SCALE_SQLITE_PROJECTS (10000), SCALE_PG_PROJECTS (100000),
#   SCALE_TICKS (3), SCALE_ONLY=sqlite|postgres
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
    cargo test --release -p autodeploy --test bench_scale -- --ignored --nocapture --test-threads=1
}

if [ "${SCALE_ONLY:-sqlite}" != postgres ]; then
    echo "==> ${SCALE_SQLITE_PROJECTS:-10000} projects on SQLite"
    SCALE_PROJECTS="${SCALE_SQLITE_PROJECTS:-10000}" run
fi
if [ "${SCALE_ONLY:-postgres}" != sqlite ]; then
    echo "==> ${SCALE_PG_PROJECTS:-100000} projects on PostgreSQL"
    command -v pg_virtualenv >/dev/null || {
        echo "error: pg_virtualenv is missing: install Debian's postgresql package" >&2
        exit 1
    }
    # 10,000 repositories shared by the projects (project i uses i mod 10,000).
    SCALE_PROJECTS="${SCALE_PG_PROJECTS:-100000}" SCALE_REPOS=10000 \
        SCALE_TICKS="${SCALE_TICKS:-1}" AUTODEPLOY_TEST_DATABASE=postgres \
        pg_virtualenv -t bash -c "$(declare -f run); run"
fi
