#!/usr/bin/env bash
# One image-watch tick over 1,000 compose projects that use 50 distinct images
# on a local docker-registry: registry requests and wall time. Needs what
# scripts/test.sh installs (docker-registry, skopeo).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release -p autodeploy --test bench_image_watch -- --ignored --nocapture
