#!/usr/bin/env bash
# The main job on embedded defaults: build the plugins, then run them through the host.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
cargo xtask build-plugins
cargo run --quiet -p mxpolicy-host --example decisions
