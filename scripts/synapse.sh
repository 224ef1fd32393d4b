#!/usr/bin/env bash
# An unmodified Synapse from PyPI with the mxpolicy_synapse module, and `mxpolicy serve` as a
# separate process, end to end: the GDPR story of integrations/e2e/tests/test_synapse.py (a
# Matrix client over the client-server API, headless Chromium for the consent page). Needs
# target/debug/mxpolicy and target/plugins (scripts/test.sh builds them first), python3 (with
# venv) and Debian's chromium and chromium-driver.
#   MXPOLICY_SYNAPSE_VENV   Synapse's virtualenv (default target/synapse-venv)
#   MXPOLICY_VENV           the test virtualenv (default target/venv)
#   MXPOLICY_SYNAPSE_PORT   Synapse's port on 127.0.0.1 (default 8448)
#   MXPOLICY_SERVE_PORT     the service's port on 127.0.0.1 (default 8481)
#   MXPOLICY_SYNAPSE_WORK   the work folder (default a new one under /tmp)
#   MXPOLICY_ARTIFACTS      where the screenshots go (default target/artifacts; synapse/ in it)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/python-env.sh
scripts/synapse-env.sh
venv="$(realpath -m "${MXPOLICY_VENV:-target/venv}")"
synapse_venv="$(realpath -m "${MXPOLICY_SYNAPSE_VENV:-target/synapse-venv}")"
work="${MXPOLICY_SYNAPSE_WORK:-$(mktemp -d /tmp/mxpolicy-synapse.XXXXXX)}"
MXPOLICY_SYNAPSE_PYTHON="$synapse_venv/bin/python" MXPOLICY_E2E_WORK="$work" \
    exec scripts/pytest.sh "$venv/bin/pytest" -p no:cacheprovider -v \
    integrations/e2e/tests/test_synapse.py
