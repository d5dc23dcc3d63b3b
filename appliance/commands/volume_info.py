"""`totalfm volume-info PATH`: what the appliance would see: geometry, HU range, which series and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load_volume(path: str):
    """A NIfTI file or a DICOM folder/file -> Volume (the same dispatch `analyze` uses)."""
    from appliance.dicom_io import read_series
    from appliance.nifti_io import read_nifti

    p = Path(path)
    if p.is_file() and (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        return read_nifti(p)
    return read_series(p)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm volume-info", description=__doc__)
    ap.add_argument("path", help="DICOM folder, DICOM file or NIfTI file")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    vol = load_volume(args.path)
    info = vol.describe()
    a = vol.array
    info["hu_percentiles_1_50_99"] = [round(float(x), 1) for x in np.percentile(a, [1, 50, 99])]
    for k in ("choice", "series", "reader_notes", "unreadable", "transfer_syntax", "slice_thickness_mm",
              "series_uid_missing"):
        if k in vol.meta:
            info[k] = vol.meta[k]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"shape (z,y,x)      {info['shape_zyx']}")
    print(f"spacing mm (z,y,x) {info['spacing_mm_zyx']}")
    print(f"origin LPS mm      {info['origin_lps_mm']}")
    print(f"orientation        {info['orientation']} (axis 0,1,2 point to; canonical is SPL)")
    print(f"extent mm          {info['extent_mm_zyx']}")
    print(f"HU range           {info['value_range']}  (p1/p50/p99 {info['hu_percentiles_1_50_99']})")
    if "choice" in info:
        print(f"series             {info['choice']}")
        for s in info.get("series", []):
            mark = "*" if s["reason"].startswith("chosen") else "-"
            print(f"  {mark} {s['series_uid']} {s['modality']} {s['n_instances']} inst.: {s['reason']}")
    for note in info.get("reader_notes", []) + info.get("unreadable", []):
        print(f"note               {note}")
    return 0
