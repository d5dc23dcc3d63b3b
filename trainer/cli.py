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
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: totalfm train SUBCOMMAND [...]\n\nsubcommands:")
        for name, (_, _, help_text) in SUBCOMMANDS.items():
            print(f"  {name:14s} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = SUBCOMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
