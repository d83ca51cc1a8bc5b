#!/usr/bin/env bash
# The tests, both tiers, as CI runs them (.ci/run calls this after a fresh install):
#   1. the fast tier: `pytest` (pyproject.toml deselects the tests marked slow), a few minutes;
#   2. the slow tier: `pytest -m slow` (Ray, an MLflow server, a browser, searches through the CLI,
#      a real model), in two processes side by side when no argument is given (SLOW_PROCESSES=1:
#      one), about a quarter of an hour on 2 cores.
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

# The slow tier's tests mostly wait (Ray and servers starting, a browser, subprocesses), so with no
# arguments it runs as two pytest processes side by side: these files in one, every other slow test
# (new files included) in the other. A session fixture's search is built in the process that reads
# it (tests/conftest.py: smoke_search and served_search are read by files of the second one only).
SLOW_SIDE=(tests/test_interrupts.py tests/test_cluster.py tests/test_full_disk.py tests/test_store_failures.py
           tests/test_sft.py tests/test_api.py)
run_slow_split() {
    local start=$SECONDS side_log rc_side=0 rc_rest=0 ignores=()
    side_log=$(mktemp)
    for f in "${SLOW_SIDE[@]}"; do ignores+=(--ignore "$f"); done
    echo "test.sh: the slow tier, in two processes: $PY -m pytest -m slow ${SLOW_SIDE[*]} (output below when it ends)"
    echo "test.sh:   and $PY -m pytest -m slow tests ${ignores[*]}"
    "$PY" -m pytest -m slow "${SLOW_SIDE[@]}" > "$side_log" 2>&1 &
    local side_pid=$!
    "$PY" -m pytest -m slow tests "${ignores[@]}" || rc_rest=$?
    wait "$side_pid" || rc_side=$?
    echo "test.sh: ---- the slow tier's other process (${SLOW_SIDE[*]}) ----"
    cat "$side_log"
    rm -f "$side_log"
    echo "test.sh: the slow tier ended with status $rc_rest and $rc_side after $((SECONDS - start)) s"
    if [ "$rc_rest" -eq 5 ] || [ "$rc_side" -eq 5 ]; then
        empty+=(slow)
    elif [ "$rc_rest" -ne 0 ] || [ "$rc_side" -ne 0 ]; then
        failed+=(slow)
        [ "$status" -ne 0 ] || status=$([ "$rc_rest" -ne 0 ] && echo "$rc_rest" || echo "$rc_side")
    fi
}

run_tier fast "$@"
if [ "$#" -eq 0 ] && [ "${SLOW_PROCESSES:-2}" -gt 1 ]; then
    run_slow_split
else
    run_tier slow "$@" -m slow
fi

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
