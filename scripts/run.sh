#!/usr/bin/env bash
# The run command: installs what the build needs on a fresh Debian machine,
# then starts the daemon on the embedded defaults (SQLite in ./data, the
# bundled policy, http://127.0.0.1:8080). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# A C toolchain and OpenSSL for libgit2; git itself serves hosted repositories.
scripts/apt-install.sh gcc libc6-dev pkg-config libssl-dev git
rustup target add wasm32-unknown-unknown
exec cargo run --release -- serve "$@"
