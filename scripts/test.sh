#!/usr/bin/env bash
# The tests, both tiers, as CI runs them (.ci/run calls this after a fresh install):
#   1. the fast tier: `pytest` (pyproject.toml deselects the tests marked slow), a few minutes;
#   2. the slow tier: `pytest -m slow` (Ray, an MLflow server, a browser, searches through the CLI,
#      a real model), about half an hour on 2 cores.
# Both tiers run even when the first fails; the exit status is non-zero when either failed.
# Arguments go to both runs (-x, -q, -k NAME, a test file); leave -m to this script.
# A tier that collects no test (pytest's exit status 5) is an error when every test was asked for
# (a broken marker would otherwise pass in silence); with arguments that select tests it is not,
# unless neither tier holds any of them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

status=0   # the first failing tier's pytest status
failed=()  # the tiers that failed
empty=()   # the tiers with no test selected
run_tier() {  # run_tier NAME PYTEST-ARGS...
    local name=$1 start=$SECONDS rc=0
    shift
    echo "test.sh: the $name tier: $PY -m pytest $*"
    "$PY" -m pytest "$@" || rc=$?
    echo "test.sh: the $name tier ended with status $rc after $((SECONDS - start)) s"
    if [ "$rc" -eq 5 ]; then
        empty+=("$name")
    elif [ "$rc" -ne 0 ]; then
        failed+=("$name")
        [ "$status" -ne 0 ] || status=$rc
    fi
}

tiers() { [ "$#" -eq 2 ] && echo "$1 and $2 tiers" || echo "$1 tier"; }

run_tier fast "$@"
run_tier slow "$@" -m slow

if [ "$#" -eq 0 ] && [ "${#empty[@]}" -gt 0 ]; then
    echo "test.sh: error: no tests collected in the $(tiers "${empty[@]}"): check the slow marker and" \
         "[tool.pytest.ini_options] addopts in pyproject.toml" >&2
    [ "$status" -ne 0 ] || status=5
elif [ "${#empty[@]}" -eq 2 ]; then
    echo "test.sh: error: no test matches: $*" >&2
    status=5
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: failed: the $(tiers "${failed[@]}") (see above)" >&2
elif [ "$status" -eq 0 ]; then
    echo "test.sh: passed"
fi
exit "$status"
