#!/usr/bin/env bash
# Quick start, command 1: set up, then run what the appliance does end to end today.
# Today (see README "Status"): read the shared real CT series as the appliance would (series choice, geometry, HU)
# and write one synthetic study with known findings, its DICOM series, report and a preview montage.
# When the analysis pipeline lands this becomes `totalfm demo` (node + worker + a study sent over DICOM).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
SHARED=${TOTALFM_SHARED_DATA:-../shared/data}
OUT=${TOTALFM_DEMO_DIR:-var/quickstart}
echo "== the shared real CT series, as the appliance reads it"
.venv/bin/totalfm volume-info "$SHARED/real-ct/ts_dicom_series/dicom"
echo "== one synthetic study with known findings (DICOM + NIfTI + report + truth + preview)"
.venv/bin/totalfm synth --n 1 --kind real-backed --data-dir "$SHARED" --out "$OUT" --seed 4 --preview  # seed 4: aortic aneurysm + atherosclerosis
echo "== its report (written from the known truth):"
cat "$OUT"/study_00000/report.txt
echo "== preview montage: $OUT/study_00000/preview.png"
