#!/usr/bin/env bash
# The main job on embedded defaults: build the plugins and the command, write a sample policy
# set once (the three GDPR policies and the keyword filter, SQLite state, generated secrets,
# all in ./mxpolicy-local/), and run `mxpolicy serve` on 127.0.0.1:8480 until Ctrl-C. It
# prints the consent page of a sample user and two curl commands to try.
#   MXPOLICY_PORT=9000 ./scripts/serve.sh     another port (for a fresh mxpolicy-local/)
#   MXPOLICY_LOCAL=/tmp/x ./scripts/serve.sh   another folder for the set, state and secrets
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
cargo xtask build-plugins
cargo build --quiet -p mxpolicy
dir=${MXPOLICY_LOCAL:-mxpolicy-local}
target/debug/mxpolicy init "$dir" --port "${MXPOLICY_PORT:-8480}" --plugins target/plugins >/dev/null
exec target/debug/mxpolicy serve --config "$dir/policy-set.toml"
