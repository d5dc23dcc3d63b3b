"""`totalfm demo`: the whole appliance on one machine, as a hospital would run it, in one command.

It writes a site config under the demo folder, starts the DICOM node and one analysis worker as separate processes
(exactly the commands systemd runs), starts a stand-in PACS that receives our SR/SEG, writes a synthetic study with
known findings (a real-backed phantom: real CT anatomy with inserted lesions), sends it to the node over DICOM
C-STORE, waits for the analysis and the delivery of the SR/SEG, and prints what the appliance found next to what was
inserted. Everything runs on the default (embedded) model bundle; nothing is downloaded.

Why subprocesses rather than imports: the demo must exercise the real process boundaries (node, worker, database,
spool), and the appliance may not import the trainer (which writes the synthetic study) - it runs its CLI instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DRAFT_LABEL = "AI DRAFT for radiologist review - not a diagnosis"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _totalfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", *args]


def _write_config(work: Path, node_port: int, pacs_port: int, bundle: str | None, llm: str | None) -> Path:
    cfg = work / "totalfm.toml"
    worker = [f'results_dir = "{work / "results"}"']
    if bundle:
        worker.append(f'bundle = "{bundle}"')
    if llm:
        worker.append(f'llm_gguf = "{llm}"')
    cfg.write_text(
        "# Written by `totalfm demo`: a complete site configuration on loopback.\n"
        'ae_titles = ["TOTALFM"]\n'
        'bind_address = "127.0.0.1"\n'
        f"port = {node_port}\n"
        f'spool_dir = "{work / "spool"}"\n'
        f'store_url = "sqlite:///{work / "totalfm.db"}"\n'
        "quiet_seconds = 3.0\n"
        "min_free_bytes = 104857600\n"
        "\n[destinations]\n"
        f'DEMO_PACS = "DEMO_PACS@127.0.0.1:{pacs_port}"\n'
        "\n[worker]\n" + "\n".join(worker) + "\n")
    return cfg


class StandInPACS:
    """A minimal storage SCP that keeps whatever our node sends back (SR, SEG): the demo's 'PACS'."""

    def __init__(self, folder: Path, port: int):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification
        self.folder, self.port, self.received = folder, port, []
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title="DEMO_PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.received.append(path)
        return 0x0000

    def stop(self):
        self._server.shutdown()


def _send_study(folder: Path, port: int) -> int:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    files = sorted(folder.rglob("*.dcm"))
    ae = AE(ae_title="DEMO_CT")
    ts = {dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID}
    ae.add_requested_context(CTImageStorage, list(ts | {"1.2.840.10008.1.2.1"}))
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALFM")
    if not assoc.is_established:
        raise RuntimeError("the DICOM node refused the association")
    sent = 0
    try:
        for f in files:
            status = assoc.send_c_store(dcmread(f))
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"C-STORE of {f.name} failed: {status}")
            sent += 1
    finally:
        assoc.release()
    return sent


def _wait(what: str, check, timeout: float, procs: dict[str, subprocess.Popen]):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        result = check()
        if result:
            return result
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"the {name} process exited (code {p.returncode}) while waiting for {what}; "
                                   f"see its log in the demo folder")
        time.sleep(1.0)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _print_result(result, truth: dict) -> None:
    inserted = sorted({f["finding"] for f in truth.get("findings", [])})
    # a real-backed study also carries the real patient's own findings (trainer.synth.source_findings)
    own = {f["finding"] for f in truth.get("findings", []) if f.get("origin") == "source_patient"}
    print("\n== organs found")
    for o in result.organs:
        if o.volume_ml is not None:
            print(f"  {o.organ:18s} {o.status:18s} {o.volume_ml:9.1f} mL  mean {o.mean_hu:7.1f} HU")
        else:
            print(f"  {o.organ:18s} {o.status}")
    print("\n== findings scored positive (score >= calibrated threshold)")
    positives = [f for f in result.findings if f.positive]
    for f in sorted(positives, key=lambda f: -f.score):
        mark = ("the real patient's own" if f.finding in own else "inserted") if f.finding in inserted \
            else "NOT in the truth (false positive)"
        print(f"  {f.finding:32s} {f.organ:16s} score {f.score:.3f} >= {f.threshold:.3f}   [{mark}]")
    if not positives:
        print("  (none)")
    missed = [n for n in inserted if n not in {f.finding for f in positives}]
    own_note = f" ({', '.join(sorted(own))}: the real patient's own, not painted in)" if own else ""
    print(f"\n== known truth of this synthetic study: {inserted or 'nothing'}{own_note}; "
          f"missed by the model: {missed or 'none'}")
    if result.report is not None:
        print("\n== draft report\n" + result.report.draft_text)


def phantom_kind(data_dir) -> tuple[str, str]:
    """("real-backed", "") when the shared real CT is there, else ("analytic", why): a user who expected real anatomy
    sees at once which folder was looked in."""
    real = Path(data_dir) / "real-ct"
    if real.is_dir():
        return "real-backed", ""
    return "analytic", f"; no real CT under {real.resolve()}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="var/demo", help="work folder (wiped first unless --keep)")
    p.add_argument("--keep", action="store_true", help="do not wipe the work folder first")
    p.add_argument("--bundle", help="model bundle (default: the embedded default bundle)")
    p.add_argument("--llm", help="GGUF for the report draft (default: the embedded SmolLM2)")
    p.add_argument("--seed", type=int, default=4, help="synthetic study seed (4: aortic aneurysm + atherosclerosis)")
    p.add_argument("--data-dir", default=os.environ.get("TOTALFM_SHARED_DATA", "../shared/data"),
                   help="shared real CT data for the real-backed phantom")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)

    work = Path(args.dir).resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    node_port, pacs_port = _free_port(), _free_port()
    cfg = _write_config(work, node_port, pacs_port, args.bundle, args.llm)
    print(f"== demo folder {work}\n   site config {cfg}")

    kind, why = phantom_kind(args.data_dir)
    print(f"== 1/5 writing a synthetic study with known findings ({kind} phantom{why})")
    study_dir = work / "study"
    subprocess.run(_totalfm("synth", "--n", "1", "--kind", kind, "--seed", str(args.seed), "--data-dir",
                            args.data_dir, "--out", str(study_dir)), check=True, stdout=subprocess.DEVNULL)
    study = next(study_dir.glob("study_*"))
    truth = json.loads((study / "truth.json").read_text())

    pacs = StandInPACS(work / "pacs_inbox", pacs_port)
    procs: dict[str, subprocess.Popen] = {}
    logs = []
    try:
        print("== 2/5 starting the DICOM node and one worker (separate processes, as under systemd)")
        subprocess.run(_totalfm("db", "upgrade", "--url", f"sqlite:///{work / 'totalfm.db'}"), check=True,
                       stdout=subprocess.DEVNULL)
        for name, cmd in (("node", _totalfm("node", "--config", str(cfg))),
                          ("worker", _totalfm("worker", "--config", str(cfg)))):
            log = open(work / f"{name}.log", "w")
            logs.append(log)
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait("the node to listen", lambda: _port_open(node_port), 60, procs)

        print("== 3/5 sending the study to the node by DICOM C-STORE")
        n = _send_study(study / "dicom", node_port)
        print(f"   {n} instances stored")

        from appliance.store import open_store
        store = open_store(f"sqlite:///{work / 'totalfm.db'}")
        study_uid = truth.get("study_uid") or _study_uid(study / "dicom")
        print("== 4/5 waiting for the analysis (study assembly -> queue -> worker)")
        t0 = time.monotonic()
        latest = _wait("the analysis", lambda: store.latest_analysis(study_uid), args.timeout, procs)
        analysis_id, version, result = latest
        print(f"   analysed in {time.monotonic() - t0:.0f} s (bundle {result.bundle_id}, backend {result.backend})")
        _print_result(result, truth)

        print("\n== 5/5 waiting for the SR and SEG to reach the stand-in PACS")
        got = _wait("SR/SEG delivery", lambda: {p.name.split("_")[0] for p in pacs.received} >= {"SR", "SEG"}
                    and sorted(set(pacs.received)), 180, procs)
        for path in got:
            print(f"   received {path}")
        print(f"\nAll outputs are an {DRAFT_LABEL}.")
        print(f"Open the admin console on this demo:  totalfm tui --config {cfg}")
        return 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        pacs.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _study_uid(folder: Path) -> str:
    from pydicom import dcmread
    return str(dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
