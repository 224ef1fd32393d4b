#!/usr/bin/env bash
# The main job on embedded defaults: build the plugins, then run them through the host.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
cargo xtask build-plugins
# The GDPR story step by step (consent, erasure, media, grace period, hot swap), through the
# real compiled policies and the real host, one JSON line per step.
cargo run --quiet -p mxpolicy -- replay examples/gdpr-walkthrough.json
