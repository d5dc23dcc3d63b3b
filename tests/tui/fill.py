"""A deterministic appliance database, filled through the store API (the same calls the node and workers make):
three studies (one analysed with findings, draft and deliveries; one whose job failed; one pending), a node and two
worker heartbeats, associations and admin audit events. Timestamps are then pinned to NOW so screens render the same
text every run."""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import update

from appliance.store import AnalysisResult, FindingResult, OrganResult, ReportDraft, open_store
from appliance.store.models import Analysis, AuditEvent, Delivery, Job, NodeStatus, Worker

NOW = dt.datetime(2026, 11, 28, 23, 0, 0)
UID_A = "1.2.826.0.1.3680043.8.498.10001"  # analysed, findings, SR/SEG sent/failed
UID_B = "1.2.826.0.1.3680043.8.498.10002"  # job failed
UID_C = "1.2.826.0.1.3680043.8.498.10003"  # pending
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

DRAFT = ("FINDINGS:\nLiver: Diffuse hypoattenuation, suggestive of hepatic steatosis.\n"
         "Gallbladder: Calcified gallstones.\nAorta: Mild atherosclerotic calcification.\n"
         "IMPRESSION:\n1. Probable hepatic steatosis.\n2. Cholelithiasis.")


def _study(store, uid: str, n: int, minutes_ago: int, accession: str, series_no: int = 2) -> None:
    t = NOW - dt.timedelta(minutes=minutes_ago)
    for i in range(n):
        store.record_instance(study_uid=uid, series_uid=f"{uid}.{series_no}", sop_instance_uid=f"{uid}.{series_no}.{i + 1}",
                              sop_class_uid=CT, transfer_syntax_uid=EXPLICIT_LE, path=f"/spool/{uid}/{i}.dcm",
                              size_bytes=525_000, calling_ae="MODALITY1", modality="CT", accession=accession,
                              study_date="20261128", series_description="ABD PELVIS 2.5mm", series_number=series_no,
                              received_at=t)


def result(series_uid: str) -> AnalysisResult:
    rng = np.random.default_rng(0)
    organs = [OrganResult("liver", "ok", 1612.4, 38.2, 11.5, rng.standard_normal(8)),
              OrganResult("gallbladder", "ok", 31.0, 22.9, 14.1, rng.standard_normal(8)),
              OrganResult("spleen", "ok", 187.3, 49.8, 9.7, rng.standard_normal(8)),
              OrganResult("kidneys", "ok", 342.6, 31.0, 19.4, rng.standard_normal(8)),
              OrganResult("aorta", "partial_in_crop", 96.1, 41.3, 88.2, None),
              OrganResult("lungs", "truncated_by_scan", None, None, None, None)]
    findings = [FindingResult("liver", "hepatic_steatosis", 0.87, 0.55, True),
                FindingResult("gallbladder", "gallstones", 0.71, 0.60, True),
                FindingResult("aorta", "atherosclerosis", 0.58, 0.50, True),
                FindingResult("spleen", "splenomegaly", 0.12, 0.50, False),
                FindingResult("kidneys", "renal_cyst", 0.31, 0.45, False),
                FindingResult("adrenal_glands", "adrenal_nodule", 0.93, 1.01, False)]  # never called by the bundle
    report = ReportDraft(DRAFT, {"sections": 2}, {"llm": "SmolLM2-135M-Instruct Q4_1"})
    return AnalysisResult(organs, findings, report, series_uid, "totalfm-untrained-0001", "cpu (onnxruntime)",
                          {"total_s": 41.2}, {"labels": "/var/lib/totalfm/results/labels.nii.gz"})


def fill(url: str) -> dict:
    store = open_store(url)
    try:
        _study(store, UID_A, 20, 50, "ACC1001")
        _study(store, UID_B, 12, 30, "ACC1002")
        _study(store, UID_C, 8, 2, "ACC1003")
        ja = store.enqueue_analysis(UID_A, reason="new study")
        jb = store.enqueue_analysis(UID_B, reason="new study", max_attempts=1)
        job = store.claim_job("worker-1")
        store.complete_job(job.id, "worker-1", result(f"{UID_A}.2"))
        job = store.claim_job("worker-2")
        store.fail_job(job.id, "worker-2", "Traceback ...\nSeriesError: no axial CT series with >= 16 slices")
        jc = store.enqueue_analysis(UID_C, reason="new study")
        aid = store.latest_analysis(UID_A)[0]
        d_sr = store.enqueue_delivery(aid, destination="pacs", kind="SR")
        d_seg = store.enqueue_delivery(aid, destination="pacs", kind="SEG")
        store.delivery_sent(d_sr)
        store.delivery_max_attempts = 1
        store.delivery_failed(d_seg, "association rejected by PACS (called AE unknown)")
        store.node_heartbeat(ae_title="TOTALFM", host="0.0.0.0", port=11112, active_associations=1)
        store.worker_heartbeat("worker-1", host="ct-ai-01", pid=4242, current_job_id=None)
        store.worker_heartbeat("worker-2", host="ct-ai-01", pid=4243, current_job_id=jc)
        for minutes, n, status in ((50, 20, "ok"), (30, 12, "ok"), (2, 8, "ok"), (1, 0, "rejected")):
            t = NOW - dt.timedelta(minutes=minutes)
            store.record_association(calling_ae="MODALITY1" if n else "UNKNOWN", called_ae="TOTALFM",
                                     peer_host="10.0.0.7", started_at=t, ended_at=t + dt.timedelta(seconds=20),
                                     n_received=n, n_failed=0, status=status,
                                     detail=None if n else "calling AE not allowed")
        store.audit("setting_changed", actor="admin", detail={"key": "privacy.store_patient_identity",
                                                              "value": False})
        with store.session() as s:  # pin every displayed timestamp
            s.execute(update(Analysis).values(created_at=NOW - dt.timedelta(minutes=45)))
            s.execute(update(Job).values(created_at=NOW - dt.timedelta(minutes=40)))
            s.execute(update(Delivery).values(sent_at=NOW - dt.timedelta(minutes=44)).where(Delivery.state == "sent"))
            s.execute(update(NodeStatus).values(last_seen=NOW - dt.timedelta(seconds=4)))
            s.execute(update(Worker).values(last_heartbeat=NOW - dt.timedelta(seconds=3)))
            s.execute(update(Worker).where(Worker.id == "worker-2")
                      .values(last_heartbeat=NOW - dt.timedelta(minutes=10)))
            s.execute(update(AuditEvent).values(at=NOW - dt.timedelta(minutes=20)))
        return {"job_done": ja, "job_failed": jb, "job_pending": jc, "analysis": aid, "delivery_sr": d_sr,
                "delivery_seg": d_seg}
    finally:
        store.close()
