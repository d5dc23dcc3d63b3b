"""Orthanc (a real PACS) sends a study to our node via its REST API: upload, then /modalities/<name>/store."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.dicom_node.conftest import db_rows, make_study

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None and os.environ.get("CI") != "true",
                                reason="Orthanc not installed (apt-get install orthanc)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None) -> dict | list:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture
def orthanc(tmp_path, node_factory):
    node = node_factory(allowed_calling_aes=("ORTHANC",))
    http_port, dicom_port = _free_port(), _free_port()
    cfg = {"Name": "test", "StorageDirectory": str(tmp_path / "orthanc-db"), "IndexDirectory": str(tmp_path / "orthanc-db"),
           "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "Plugins": [],
           "DicomModalities": {"totalfm": ["TOTALFM", "127.0.0.1", node.port]}}
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    log = open(tmp_path / "orthanc.log", "w")
    proc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    node.orthanc_dicom_port = dicom_port
    try:
        deadline = time.time() + 30
        while True:
            try:
                _http("GET", base + "/system")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("Orthanc did not start: " + (tmp_path / "orthanc.log").read_text()[-2000:])
                time.sleep(0.2)
        yield base, node
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_orthanc_sends_study_to_node(orthanc, tmp_path):
    base, node = orthanc
    study = make_study(5)
    ids = []
    for i, ds in enumerate(study):
        f = tmp_path / f"o{i}.dcm"
        ds.save_as(f, enforce_file_format=True)
        ids.append(_http("POST", base + "/instances", f.read_bytes())["ID"])
    result = _http("POST", base + "/modalities/totalfm/store", json.dumps(ids).encode())
    assert result.get("FailedInstancesCount", 0) == 0
    got = {r[0] for r in db_rows(node.db_path, "select sop_instance_uid from instances")}
    assert got == {ds.SOPInstanceUID for ds in study}


def test_orthanc_receives_our_sr_and_seg(orthanc, tmp_path):
    """Orthanc sends a synthetic study to the node, the analysis completes, our sender C-STOREs the SR and SEG to
    Orthanc; Orthanc's REST API shows both in the same study, referencing the CT series."""
    from dicom_node.config import NodeConfig
    from dicom_node.delivery import ResultSender
    from appliance.store.delivery_queries import delivery_states
    from tests.dicom_node.results_fixtures import make_result, make_synth_study
    base, node = orthanc
    study = make_synth_study(tmp_path / "synth")
    ids = [_http("POST", base + "/instances", f.read_bytes())["ID"] for f in study.files]
    result = _http("POST", base + "/modalities/totalfm/store", json.dumps(ids).encode())
    assert result.get("FailedInstancesCount", 0) == 0
    store = node.store
    store.enqueue_analysis(study.study_uid, reason="test")
    job = store.claim_job("w1")
    store.complete_job(job.id, "w1", make_result(study))
    dicom_port = node.orthanc_dicom_port
    cfg = NodeConfig(**{**node.config.__dict__, "destinations": {"orthanc": f"ORTHANC@127.0.0.1:{dicom_port}"}})
    stats = ResultSender(cfg, store).run_once()
    assert (stats.sent, stats.failed) == (2, 0), delivery_states(store)
    tags = [_http("GET", f"{base}/instances/{i}/simplified-tags") for i in _http("GET", base + "/instances")]
    ours = {t["Modality"]: t for t in tags if t["Modality"] in ("SR", "SEG")}
    assert set(ours) == {"SR", "SEG"}
    assert all(t["StudyInstanceUID"] == study.study_uid for t in ours.values())
    assert ours["SR"]["VerificationFlag"] == "UNVERIFIED"
    assert ours["SEG"]["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == study.series_uid
