"""The worker end to end: a study recorded in the store (as the DICOM node does) and queued is analysed from its spool
files and stored as one complete result version; a study whose files are gone fails with the reason, retried."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import WorkerConfig
from appliance.store.models import JobState
from appliance.worker_service import make_work, register_input, run_service
from tests.appliance.pipeline_support import REPO_ROOT, dicom_series, pipeline, untrained_bundle  # noqa: F401


def _job_state(store, job_id):
    from appliance.store.models import Job
    with store.read_session() as s:
        j = s.get(Job, job_id)
        return j.state, j.attempts, j.last_error


def test_worker_analyses_a_queued_study(store, store_url, pipeline, dicom_series, tmp_path):
    uid = register_input(store, dicom_series, calling_ae="CT_SCANNER")
    assert store.studies_ready(quiet_seconds=0) == [uid]
    job_id = store.enqueue_analysis(uid, reason="study complete (quiet period)")
    cfg = WorkerConfig(store_url=store_url, results_dir=str(tmp_path / "results"), worker_id="w-test")
    assert run_service(cfg, exit_when_idle=True, pipeline=pipeline) == 1
    assert _job_state(store, job_id)[0] == JobState.DONE
    aid, version, res = store.latest_analysis(uid)
    assert version == 1 and res.bundle_id == pipeline.bundle.bundle_id and res.backend == "onnxruntime-cpu"
    labels = Path(res.artifacts["labels"])
    assert labels.is_file() and labels.parent == tmp_path / "results" / uid / "v1"
    assert res.report.draft_text.startswith("AI DRAFT for radiologist review - not a diagnosis")
    assert res.series_uid  # the store's series UID when the files' own UIDs are empty (de-identified data)


def test_missing_spool_files_fail_the_job_with_the_reason(store, pipeline, tmp_path):
    from appliance.store.worker_loop import run_worker
    from tests.appliance.conftest import add_instance

    add_instance(store, "1.2.3.999", 3)  # paths /spool/... that do not exist
    job_id = store.enqueue_analysis("1.2.3.999", reason="test", max_attempts=1)
    run_worker(store, "w-fail", make_work(store, pipeline, tmp_path), exit_when_idle=True)
    state, attempts, err = _job_state(store, job_id)
    assert state == JobState.FAILED and attempts == 1
    assert "spool files exist" in err and "resend the study" in err
    assert store.latest_analysis("1.2.3.999") is None


def test_worker_process_from_the_site_config(untrained_bundle, dicom_series, tmp_path):
    from appliance.store import open_store

    db = f"sqlite:///{tmp_path / 'site.db'}"
    cfg = tmp_path / "totalfm.toml"
    cfg.write_text(f'store_url = "{db}"\nspool_dir = "{tmp_path / "spool"}"\nport = 11112\n\n[worker]\n'
                   f'bundle = "{untrained_bundle}"\nbackend = "cpu"\nllm_gguf = "off"\nthreads = 1\n'
                   f'results_dir = "{tmp_path / "results"}"\n')
    store = open_store(db)
    uid = register_input(store, dicom_series)
    store.enqueue_analysis(uid, reason="test")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "worker", "--config", str(cfg), "--exit-when-idle"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "backend onnxruntime-cpu" in p.stderr
    assert store.latest_analysis(uid)[1] == 1
    store.close()
