"""NIfTI read/write. NIfTI is RAS with array axes (x, y, z); our Volume is LPS with axes (z, y, x) (see volume.py).

The conversion happens here and nowhere else: reverse the axes, negate the first two world components.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.errors import VolumeFormatError
from appliance.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# our (z, y, x) index -> nifti (x, y, z) index
_REVERSE_AXES = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def read_nifti(path: str | Path, *, dtype=None) -> Volume:
    """Read a NIfTI file into a Volume (HU images as float32 unless ``dtype`` says otherwise; labels keep ints)."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        affine_ras = np.asarray(img.affine, dtype=np.float64)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise VolumeFormatError(f"{path.name}: not a readable NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeFormatError(f"{path.name}: expected a 3-D volume, got shape {data.shape}")
    if not np.all(np.isfinite(affine_ras)) or abs(np.linalg.det(affine_ras[:3, :3])) < 1e-9:
        raise VolumeFormatError(f"{path.name}: the NIfTI affine is degenerate; cannot place the volume in space")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    elif not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32, copy=False)
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    a = _RAS_TO_LPS @ affine_ras @ _REVERSE_AXES  # our index -> LPS
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing[None, :]
    # NIfTI affines may carry shear or slightly non-orthogonal columns from float32 storage: re-orthonormalise.
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    return Volume(arr, tuple(spacing), tuple(a[:3, 3]), direction, {"source": "nifti", "file": path.name})


def nifti_affine(vol: Volume) -> np.ndarray:
    """The RAS affine of ``vol`` for the NIfTI (x, y, z) axis order."""
    return _RAS_TO_LPS @ vol.affine() @ _REVERSE_AXES  # _REVERSE_AXES and _RAS_TO_LPS are their own inverses


def write_nifti(vol: Volume, path: str | Path) -> Path:
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.transpose(vol.array, (2, 1, 0))
    img = nib.Nifti1Image(np.ascontiguousarray(data), nifti_affine(vol))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    # nibabel picks the format (and compression) from the suffix, so the temp file keeps it: x.part.nii(.gz)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(path.name[: len(path.name) - len(suffix)] + ".part" + suffix)
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path
