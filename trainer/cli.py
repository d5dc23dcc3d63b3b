"""`totalfm train SUBCOMMAND`: the trainer's commands, each imported only when it runs (torch stays lazy)."""

from __future__ import annotations

import importlib
import sys

# name -> (module, function taking argv, help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "parse-report": ("trainer.reports.cli", "parse_report_main",
                     "split a report into single-finding sentences and label organ/polarity/finding/phase"),
    "eval-reports": ("trainer.reports.cli", "eval_reports_main",
                     "accuracy of the rule engine (and the LLM with --llm) on gold sets and held-out phrasings"),
    "build-pairs": ("trainer.pairs.cli", "build_pairs_main",
                    "segment + crop + parse reports over many studies -> organ-volume / sentence dataset (resumable)"),
    "pairs-query": ("trainer.pairs.cli", "query_main",
                    "query a pair dataset's index, e.g. liver crops with a positive steatosis sentence"),
    "seg-train": ("trainer.segmentation.train", "main",
                  "train the distilled 3D U-Net organ segmenter on TotalSegmentator label maps"),
    "seg-eval": ("trainer.segmentation.evaluate", "main",
                 "Dice per organ of a segmentation checkpoint on held-out real scans and phantoms"),
    "pretrain": ("trainer.model.pretrain", "main", "stage 1: VideoMAE self-supervised pre-training on organ crops"),
    "contrastive": ("trainer.model.contrastive", "main",
                    "stage 2: organ-crop / finding-sentence contrastive training (CLIP style)"),
    "baseline": ("trainer.model.baseline", "main", "whole-volume CLIP baseline (CT-CLIP style), same data and budget"),
    "eval": ("trainer.evaluate.cli", "main",
             "zero-shot evaluation: organ-wise F1, finding-wise AUROC with bootstrap CIs, ROC PNGs, thresholds"),
    "recipe": ("trainer.recipe", "main", "run a whole training recipe (demo | hospital) end to end"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: totalfm train SUBCOMMAND [...]\n\nsubcommands:")
        for name, (_, _, help_text) in SUBCOMMANDS.items():
            print(f"  {name:14s} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = SUBCOMMANDS[argv[0]]
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
            print(f"totalfm train {argv[0]}: not built yet in this release ({module} is missing)", file=sys.stderr)
            return 3
        raise
    return int(getattr(target, func)(argv[1:]) or 0)
