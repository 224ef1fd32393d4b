#!/usr/bin/env bash
# Synapse's virtualenv for the Synapse integration: ${MXPOLICY_SYNAPSE_VENV:-target/synapse-venv}
# with matrix-synapse (the exact version pinned in integrations/synapse/pyproject.toml's `test`
# extra, from PyPI), the module package integrations/synapse installed editable, pytest and
# mypy. Prints nothing on success; the second run is a hash comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MXPOLICY_SYNAPSE_VENV:-target/synapse-venv}"
project=integrations/synapse
stamp_want="$( { sha256sum "$project/pyproject.toml"; python3 -c 'import sys; print(sys.version)'; pwd; } | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.mxpolicy-synapse-stamp"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_want" ]; then
    exit 0
fi
rm -rf "$venv"
log="$(mktemp /tmp/mxpolicy-synapse-env.XXXXXX)"
if ! { python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$project[test]"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "scripts/synapse-env.sh: could not set up $venv" >&2
    exit 1
fi
rm -f "$log"
echo "$stamp_want" >"$stamp_file"
