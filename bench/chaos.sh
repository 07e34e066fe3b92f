#!/usr/bin/env bash
# The chaos test, longer: more rounds (default 20) of pushes, polled commits
# and new image digests under a flapping registry, a trickling git remote,
# busy cores, a node going offline twice and kill -9 of the daemon.
# CHAOS_SEED=N replays a run (each run prints its seed). Needs what
# scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_ROUNDS="${CHAOS_ROUNDS:-20}"
exec cargo test -p autodeploy --test chaos -- --nocapture
