"""What the prepared GPU experiments (bench/gpu_*.py) share: a JSON record written after every step, steps run under
one deadline (a lent GPU call is cut at 10 minutes; a rerun goes on from the record), wheels the GPU image lacks
installed from the carried payload, and the environment every step runs in."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Record:
    """``R`` (a dict) saved as ``<name>.json`` in ``out`` and ``work`` after every step; ``run`` runs one step."""

    def __init__(self, name: str, out: Path, work: Path, deadline_s: float = 0):
        self.name, self.out, self.work = name, Path(out), Path(work)
        self.deadline = time.time() + deadline_s if deadline_s else float("inf")
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.R: dict = {"steps": {}}
        earlier = self.work / f"{name}.json"
        if earlier.exists():  # a rerun goes on from the last one
            self.R.update(json.loads(earlier.read_text()))
            self.R["reruns"] = self.R.get("reruns", 0) + 1

    def note(self, key: str, value) -> None:
        self.R[key] = value
        print(f"[{self.name}] {key}: {json.dumps(value, default=str)[:600]}", flush=True)
        self.save()

    def save(self) -> None:
        for d in {self.out, self.work}:
            (d / f"{self.name}.json").write_text(json.dumps(self.R, indent=2, default=str))

    def done(self, step: str) -> bool:
        return self.R["steps"].get(step, {}).get("rc") == 0

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, cmd: list[str], step: str, timeout: float, env: dict, log: Path | None = None) -> bool:
        """One step; its wall time and return code go into the record whatever happens. ``log``: its output too."""
        t0 = time.time()
        if self.left() < 20:
            self.R["steps"][step] = {"rc": "not started: deadline"}
            self.save()
            return False
        print(f"[{self.name}] $ {' '.join(cmd)}", flush=True)
        try:
            with open(log, "w") if log else contextlib.nullcontext() as fh:
                rc = subprocess.run(cmd, env=env, timeout=min(timeout, self.left()), cwd=REPO, stdout=fh,
                                    stderr=subprocess.STDOUT if fh else None).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        self.R["steps"][step] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
        print(f"[{self.name}] {step}: rc {rc} in {time.time() - t0:.0f} s", flush=True)
        self.save()
        return rc == 0


def totalfm(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def step_env(payload: Path, work: Path, **extra: str) -> dict:
    """The environment of every step: the payload's wheels (installed one by one into work/site: a wheel for another
    Python skips alone) and the repository on PYTHONPATH, unbuffered output, plus ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    path = [str(REPO)]
    wheels = sorted((payload / "whl").glob("*.whl")) if (payload / "whl").is_dir() else []
    if wheels:
        site = work / "site"
        for whl in wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--upgrade", "--target", str(site), str(whl)], check=False)
        path.insert(0, str(site))
    env["PYTHONPATH"] = ":".join(path + [env.get("PYTHONPATH", "")])
    return env


def probe_torch(env: dict) -> str:
    probe = ("import json, torch; d = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
             "'cuda': d, 'gpu': torch.cuda.get_device_name(0) if d else None, "
             "'bf16': bool(d and torch.cuda.is_bf16_supported())}))")
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    return r.stdout.strip() or r.stderr[-400:]


def download_wheels(dest: Path, *names: str) -> None:
    """Wheels for the GPU image's Python 3.12 (it cannot reach a package index)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(dest), *names], check=True)
