"""Benchmark: read a 512x512x300 CT series and crop all organs, vs plain pydicom + numpy stacking (same run).

    .venv/bin/python bench/bench_read_and_crop.py [--slices 300] [--keep DIR]

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that step alone. The series is an
analytic phantom (trainer.synth) written by appliance.dicom_write, so the label map for cropping is known exactly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BASELINE = textwrap.dedent('''
    import resource, sys, time, json
    from pathlib import Path
    import numpy as np, pydicom
    t = time.perf_counter()
    dss = [pydicom.dcmread(str(f)) for f in sorted(Path(sys.argv[1]).glob("*.dcm"))]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    arr = np.stack([d.pixel_array for d in dss]).astype(np.float32)
    arr = arr * float(dss[0].RescaleSlope) + float(dss[0].RescaleIntercept)
    dt = time.perf_counter() - t
    print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "shape": list(arr.shape)}))
''')

OURS = textwrap.dedent('''
    import resource, sys, time, json
    from appliance.dicom_io import read_series
    from appliance.nifti_io import read_nifti
    t = time.perf_counter()
    vol = read_series(sys.argv[1])
    t_read = time.perf_counter() - t
    out = {"read_seconds": t_read, "shape": list(vol.shape)}
    if sys.argv[3] == "crop":
        from appliance.crops import crop_organs
        labels = read_nifti(sys.argv[2])
        assert labels.same_grid(vol, tol_mm=1e-2), "label map not on the series grid"
        labels = vol.with_array(labels.array)  # identical grid up to DICOM decimal-string rounding
        t = time.perf_counter()
        crops = crop_organs(vol, labels)
        out["crop_seconds"] = time.perf_counter() - t
        out["n_crops"] = sum(1 for c in crops.crops.values())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
''')


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--keep", type=Path, help="write the series here and keep it (default: a temp dir)")
    args = ap.parse_args()

    from appliance.dicom_write import write_ct_series
    from appliance.nifti_io import write_nifti
    from trainer.synth.study import generate_study

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_read_crop_"))
    series, labels_path = work / "dicom", work / "labels.nii.gz"
    if not series.is_dir():
        study = generate_study("analytic", 0, 0, shape=(args.slices, 512, 512), spacing=(1.5, 0.8, 0.8))  # (z, y, x)
        write_ct_series(study.image, series)
        write_nifti(study.labels, labels_path)
    have_crops = True
    try:
        import appliance.crops  # noqa: F401
    except ImportError:
        have_crops = False

    base = _run(BASELINE, str(series))
    ours_read = _run(OURS, str(series), str(labels_path), "read")
    rows = [("pydicom + numpy stacking (baseline)", base["seconds"], base["peak_rss_mb"]),
            ("appliance read_series", ours_read["read_seconds"], ours_read["peak_rss_mb"])]
    if have_crops:
        ours = _run(OURS, str(series), str(labels_path), "crop")
        rows.append((f"read_series + crop_organs ({ours['n_crops']} organs)",
                     ours["read_seconds"] + ours["crop_seconds"], ours["peak_rss_mb"]))
        rows.append(("  of which crop_organs", ours["crop_seconds"], float("nan")))
    print(f"series: {base['shape']} (z, y, x), files in {series}")
    print(f"{'step':46s} {'seconds':>8s} {'x base':>7s} {'peak RSS MB':>12s} {'x base':>7s}")
    for name, sec, rss in rows:
        print(f"{name:46s} {sec:8.2f} {sec / base['seconds']:7.2f} {rss:12.0f} {rss / base['peak_rss_mb']:7.2f}")
    if not have_crops:
        print("appliance.crops not installed: crop step not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
