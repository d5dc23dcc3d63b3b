"""The import rules of docs/architecture.md, enforced: the appliance starts without torch and never reaches into
trainer/export/tui; arrows point one way."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "appliance": {"torch", "trainer", "export", "tui", "dicom_node"},
    "dicom_node": {"torch", "trainer", "export", "tui"},
    "trainer": {"export", "tui", "dicom_node"},
    "export": {"tui", "dicom_node"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_packages_respect_import_rules():
    violations = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (ROOT / pkg).rglob("*.py"):
            bad = _imported_top_levels(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_appliance_modules_import_without_torch():
    # Import every appliance module in a fresh interpreter and check torch was never loaded.
    mods = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "appliance").rglob("*.py")
        if "migrations" not in p.parts
    )
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m.removesuffix('.__init__'))\n"
        "bad = [m for m in ('torch', 'trainer', 'export', 'tui') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "volume-info" in out.stdout and "DRAFT for radiologist" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "appliance.cli", "no-such-command"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "unknown" in bad.stderr


def test_train_subcommands_dispatch(tmp_path):
    report = tmp_path / "r.txt"
    report.write_text("FINDINGS:\nLiver: Hepatic steatosis. No gallstones.\n")
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "train", "parse-report", str(report)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "hepatic_steatosis" in out.stdout and "negated" in out.stdout
