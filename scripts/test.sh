#!/usr/bin/env bash
# The project's test command (README, .ci/run). Starts the services the tests need on loopback
# (a throwaway PostgreSQL cluster), runs pytest, stops them again.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
if [ -z "${TOTALFM_TEST_PG_URL:-}" ] && [ -x scripts/start_postgres.sh ]; then
    if url=$(scripts/start_postgres.sh start); then
        export TOTALFM_TEST_PG_URL="$url"
        trap 'scripts/start_postgres.sh stop >/dev/null 2>&1' EXIT
    elif [ "${CI:-}" = "true" ]; then
        echo "test.sh: could not start PostgreSQL for the tests" >&2
        exit 1
    fi
fi
"$PY" -m pytest "$@"
rc=$?
# pytest exit 5 = no tests collected: treat as failure, a green run must have run tests
exit $rc
