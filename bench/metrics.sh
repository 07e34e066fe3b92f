#!/usr/bin/env bash
# The /metrics scrape at 10,000 projects (bench/README.md, "Metrics"):
# prints lines starting with "metrics:". SCALE_PROJECTS (10000). The daemon
# is a release build; the test that fills the store and scrapes
# (host/tests/bench_metrics.rs) stays a debug build. BUILD=debug times a
# debug daemon instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BUILD:-release}" = release ]; then
    cargo build --release -p autodeploy
    export AUTODEPLOY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/autodeploy"
fi
exec cargo test -p autodeploy --test bench_metrics -- --ignored --nocapture --test-threads=1
