#!/usr/bin/env bash
# Wall time of daemon start-up (process start -> GET /api/status answers) and
# of `autodeploy policy parse-compose` on a 3-line file, compiled-policy cache
# cold and warm, on a release build. RUNS=N sets the runs per row (10).
# Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The component build.rs embedded in that binary (the newest build of it).
bundled=$(ls -t "$target"/release/build/autodeploy-*/out/default-policy.wasm | head -1)
exec python3 bench/startup.py "$target/release/autodeploy" "$bundled"
