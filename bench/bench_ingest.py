"""Ingest speed: 500 CT instances sent by dcmtk storescu to our node vs to dcmtk storescp, same files, same run.

Run: .venv/bin/python bench/bench_ingest.py [--n 500] [--no-nodelay]
Prints instances/s for both receivers and the ratio (ours / storescp). Needs dcmtk (apt-get install dcmtk).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.store import open_store  # noqa: E402
from dicom_node.config import NodeConfig  # noqa: E402
from dicom_node.scp import StorageNode  # noqa: E402
from tests.dicom_node.conftest import make_study  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(port: int, aec: str, files_dir: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(["storescu", "-aet", "BENCH", "-aec", aec, "+sd", "127.0.0.1", str(port), str(files_dir)],
                       env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"storescu failed: {r.stderr[-500:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--no-nodelay", action="store_true", help="our node without TCP_NODELAY (to measure it)")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk is not installed: apt-get install dcmtk")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = tmp / "files"
        files.mkdir()
        for i, ds in enumerate(make_study(args.n)):
            ds.save_as(files / f"{i:04d}.dcm", enforce_file_format=True)
        # Baseline: dcmtk storescp writing to disk.
        port = free_port()
        (tmp / "scp_out").mkdir()
        scp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(tmp / "scp_out"), str(port)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            t_base = send(port, "STORESCP", files)
        finally:
            scp.terminate()
            scp.wait()
        cfg = NodeConfig(port=0, spool_dir=str(tmp / "spool"), store_url=f"sqlite:///{tmp / 'b.db'}",
                         min_free_bytes=0, max_disk_usage_percent=100.0, tcp_nodelay=not args.no_nodelay)
        node = StorageNode(cfg, open_store(cfg.store_url))
        node.start()
        try:
            t_ours = send(node.port, "TOTALFM", files)
        finally:
            node.stop()
        stored = len(list((tmp / "spool").rglob("*.dcm")))
        if stored != args.n:
            raise SystemExit(f"our node stored {stored} of {args.n}")
    print(f"dcmtk storescp : {args.n / t_base:8.1f} instances/s ({t_base:.2f} s)")
    print(f"totalfm node   : {args.n / t_ours:8.1f} instances/s ({t_ours:.2f} s)"
          f"{' [TCP_NODELAY off]' if args.no_nodelay else ''}")
    print(f"ratio ours/storescp: {t_base / t_ours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
