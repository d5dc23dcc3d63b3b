"""Command line of report parsing: `totalfm train parse-report` and `totalfm train eval-reports`.

trainer.cli (the `totalfm train` dispatcher) calls parse_report_main / eval_reports_main with the remaining
arguments; `python -m trainer.reports.cli parse-report ...` works as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from appliance.errors import TotalFMError
from trainer.reports.evaluate import evaluate, format_table, load_gold, rule_labeller, synth_heldout_reports
from trainer.reports.parse import ENGINES, make_llm_labeller, parse_report

_DATA = Path(__file__).resolve().parents[2] / "tests" / "trainer" / "data"
DEFAULT_GOLD = (_DATA / "report_gold.json", _DATA / "report_gold_holdout.json")


def parse_report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm train parse-report",
                                description="Split a free-text CT report into sentences and label each one "
                                            "(organ, polarity, finding, contrast phase).")
    p.add_argument("report", help="text file with the report, or - for standard input")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: the LLM when $TOTALFM_LLM_GGUF or --gguf is set, else the rule engine")
    p.add_argument("--gguf", help="GGUF model file for the LLM engine (default: $TOTALFM_LLM_GGUF, then bundled)")
    p.add_argument("--llm-mode", choices=("sentence", "report"), default="sentence")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    try:
        text = sys.stdin.read() if a.report == "-" else Path(a.report).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TotalFMError(f"cannot read report {a.report}: {exc}; pass a UTF-8 text file") from None
    labeller = None
    if a.engine == "llm" or (a.engine == "auto" and a.gguf):
        labeller = make_llm_labeller(a.gguf, mode=a.llm_mode)
    rep = parse_report(text, engine=a.engine, labeller=labeller)
    if a.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        if not rep.processable:
            print(f"not processable: {rep.reason}")
            return 1
        for note in rep.notes:
            print(f"note: {note}")
        print(f"engine: {rep.engine}; report phase: {rep.phase}")
        for s in rep.sentences:
            lab = s.label
            flag = " (hedged)" if lab.hedged else ""
            dis = f"  [LLM/rules differ: {', '.join(s.disagreements)}]" if s.disagreements else ""
            print(f"[{s.sentence.section:10s}] {lab.polarity:13s} {str(lab.organ):15s} {str(lab.finding):24s} "
                  f"{str(lab.phase):13s} {s.sentence.text}{flag}{dis}")
        if rep.disagreement_counts:
            print(f"LLM/rule disagreements per field: {rep.disagreement_counts}")
    return 0 if rep.processable else 1


def eval_reports_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm train eval-reports",
                                description="Score the report parsers (split F1, organ/polarity/finding/phase "
                                            "accuracy) on gold reports.")
    p.add_argument("--gold", type=Path, action="append",
                   help="gold report JSON file(s) (default: our hand-written sets unless --synth is given)")
    p.add_argument("--synth", type=int, default=0, help="also score N reports of the synthetic held-out phrasing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm", action="store_true", help="also score the LLM engine (both modes unless --llm-mode)")
    p.add_argument("--llm-mode", choices=("sentence", "report"), action="append")
    p.add_argument("--gguf", help="GGUF model file (default: $TOTALFM_LLM_GGUF, then bundled SmolLM2)")
    p.add_argument("--json-out", type=Path, help="write the full results (with first errors) as JSON here")
    a = p.parse_args(argv)

    sets: list[tuple[str, list[dict]]] = []
    for g in a.gold or ([] if a.synth else list(DEFAULT_GOLD)):
        sets.append((f"gold {g.name}", load_gold(g)))
    if a.synth:
        try:
            sets.append((f"synthetic held-out phrasing (n={a.synth}, seed={a.seed})", synth_heldout_reports(a.synth, a.seed)))
        except ImportError as exc:
            raise TotalFMError(f"the synthetic report writer is not available ({exc}); use --gold") from None
    labellers = {"rules": rule_labeller}
    llm_info = {}
    if a.llm:
        for mode in a.llm_mode or ["sentence", "report"]:
            lab = make_llm_labeller(a.gguf, mode=mode)
            labellers[lab.name] = lab.label_sentences
            llm_info[lab.name] = lab
    all_out = []
    for title, reports in sets:
        out = evaluate(reports, labellers, title=title)
        for res in out["_results"]:
            if res.engine in llm_info:
                llm = llm_info[res.engine].llm
                res.extra.update(load_seconds=round(llm.load_seconds, 3), tokens_per_s=round(llm.tokens_per_s, 1),
                                 completion_tokens=llm.total_completion_tokens)
        print(format_table(out["_split"], out["_results"], f"{title}: {len(reports)} reports"))
        for res in out["_results"]:
            if "disagreements_with_rules" in res.extra:
                print(f"  {res.engine}: disagreements with rules {res.extra['disagreements_with_rules']}, "
                      f"{res.extra.get('tokens_per_s')} tokens/s, model load {res.extra.get('load_seconds')} s")
        print()
        all_out.append({k: v for k, v in out.items() if not k.startswith("_")}
                       | {"engines": [r.as_dict() for r in out["_results"]]})
    if a.json_out:
        a.json_out.write_text(json.dumps(all_out, indent=1))
        print(f"wrote {a.json_out}")
    return 0


SUBCOMMANDS = {"parse-report": parse_report_main, "eval-reports": eval_reports_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: {' | '.join(SUBCOMMANDS)} [options]  (see --help of each)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return SUBCOMMANDS[argv[0]](argv[1:])
    except TotalFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
