"""Run TotalSegmentator (`total` task) in memory on a Volume, offline, and return the label map on the input grid.

Three things are patched/configured, each because the hospital appliance needs it:
* nnU-Net resolves the trainer class by importing every module under nnunetv2.training
  (nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name -> recursive_find_python_class); some of
  those import timm/torchvision, which are broken with our CPU torch. TotalSegmentator already routes that lookup
  through its `custom_trainers` dict (totalsegmentator.nnunet); we add the one trainer the `total` models use, so the
  package walk never happens.
* TotalSegmentator's config.json (TOTALSEG_HOME_DIR or ~/.totalsegmentator) defaults to send_usage_stats=true,
  which would phone home from the hospital network; we write it false before every call.
* Missing weights would trigger a download attempt; we check the folder first and raise SegmentationError.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from appliance.errors import SegmentationError
from appliance.nifti_io import nifti_affine
from appliance.ontology import ORGANS
from appliance.volume import Volume

from .random_weights import MODEL_SUBDIR, TASK_FOLDERS, TRAINER

WEIGHTS_ENV = "TOTALSEG_WEIGHTS_PATH"


def our_roi_subset() -> list[str]:
    """The TotalSegmentator classes that make up our organs (what we ask it to segment)."""
    return sorted({c for organ in ORGANS for c in organ.totalseg_classes})


def default_weights_dir() -> Path:
    if WEIGHTS_ENV in os.environ:
        return Path(os.environ[WEIGHTS_ENV])
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def disable_usage_stats() -> Path:
    """Write send_usage_stats=false into TotalSegmentator's config (creating it); returns the config path."""
    from totalsegmentator.config import get_totalseg_dir

    home = Path(get_totalseg_dir())
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    # totalseg_id is required by TotalSegmentator's reader; a constant keeps it free of anything identifying.
    config.setdefault("totalseg_id", "totalseg_offline")
    config.setdefault("prediction_counter", 0)
    config["send_usage_stats"] = False
    config["statistics_disclaimer_shown"] = True  # the disclaimer is about the stats we just turned off
    path.write_text(json.dumps(config, indent=4))
    return path


def register_trainers_without_package_walk() -> None:
    """Make nnU-Net find the `total` trainer class without importing all of nnunetv2.training (see module doc)."""
    import totalsegmentator.nnunet as ts_nnunet
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (
        nnUNetTrainer_4000epochs_NoMirroring,
    )

    ts_nnunet.custom_trainers.setdefault(TRAINER, nnUNetTrainer_4000epochs_NoMirroring)


def volume_to_nifti(volume: Volume):
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0)).astype(np.float32))
    img = nib.Nifti1Image(data, nifti_affine(volume))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


def nifti_labels_to_volume(img, like: Volume) -> Volume:
    """Labels from TotalSegmentator (which writes them back on the input's grid) as a Volume on `like`'s grid."""
    if not np.allclose(img.affine, nifti_affine(like), atol=1e-3):
        raise SegmentationError("TotalSegmentator returned labels on a different grid than the input image")
    labels = np.asarray(img.dataobj)
    if labels.shape != like.shape[::-1]:
        raise SegmentationError(f"TotalSegmentator returned shape {labels.shape}, expected {like.shape[::-1]}")
    arr = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint8)
    return like.with_array(arr, kind="labels", labels="totalsegmentator_total")


class TotalSegmentatorAdapter:
    def __init__(self, weights_path: str | Path | None = None, *, fast: bool = True, device: str = "cpu"):
        if not fast:
            raise SegmentationError("only the fast (3 mm) TotalSegmentator model is supported on this appliance")
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self.device = device

    def _check_weights(self, weights_dir: Path) -> None:
        for folder in TASK_FOLDERS.values():
            ckpt = weights_dir / folder / MODEL_SUBDIR / "fold_0" / "checkpoint_final.pth"
            if not ckpt.is_file():
                raise SegmentationError(
                    f"TotalSegmentator weights not found: expected {ckpt}. Install the model folders "
                    f"{', '.join(TASK_FOLDERS.values())} under the directory named by the environment variable "
                    f"{WEIGHTS_ENV} (currently {weights_dir}); this appliance never downloads them.")

    def segment(self, volume: Volume) -> Volume:
        weights_dir = self.weights_path or default_weights_dir()
        self._check_weights(weights_dir)
        disable_usage_stats()
        register_trainers_without_package_walk()
        from totalsegmentator.python_api import totalsegmentator

        # TotalSegmentator reads the env var at call time (setup_nnunet), so this is how we pass our folder;
        # restored afterwards so the caller's environment is left as it was.
        previous = os.environ.get(WEIGHTS_ENV)
        os.environ[WEIGHTS_ENV] = str(weights_dir)
        try:
            out = totalsegmentator(volume_to_nifti(volume), None, task="total", fast=True,
                                   roi_subset=our_roi_subset(), device=self.device, quiet=True)
        except Exception as exc:  # nnU-Net/TotalSegmentator raise many types; the admin needs one clear message
            raise SegmentationError(f"TotalSegmentator failed on this image: {exc}") from exc
        finally:
            if previous is None:
                os.environ.pop(WEIGHTS_ENV, None)
            else:
                os.environ[WEIGHTS_ENV] = previous
        return nifti_labels_to_volume(out, volume)
