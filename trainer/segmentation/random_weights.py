"""Write a tiny random-weight nnU-Net model where TotalSegmentator looks for its `total` fast weights.

The real weights cannot be downloaded on site; this model has the exact folder layout, label set and checkpoint
format of the real one, so the unmodified `totalsegmentator()` pipeline runs end to end (offline, in seconds)
and our adapter can be tested for parity against it. Its predictions are meaningless by design.
"""
from __future__ import annotations

import json
from pathlib import Path

# The fast `total` task (3 mm) is 297; with roi_subset TotalSegmentator first crops with the 6 mm model 298.
TASK_FOLDERS = {
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
MODEL_SUBDIR = f"{TRAINER}__nnUNetPlans__3d_fullres"


def total_label_names() -> dict[int, str]:
    from totalsegmentator.map_to_binary import class_map

    return dict(class_map["total"])


def _plans(dataset_name: str, spacing_mm: float) -> dict:
    # Small on purpose: 3 stages, 4..16 features -> runs in about a second per sliding-window patch on CPU.
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing_mm] * 3,
        "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "handwritten (trainer.segmentation.random_weights)",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 100.0, "median": 80.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [100, 100, 100],
                "spacing": [spacing_mm] * 3,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample,
                "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
                "architecture": arch,
                "batch_dice": False,
            }
        },
    }


def write_random_total_model(weights_dir: Path, *, seed: int = 0) -> list[Path]:
    """Write models 297 and 298 under `weights_dir` (the TOTALSEG_WEIGHTS_PATH); returns the checkpoint paths."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    labels = {"background": 0, **{name: idx for idx, name in sorted(total_label_names().items())}}
    written = []
    for task_id, folder in TASK_FOLDERS.items():
        spacing = 3.0 if task_id == 297 else 6.0
        model_dir = Path(weights_dir) / folder / MODEL_SUBDIR
        (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
        plans = _plans(folder, spacing)
        dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
        (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
        (model_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
        cfg = PlansManager(plans).get_configuration("3d_fullres")
        torch.manual_seed(seed + task_id)
        net = get_network_from_plans(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                     cfg.network_arch_init_kwargs_req_import, 1, len(labels),
                                     allow_init=True, deep_supervision=False)
        ckpt = model_dir / "fold_0" / "checkpoint_final.pth"
        torch.save({
            "network_weights": net.state_dict(),
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": dataset_json, "device": "cpu"},
            "trainer_name": TRAINER,
            "inference_allowed_mirroring_axes": None,
            "current_epoch": 0,
        }, ckpt)
        written.append(ckpt)
    return written
