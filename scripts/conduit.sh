#!/usr/bin/env bash
# Conduit with the mxpolicy host embedded, end to end: extract the vendored Conduit and ruma,
# apply integrations/conduit/, build Conduit (SQLite backend), and run the consent story against
# it over the client-server API (integrations/conduit/smoke.sh). Needs target/debug/mxpolicy and
# target/plugins (scripts/test.sh builds them first), curl and jq.
#
# The Conduit build is its own (its lock file resolves other versions than ours, so little
# would be shared): about 5 minutes and 5.5 GB of target directory on 2 cores, the first time.
# The trees live outside this checkout (Cargo would take them for members of our workspace).
#   MXPOLICY_CONDUIT_WORK     where (default /tmp/mxpolicy-conduit): src/, target/, smoke/
#   MXPOLICY_CONDUIT_TARGET   Conduit's target directory (default $MXPOLICY_CONDUIT_WORK/target)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${MXPOLICY_CONDUIT_WORK:-/tmp/mxpolicy-conduit}"
rm -rf "$work/src" "$work/smoke"
mkdir -p "$work"
integrations/conduit/apply.sh "$work/src"
export CARGO_TARGET_DIR="${MXPOLICY_CONDUIT_TARGET:-$work/target}"
(cd "$work/src/conduit" && cargo build --quiet --no-default-features --features conduit_bin,backend_sqlite)
integrations/conduit/smoke.sh "$CARGO_TARGET_DIR/debug/conduit" "$work/smoke"
