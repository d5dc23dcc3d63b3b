"""`totalfm`: one console script, a thin shell over library calls.

Each subcommand lives in its own module with ``main(argv: list[str]) -> int``, imported only when that subcommand
runs. Why a table of dotted names instead of imports: the appliance must start without torch, and trainer/export/tui
must never be imported by the appliance package (docs/architecture.md); the dispatcher only knows their names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from appliance.errors import TotalFMError

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "volume-info": ("appliance.commands.volume_info", "read a DICOM folder or NIfTI file and print geometry, HU range, series chosen and why"),
    "analyze": ("appliance.commands.analyze", "run the whole pipeline once on a DICOM folder or NIfTI file and print findings and the draft report"),
    "worker": ("appliance.commands.worker", "run an analysis worker that takes studies from the queue"),
    "query": ("appliance.commands.query", "rank stored organs by similarity to a text query, e.g. \"gallstones\""),
    "db": ("appliance.commands.db", "database maintenance: upgrade (apply migrations), current"),
    "retention": ("appliance.commands.retention", "delete spooled images of delivered studies older than N days"),
    "doctor": ("appliance.commands.doctor", "check config, database, spool, bundle, backend and LLM; say how to fix what is wrong"),
    "node": ("dicom_node.cli", "run the DICOM node (C-ECHO/C-STORE SCP); `node echo DEST` tests a destination"),
    "synth": ("trainer.synth.cli", "write synthetic CT studies with known findings and reports (phantoms)"),
    "train": ("trainer.cli", "trainer: build-pairs, segmentation, pretrain, contrastive, eval"),
    "export": ("export.cli", "exporter: model bundles with ONNX models and TensorRT engines"),
    "tui": ("tui.cli", "the admin console (Textual)"),
    "demo": ("appliance.commands.demo", "one-command demo: node + worker + a study sent over DICOM, findings and draft printed"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="totalfm",
        description="On-prem CT AI appliance (TotalFM). Every AI output is a DRAFT for radiologist review, "
        "never a diagnosis.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if _installed(module_name):  # list only what this installation can run
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or not _installed(COMMANDS[name][0]):
        parser.error(f"unknown or unavailable command {name!r}; see `totalfm --help`")
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"totalfm {name}: not available in this installation ({exc.name} is missing). "
              f"Install the matching extra (see README) or use a newer release.", file=sys.stderr)
        return 3
    try:
        return int(module.main(rest) or 0)
    except TotalFMError as exc:
        print(f"totalfm {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
