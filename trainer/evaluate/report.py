"""Evaluation outputs: JSON, markdown tables, ROC PNGs (matplotlib Agg), and the organ-vs-whole-volume comparison."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from appliance.scoring import DISCLAIMER
from trainer.evaluate.zeroshot import MIN_VAL_AUROC, MIN_VAL_PRECISION


def _threshold(r: dict) -> str:
    """Threshold cell: the value, flagged when it was not picked by max F1 on validation."""
    flag = {"default": " (default)", "uninformative_on_val": f" (never positive: val AUROC < {MIN_VAL_AUROC})",
            "imprecise_on_val": f" (never positive: val precision < {MIN_VAL_PRECISION} at every threshold)",
            "finding_thresholds": " (the findings' own)"}
    return f"{r['threshold']:.3f}{flag.get(r['threshold_source'], '')}"


def _num(x, nd=3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _ci(ci) -> str:
    if not ci or any(v is None or not np.isfinite(v) for v in ci):
        return ""
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def jsonable(obj):
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def markdown(res: dict, title: str = "Zero-shot evaluation") -> str:
    m = res["macro"]
    lines = [f"# {title}", "", f"*{DISCLAIMER}.*", "",
             f"Test studies: {res['n_studies']['test']}, validation studies (thresholds): {res['n_studies']['val']}. "
             f"logit scale {res['logit_scale']:.2f}. Organ rule: `{res['organ_rule']}`.", "",
             f"- **Organ-wise macro F1: {_num(m['organ_f1'])}** over {m['organ_f1_n']} organs with test positives",
             f"- **Finding-wise macro AUROC: {_num(m['finding_auroc'])}** over {m['finding_auroc_n']} findings "
             f"(catalogue only: {_num(m['catalogue_auroc'])} over {m['catalogue_auroc_n']})",
             f"- AUROC n/a (no test positives or negatives): {', '.join(m['findings_na']) or 'none'}", "",
             *([f"- Prompt-supervised findings (marked *; their prompts were trained against, so not zero-shot): "
                f"macro AUROC {_num(m['prompt_supervised_auroc'])} over {m['prompt_supervised_auroc_n']}; "
                f"**zero-shot findings only: {_num(m['zero_shot_auroc'])}** over {m['zero_shot_auroc_n']}", ""]
               if "zero_shot_auroc" in m else []),
             *(["By test source (same thresholds; the pooled figures above mix them):", "",
                "| source | studies | finding AUROC (findings) | organ F1 (organs) |", "| --- | --- | --- | --- |",
                *(f"| {k} | {v['n_studies']} | {_num(v['finding_auroc'])} ({v['finding_auroc_n']}) | "
                  f"{_num(v['organ_f1'])} ({v['organ_f1_n']}) |" for k, v in res["by_source"].items()), ""]
               if res.get("by_source") else []),
             "## Organ-wise lesion classification (organ abnormal or not)", "",
             f"Rule `called` = what the appliance's draft shows (an organ with a finding above that finding's "
             f"threshold); `any` = max finding score against an organ threshold; `abnormal_prompt` = the organ's "
             f"generic prompt alone. Macro F1 by rule: "
             + ", ".join(f"`{k}` {_num(v)}" for k, v in m.get("organ_f1_by_rule", {}).items()) + ".", "",
             "| organ | F1 [95% CI] | AUROC | threshold (val) | test pos / n | F1 by rule (called / any / abnormal_prompt) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for organ, r in res["organs"].items():
        by_rule = " / ".join(_num(v["f1"]) for v in r.get("rules", {}).values())
        lines.append(f"| {organ} | {_num(r['f1'])}{_ci(r['f1_ci'])} | {_num(r['auroc'])} | {_threshold(r)} | "
                     f"{r['n_pos']} / {r['n']} | {by_rule} |")
    lines += ["", "## Finding-wise AUROC", "",
              "| finding | organs | AUROC [95% CI] | F1 @ val threshold | threshold | test pos / n | val pos |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in res["findings"].items():
        mark = " *" if r.get("prompt_supervised") else ""
        lines.append(f"| {name}{mark} | {'/'.join(r['organs'])} | {_num(r['auroc'])}{_ci(r['auroc_ci'])} | "
                     f"{_num(r['f1'])} | {_threshold(r)} | {r['n_pos']} / {r['n']} | {r['n_val_pos']} |")
    return "\n".join(lines) + "\n"


def roc_pngs(res: dict, out_dir: Path, prefix: str = "roc") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = res.get("_roc", {})
    paths = []
    if not curves:
        return paths
    names = list(curves)
    cols = 6
    rows = int(math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        fpr, tpr, auc = curves[name]
        ax.axis("on")
        ax.plot(fpr, tpr, lw=1.5)
        ax.plot([0, 1], [0, 1], "k:", lw=0.7)
        ax.set_title(f"{name}\nAUROC {auc:.2f}", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"ROC curves (test split) - {DISCLAIMER}", fontsize=8)
    fig.tight_layout()
    p = out_dir / f"{prefix}_all.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    sub = out_dir / prefix
    sub.mkdir(exist_ok=True)
    for name in names:
        fpr, tpr, auc = curves[name]
        fig, ax = plt.subplots(figsize=(3.2, 3.2))
        ax.plot(fpr, tpr, lw=1.8, label=f"AUROC {auc:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(name, fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        q = sub / f"{name}.png"
        fig.savefig(q, dpi=90)
        plt.close(fig)
        paths.append(q)
    return paths


def write_outputs(res: dict, out_dir: str | Path, *, title: str = "Zero-shot evaluation", stem: str = "eval",
                  extra: dict | None = None, plots: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = jsonable({**res, **(extra or {})})
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2, sort_keys=False))
    (out / f"{stem}.md").write_text(markdown(res, title))
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if plots:
        png = roc_pngs(res, out, prefix=f"{stem}_roc")
        if png:
            paths["roc"] = png[0]
    return paths


def comparison_markdown(organ_res: dict, base_res: dict, organ_info: dict, base_info: dict) -> str:
    """Side-by-side table: organ-separated model vs whole-volume baseline (same test split, same scoring)."""
    lines = ["# Organ-separated encoder vs whole-volume CLIP baseline", "", f"*{DISCLAIMER}.*", "",
             "| | organ-separated | whole-volume |", "| --- | --- | --- |"]
    for key, label in (("gflops_per_study", "encoder GFLOPs / study"), ("train_seconds", "training wall time (s)"),
                       ("train_gflops", "training compute (GFLOPs, fwd+bwd est.)"), ("params_m", "encoder params (M)")):
        lines.append(f"| {label} | {_num(organ_info.get(key), 1)} | {_num(base_info.get(key), 1)} |")
    lines.append(f"| macro organ F1 | {_num(organ_res['macro']['organ_f1'])} | {_num(base_res['macro']['organ_f1'])} |")
    lines.append(f"| macro finding AUROC | {_num(organ_res['macro']['finding_auroc'])} | "
                 f"{_num(base_res['macro']['finding_auroc'])} |")
    wins_o = wins_b = ties = 0
    rows = []
    for name, r in organ_res["findings"].items():
        a, b = r["auroc"], base_res["findings"].get(name, {}).get("auroc", float("nan"))
        if np.isfinite(a) and np.isfinite(b):
            if a > b + 1e-9:
                wins_o += 1
                w = "organ"
            elif b > a + 1e-9:
                wins_b += 1
                w = "whole"
            else:
                ties += 1
                w = "tie"
        else:
            w = "n/a"
        rows.append(f"| {name} | {_num(a)}{_ci(r['auroc_ci'])} | {_num(b)}"
                    f"{_ci(base_res['findings'].get(name, {}).get('auroc_ci'))} | {w} |")
    lines += ["", f"**Finding AUROC wins: organ-separated {wins_o}, whole-volume {wins_b}, ties {ties}** "
              f"(of {wins_o + wins_b + ties} findings with a defined AUROC on the test split).", "",
              "| finding | organ-separated AUROC | whole-volume AUROC | better |", "| --- | --- | --- | --- |", *rows]
    lines += ["", "| organ | organ-separated F1 | whole-volume F1 |", "| --- | --- | --- |"]
    for organ, r in organ_res["organs"].items():
        b = base_res["organs"].get(organ, {}).get("f1", float("nan"))
        lines.append(f"| {organ} | {_num(r['f1'])}{_ci(r['f1_ci'])} | {_num(b)} |")
    return "\n".join(lines) + "\n", {"organ_wins": wins_o, "whole_wins": wins_b, "ties": ties}
