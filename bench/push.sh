#!/usr/bin/env bash
# git push round trips (bench/README.md, "Push round trip"): autodeploy's
# hosted repository against a plain `git http-backend` behind nginx +
# fcgiwrap, in the same run. The daemon is a release build; the test that
# drives it (host/tests/bench_push.rs) is not timed and stays a debug build.
# Prints lines starting with "push:". BENCH_PUSHES (50). Needs git, nginx
# and fcgiwrap (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autodeploy
AUTODEPLOY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/autodeploy" \
    exec cargo test -p autodeploy --test bench_push -- --ignored --nocapture --test-threads=1
