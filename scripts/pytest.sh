#!/usr/bin/env bash
# `scripts/pytest.sh PYTEST ARGS...`: run the pytest binary PYTEST with ARGS, and exit with its
# status, except that 5 (pytest's "no tests collected") is a failure: a run that tested nothing
# did not pass.
set -uo pipefail
pytest="$1"
shift
status=0
"$pytest" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/pytest.sh: $pytest $*: no tests collected" >&2
    exit 1
fi
exit "$status"
