#!/usr/bin/env bash
# Make the project's virtual environment on a fresh machine.
# Why this order: torch must come first from the pinned CPU wheel; every later pip call gets constraints.txt,
# otherwise a dependency (TotalSegmentator, nnU-Net) asks for plain "torch" and pip swaps in a multi-GB CUDA build.
#   scripts/bootstrap.sh            runtime + trainer + dev extras (what the tests need)
#   EXTRAS=dev scripts/bootstrap.sh  a lighter appliance-only venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-train,postgres,dev}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip setuptools wheel
case ",$EXTRAS," in
    *,train,*|*,totalseg,*) $PIP install torch==2.13.0 ;;
esac
$PIP install -c constraints.txt -e ".[${EXTRAS}]"
echo "bootstrap: $VENV ready (extras: $EXTRAS)"
