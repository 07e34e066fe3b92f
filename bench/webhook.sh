#!/usr/bin/env bash
# Signed webhook -> deployment recorded (bench/README.md, "Git host
# webhooks"), 50 deliveries to a release build of the daemon; the test that
# drives it (host/tests/webhooks.rs, bench_webhook_to_deployment) stays a
# debug build. BENCH_RUST_LOG sets the daemon's log level (info).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p autodeploy
AUTODEPLOY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/autodeploy" \
    exec cargo test -p autodeploy --test webhooks -- --ignored --nocapture --test-threads=1 bench_webhook_to_deployment
