"""Inference latency on 2 CPU threads, same real inputs, one process: torch eager vs ONNX Runtime fp32 vs ORT INT8.

    .venv/bin/python bench/bench_inference.py [--encoder CKPT] [--seg CKPT] [--threads 2] [--repeat 10]

Organ encoder: a batch of real organ crops (shared real CT -> appliance.crops -> appliance.preprocess.encoder_input).
Segmentation network: real CT patches normalised like appliance.segment. Without checkpoints the trainers' real
architectures with random weights are used (latency does not depend on weight values; printed in the output).
INT8: ORT dynamic quantisation (MatMul/Gemm) for the encoder; for the segmentation net (all Conv3d) static QDQ
quantisation calibrated on the real patches. Prints one JSON with milliseconds and ratios against torch eager.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def _seg_int8_static(src: Path, dst: Path, patches: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": patches[i:i + 1]} for i in range(len(patches))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", help="encoder checkpoint (trainer.model.checkpoint); default: random ViT tiny")
    p.add_argument("--seg", help="segmentation checkpoint (trainer.segmentation.unet); default: random U-Net")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--batch", type=int, default=8, help="organ crops per encoder call")
    a = p.parse_args(argv)

    import onnxruntime as ort
    import torch

    from export import real_inputs
    from export.onnx_export import export_onnx
    from export.quantize import quantize_dynamic_int8

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.encoder:
        from trainer.model.checkpoint import load_encoder

        enc, meta = load_encoder(a.encoder)
        enc_src = a.encoder
    else:
        from trainer.model.vit3d import OrganEncoder, config_for

        enc = OrganEncoder(config_for("tiny")).eval()
        enc_src = "random-init ViT tiny (trainer.model.vit3d.config_for('tiny'))"
    if a.seg:
        from trainer.segmentation.unet import build_from_checkpoint

        seg, pre = build_from_checkpoint(a.seg)
        seg_src = a.seg
    else:
        from trainer.segmentation import unet

        seg = unet.build().eval()
        pre = {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [64, 64, 64], "clip_hu": [-1000.0, 1000.0],
               "mean": 0.0, "std": 500.0, "class_ids": list(range(17))}
        seg_src = "random-init U-Net (trainer.segmentation.unet.build())"
    shape = tuple(enc.cfg.input_shape)
    x, oi, _ = real_inputs.organ_crops(shape)
    x, oi = x[:a.batch], oi[:a.batch]
    patches = real_inputs.seg_patches(pre, n=2)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3

    def sess(path):
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    res: dict = {"threads": a.threads, "repeat": a.repeat, "torch": torch.__version__, "onnxruntime": ort.__version__}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        export_onnx(enc, (torch.from_numpy(x[:2]), torch.from_numpy(oi[:2])), td / "enc.onnx",
                    input_names=["crop", "organ_index"], output_names=["embedding"],
                    dynamic_axes={"crop": {0: "batch"}, "organ_index": {0: "batch"}})
        quantize_dynamic_int8(td / "enc.onnx", td / "enc.int8.onnx")
        export_onnx(seg, (torch.from_numpy(patches[:1]),), td / "seg.onnx", input_names=["image"],
                    output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
        _seg_int8_static(td / "seg.onnx", td / "seg.int8.onnx", patches)

        with torch.no_grad():
            tx, toi = torch.from_numpy(x), torch.from_numpy(oi)
            e_t = _time(lambda: enc(tx, toi), a.repeat)
            ref = enc(tx, toi).numpy()
        s32, s8 = sess(td / "enc.onnx"), sess(td / "enc.int8.onnx")
        feeds = {"crop": x, "organ_index": oi}
        e_32 = _time(lambda: s32.run(None, feeds), a.repeat)
        e_8 = _time(lambda: s8.run(None, feeds), a.repeat)
        cos8 = float(np.min(np.sum(s8.run(None, feeds)[0] * ref, 1)))
        cos32 = float(np.min(np.sum(s32.run(None, feeds)[0] * ref, 1)))
        res["organ_encoder"] = {
            "model": enc_src, "input": f"{len(x)} real organ crops {list(shape)}",
            "ms_torch_eager": round(e_t, 1), "ms_ort_fp32": round(e_32, 1), "ms_ort_int8": round(e_8, 1),
            "ratio_torch_over_ort_fp32": round(e_t / e_32, 2), "ratio_torch_over_ort_int8": round(e_t / e_8, 2),
            "ratio_ort_fp32_over_int8": round(e_32 / e_8, 2),
            "min_cosine_fp32_vs_torch": round(cos32, 6), "min_cosine_int8_vs_torch": round(cos8, 6)}

        with torch.no_grad():
            tp = torch.from_numpy(patches)
            s_t = _time(lambda: seg(tp), a.repeat)
            sref = seg(tp).numpy().argmax(1)
        g32, g8 = sess(td / "seg.onnx"), sess(td / "seg.int8.onnx")
        sf = {"image": patches}
        s_32 = _time(lambda: g32.run(None, sf), a.repeat)
        s_8 = _time(lambda: g8.run(None, sf), a.repeat)
        agree8 = float((g8.run(None, sf)[0].argmax(1) == sref).mean())
        res["segmentation"] = {
            "model": seg_src, "input": f"{len(patches)} real CT patches {list(pre['patch_size'])}",
            "ms_torch_eager": round(s_t, 1), "ms_ort_fp32": round(s_32, 1), "ms_ort_int8_static": round(s_8, 1),
            "ratio_torch_over_ort_fp32": round(s_t / s_32, 2), "ratio_torch_over_ort_int8": round(s_t / s_8, 2),
            "ratio_ort_fp32_over_int8": round(s_32 / s_8, 2), "argmax_agreement_int8_vs_torch": round(agree8, 4)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
