#!/usr/bin/env bash
# The Python environment of the end-to-end tests: a virtualenv at ${MXPOLICY_VENV:-target/venv}
# with integrations/e2e installed (editable: the package's code is read from the checkout, so only
# a change of its requirements needs a reinstall). Prints nothing on success; the second run
# is a hash comparison. Use: scripts/python-env.sh && target/venv/bin/pytest ...
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MXPOLICY_VENV:-target/venv}"
project=integrations/e2e
# What the installed environment depends on: the requirements, the interpreter, and where the
# checkout is (an editable install records the path).
stamp_want="$( { sha256sum "$project/pyproject.toml"; python3 -c 'import sys; print(sys.version)'; pwd; } | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.mxpolicy-e2e-stamp"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_want" ]; then
    exit 0
fi
rm -rf "$venv"
log="$(mktemp /tmp/mxpolicy-python-env.XXXXXX)"
if ! { python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$project"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "scripts/python-env.sh: could not set up $venv" >&2
    exit 1
fi
rm -f "$log"
echo "$stamp_want" >"$stamp_file"
