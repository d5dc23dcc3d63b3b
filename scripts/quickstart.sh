#!/usr/bin/env bash
# Quick start, command 1: set up and run the main job end to end on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
SHARED=${TOTALFM_SHARED_DATA:-../shared/data}
exec .venv/bin/totalfm volume-info "$SHARED/real-ct/ts_dicom_series/dicom"
