#!/usr/bin/env bash
# The README's "run the main job end to end": set up the venv, then `totalfm demo` - the DICOM node and an analysis
# worker start as separate processes, a synthetic study with known findings (real CT anatomy + inserted lesions) is
# sent over DICOM, analysed with the embedded default model bundle, and the SR/SEG go back to a stand-in PACS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
SHARED=${TOTALFM_SHARED_DATA:-../shared/data}
.venv/bin/totalfm demo --dir "${TOTALFM_DEMO_DIR:-var/demo}" --data-dir "$SHARED"
