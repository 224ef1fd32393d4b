#!/usr/bin/env bash
# Set up and run every test: wasm target, plugins built to components, lints, the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown
# Every policy and test fixture, built once per run to target/plugins/*.wasm.
cargo xtask build-plugins
# The `mxpolicy` binary, which the replay tests run as a subprocess.
cargo build -p mxpolicy

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --target wasm32-unknown-unknown -p mxpolicy-guest \
    $(for d in policies/*/ tests/plugins/*/; do printf -- '-p %s ' "$(sed -n 's/^name = "\(.*\)"/\1/p' "$d/Cargo.toml" | head -1)"; done) \
    -- -D warnings

cargo test --workspace
