#!/usr/bin/env bash
# Conduit with the mxpolicy host embedded, end to end: extract the vendored Conduit and ruma,
# apply integrations/conduit/, build Conduit (SQLite backend), and run the GDPR story against it
# with the Python suite integrations/e2e/tests/test_conduit.py (a Matrix client over the
# client-server API, headless Chromium for the consent page). Needs target/debug/mxpolicy and
# target/plugins (scripts/test.sh builds them first), python3 (with venv) and Debian's chromium
# and chromium-driver; scripts/python-env.sh sets up the virtualenv.
#
# The Conduit build is its own (its lock file resolves other versions than ours, so little
# would be shared): about 5 minutes and 5.5 GB of target directory on 2 cores, the first time.
# The trees live outside this checkout (Cargo would take them for members of our workspace).
#   MXPOLICY_CONDUIT_WORK     where (default /tmp/mxpolicy-conduit): src/, target/, e2e/
#   MXPOLICY_CONDUIT_TARGET   Conduit's target directory (default $MXPOLICY_CONDUIT_WORK/target)
#   MXPOLICY_CONDUIT_PORT     the port Conduit listens on, on 127.0.0.1 (default 6167)
#   MXPOLICY_ARTIFACTS        where the screenshots go (default target/artifacts; conduit/ in it)
#   MXPOLICY_VENV             the virtualenv (default target/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="${MXPOLICY_CONDUIT_WORK:-/tmp/mxpolicy-conduit}"
rm -rf "$work/src" "$work/e2e"
mkdir -p "$work"
integrations/conduit/apply.sh "$work/src"
export CARGO_TARGET_DIR="${MXPOLICY_CONDUIT_TARGET:-$work/target}"
(cd "$work/src/conduit" && cargo build --quiet --no-default-features --features conduit_bin,backend_sqlite)
# Federation serving needs a second server: it is tested at the function level inside the
# patched Conduit, with the real erasure plugin (src/service/mxpolicy/federation.rs).
# `--lib mxpolicy` must run at least one test: a filter that matched nothing would pass.
tests="$(cd "$work/src/conduit" && MXPOLICY_PLUGINS="$root/target/plugins" \
    cargo test --quiet --no-default-features --features conduit_bin,backend_sqlite --lib mxpolicy 2>&1)" \
    || { echo "$tests" >&2; exit 1; }
echo "$tests" | grep -E '^test result: ok\. [1-9][0-9]* passed' \
    || { echo "$tests" >&2; echo "scripts/conduit.sh: Conduit's mxpolicy tests did not run" >&2; exit 1; }

scripts/python-env.sh
venv="$(realpath -m "${MXPOLICY_VENV:-target/venv}")"
MXPOLICY_CONDUIT_BIN="$CARGO_TARGET_DIR/debug/conduit" MXPOLICY_E2E_WORK="$work/e2e" \
    exec scripts/pytest.sh "$venv/bin/pytest" -p no:cacheprovider -v \
    integrations/e2e/tests/test_conduit.py
