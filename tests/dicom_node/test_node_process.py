"""Config validation, study assembly, and the node as a real process: SIGKILL mid-study, restart, SIGTERM, echo."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.store import open_store
from dicom_node.assembly import assemble_once
from dicom_node.config import NodeConfigError, load_config, parse_config
from tests.dicom_node.conftest import db_rows, make_ct, make_study, scu

REPO = Path(__file__).resolve().parents[2]


def test_config_defaults_and_errors_name_the_key(tmp_path):
    good = tmp_path / "node.toml"
    good.write_text('ae_titles = ["PACSNODE"]\nport = 4242\nquiet_seconds = 2.5\n[destinations]\npacs = "PACS@10.0.0.1:104"\n')
    cfg = load_config(good)
    assert cfg.ae_titles == ("PACSNODE",) and cfg.port == 4242 and cfg.quiet_seconds == 2.5
    assert cfg.dimse_timeout == 30.0 and cfg.destinations == {"pacs": "PACS@10.0.0.1:104"}
    for bad, key in [({"prot": 1}, "prot"), ({"port": "104"}, "port"), ({"ae_titles": ["X" * 17]}, "ae_titles"),
                     ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.pem"}, "tls_cert"),
                     ({"tcp_nodelay": 1}, "tcp_nodelay"), ({"port": 70000}, "port")]:
        with pytest.raises(NodeConfigError, match=key):
            parse_config(bad)
    site = tmp_path / "site.toml"  # one site file: flat node keys + the worker's table, which the node skips
    site.write_text('port = 4243\n[destinations]\npacs = "PACS@10.0.0.1:104"\n[worker]\nresults_dir = "/x"\n')
    assert load_config(site).port == 4243
    with pytest.raises(NodeConfigError, match="tls_destinations"):
        parse_config({"tls_destinations": ["nope"]})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(NodeConfigError, match="not valid TOML"):
        load_config(broken)


def test_assembly_once_per_quiet_study_and_new_version_for_late_instances(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    ds = make_study(2)
    for d in ds:
        store.record_instance(study_uid=d.StudyInstanceUID, series_uid=d.SeriesInstanceUID,
                              sop_instance_uid=d.SOPInstanceUID, sop_class_uid=d.SOPClassUID,
                              transfer_syntax_uid="1.2.840.10008.1.2.1", path="x", size_bytes=1, calling_ae="S")
    now = dt.datetime.now(dt.timezone.utc)
    assert assemble_once(store, 10, now=now) == []  # not quiet yet
    later = now + dt.timedelta(seconds=11)
    assert assemble_once(store, 10, now=later) == [ds[0].StudyInstanceUID]
    assert assemble_once(store, 10, now=later) == []  # exactly once
    late = make_ct(ds[0].StudyInstanceUID, ds[0].SeriesInstanceUID, 9)
    store.record_instance(study_uid=late.StudyInstanceUID, series_uid=late.SeriesInstanceUID,
                          sop_instance_uid=late.SOPInstanceUID, sop_class_uid=late.SOPClassUID,
                          transfer_syntax_uid="1.2.840.10008.1.2.1", path="y", size_bytes=1, calling_ae="S")
    assert assemble_once(store, 10, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=11)) \
        == [ds[0].StudyInstanceUID]
    assert db_rows(tmp_path / "s.db", "select analysis_version from jobs order by id") == [(1,), (2,)]


def _start_node(cfg: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from dicom_node.cli import main; sys.exit(main(sys.argv[1:]))",
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening port "):
            return proc, int(line.split()[-1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("node did not start")


def _send(port, datasets):
    assoc = scu().associate("127.0.0.1", port, ae_title="TOTALFM")
    statuses = [assoc.send_c_store(d).Status for d in datasets]
    assoc.release()
    return statuses


def test_sigkill_mid_study_restart_assembles_once_and_sigterm_exits_zero(tmp_path):
    db = tmp_path / "node.db"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'port = 0\nspool_dir = "{tmp_path / "spool"}"\nstore_url = "sqlite:///{db}"\n'
                   f'quiet_seconds = 8.0\nassembly_poll_seconds = 0.2\nmin_free_bytes = 0\n'
                   f'max_disk_usage_percent = 100.0\n[destinations]\nself = "TOTALFM@127.0.0.1:1"\n')
    study = make_study(6)
    proc, port = _start_node(cfg)
    try:
        assert _send(port, study[:3]) == [0, 0, 0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc, port = _start_node(cfg)
        assert _send(port, study[3:]) == [0, 0, 0]
        uid = study[0].StudyInstanceUID
        q = "select count(*) from jobs j join studies s on s.id = j.study_id where s.study_uid = ?"
        deadline = time.time() + 30  # quiet 8 s: longer than a restart on a busy host
        while time.time() < deadline and db_rows(db, q, uid)[0][0] == 0:
            time.sleep(0.2)
        time.sleep(1.0)  # further rounds must not queue it again
        assert db_rows(db, q, uid)[0][0] == 1
        assert db_rows(db, "select instances_covered from jobs")[0][0] == 6
        # echo through the CLI against the running node (AE@host:port form)
        echo = subprocess.run([sys.executable, "-c", "import sys; from dicom_node.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", "echo", f"TOTALFM@127.0.0.1:{port}"],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert echo.returncode == 0 and "success" in echo.stdout
        bad = subprocess.run([sys.executable, "-c", "import sys; from dicom_node.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", "--config", str(cfg), "echo", "self"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert bad.returncode == 1 and "failed" in bad.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        out = proc.stdout.read()
        assert "Secret" not in out and "PID-SECRET" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_node_process_delivers_sr_and_seg_after_analysis(tmp_path):
    """The node process as systemd runs it: receive a study, (a worker stand-in completes the analysis through the
    store), the node's sender thread C-STOREs the SR and SEG to the configured destination."""
    import pydicom
    from tests.dicom_node.results_fixtures import StandInPACS, make_result, make_synth_study
    study = make_synth_study(tmp_path / "synth")
    pacs = StandInPACS()
    db = tmp_path / "node.db"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'port = 0\nspool_dir = "{tmp_path / "spool"}"\nstore_url = "sqlite:///{db}"\n'
                   f'quiet_seconds = 1.0\nassembly_poll_seconds = 0.2\ndelivery_poll_seconds = 0.3\n'
                   f'min_free_bytes = 0\nmax_disk_usage_percent = 100.0\n'
                   f'[destinations]\npacs = "PACS@127.0.0.1:{pacs.port}"\n[worker]\nresults_dir = "{tmp_path}"\n')
    proc, port = _start_node(cfg)
    try:
        assert set(_send(port, [pydicom.dcmread(f) for f in study.files])) == {0}
        store = open_store(f"sqlite:///{db}")
        deadline = time.time() + 30
        job = None
        while job is None and time.time() < deadline:
            job = store.claim_job("w1")
            time.sleep(0.2)
        assert job is not None and job.study_uid == study.study_uid
        store.complete_job(job.id, "w1", make_result(study))
        deadline = time.time() + 60
        while len(pacs.received) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert sorted(ds.Modality for ds in pacs.received) == ["SEG", "SR"]
        # The PACS holds the object a moment before the sender records the C-STORE response: wait for the row.
        want = [("SEG", "sent"), ("SR", "sent")]
        rows = db_rows(db, "select kind, state from deliveries order by kind")
        while rows != want and time.time() < deadline:
            time.sleep(0.2)
            rows = db_rows(db, "select kind, state from deliveries order by kind")
        assert rows == want
        assert list((tmp_path / "spool" / "results").rglob("*.dcm"))  # objects kept in the spool's results dir
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pacs.stop()
