"""Results back to PACS: plan SR/SEG deliveries for every analysis and destination, build the objects once, send them
by C-STORE, retry with backoff. All state is in the store (deliveries table) and the results dir, so a restart
resumes where it stopped; an object is written once (atomically) and re-sent with the same SOPInstanceUID.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom

from appliance.store.delivery_queries import AnalysisSource, analysis_result, analysis_source, plan_deliveries
from dicom_node.config import NodeConfig, results_dir
from dicom_node.spool import sanitise_uid, write_atomic

LOG = logging.getLogger("totalfm.node.delivery")


class DeliveryError(Exception):
    """An SR/SEG could not be built or sent; the message is stored as the delivery's last_error."""


def _nodelay(event) -> None:
    # Why: the C-STORE-RQ's last small PDU and the peer's RSP otherwise wait on Nagle + delayed ACK.
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_args(config: NodeConfig, dest: str, host: str):
    """(ssl context, server hostname) for a destination listed in tls_destinations, else None."""
    if dest not in config.tls_destinations:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca_file)
    return ctx, host


def associate(config: NodeConfig, dest: str, contexts: list[str]):
    """Open an association to a configured destination (name or AE@host:port), TLS if configured, TCP_NODELAY."""
    from pynetdicom import AE, evt
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from dicom_node.cli import parse_destination
    ae_title, host, port = parse_destination(dest, config)
    ae = AE(ae_title=config.ae_titles[0])
    ae.acse_timeout = ae.network_timeout = min(config.acse_timeout, 30)
    ae.dimse_timeout = config.dimse_timeout
    for uid in contexts:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_CONN_OPEN, _nodelay)] if config.tcp_nodelay else []
    return ae.associate(host, port, ae_title=ae_title, tls_args=tls_args(config, dest, host),
                        evt_handlers=handlers), f"{ae_title}@{host}:{port}"


def send_file(config: NodeConfig, dest: str, path: Path) -> None:
    ds = pydicom.dcmread(path)
    assoc, where = associate(config, dest, [ds.SOPClassUID])
    if not assoc.is_established:
        raise DeliveryError(f"association with {where} failed (rejected, aborted or unreachable)")
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    status = getattr(rsp, "Status", None)
    if status is None:
        raise DeliveryError(f"no C-STORE response from {where} (timeout or abort)")
    if status not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or warnings the PACS accepted the object with
        comment = getattr(rsp, "ErrorComment", "") or ""
        raise DeliveryError(f"C-STORE to {where} failed with status 0x{status:04X} {comment}".strip())


@dataclass
class RoundStats:
    planned: int = 0
    sent: int = 0
    failed: int = 0


class ResultSender:
    def __init__(self, config: NodeConfig, store) -> None:
        self.config, self.store = config, store
        self.root = results_dir(config)
        store.delivery_retry_base_seconds = config.delivery_retry_base_seconds
        store.delivery_max_attempts = config.delivery_max_attempts

    def object_path(self, src: AnalysisSource, kind: str) -> Path:
        return self.root / sanitise_uid(src.study_uid) / f"analysis-{src.analysis_id}" / f"{kind}.dcm"

    def build(self, analysis_id: int, kind: str) -> Path:
        """The object's file, built on first use (so its UIDs stay the same for every destination and retry)."""
        src = analysis_source(self.store, analysis_id)
        if src is None:
            raise DeliveryError(f"analysis {analysis_id} no longer exists")
        path = self.object_path(src, kind)
        if path.is_file():
            return path
        if not src.instance_paths:
            raise DeliveryError(f"no spooled instances of series for analysis {analysis_id}")
        try:
            source = [pydicom.dcmread(p, stop_before_pixels=True) for p in src.instance_paths]
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise DeliveryError(f"source instances unreadable: {exc}") from exc
        if kind == "SR":
            from dicom_node.sr import build_sr
            result = analysis_result(self.store, analysis_id)
            if result is None:
                raise DeliveryError(f"analysis {analysis_id} no longer exists")
            segmentation = None
            try:  # the SR's organ groups reference the segments of the SEG sent with it (built once, same UIDs)
                segmentation = pydicom.dcmread(self.build(analysis_id, "SEG"))
            except DeliveryError as exc:
                LOG.warning("SR of analysis %d without segment references: %s", analysis_id, exc)
            ds = build_sr(result, source, segmentation=segmentation)
        elif kind == "SEG":
            from dicom_node.seg import SegError, build_seg
            labels = src.artifacts.get("labels")
            if not labels or not Path(labels).is_file():
                raise DeliveryError(f"analysis {analysis_id} has no label map file (artifacts['labels']={labels!r})")
            try:
                ds = build_seg(labels, source, bundle_id=src.bundle_id)
            except SegError as exc:
                raise DeliveryError(f"SEG not possible: {exc}") from exc
        else:
            raise DeliveryError(f"unknown delivery kind {kind!r}")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_atomic(path, [buf.getvalue()])
        LOG.info("%s written for analysis %d", kind, analysis_id)
        return path

    def run_once(self) -> RoundStats:
        stats = RoundStats()
        age = self.config.delivery_max_age_hours
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=age) if age else None
        stats.planned = len(plan_deliveries(self.store, sorted(self.config.destinations), since=since))
        for d in self.store.due_deliveries():
            try:
                path = self.build(d.analysis_id, d.kind)
                send_file(self.config, d.destination, path)
            except Exception as exc:  # noqa: BLE001 - any failure is retried later; the message is kept
                msg = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
                LOG.warning("delivery %d (%s to %s) failed: %s", d.id, d.kind, d.destination, msg)
                self.store.delivery_failed(d.id, msg)
                stats.failed += 1
            else:
                self.store.delivery_sent(d.id)
                LOG.info("delivery %d: %s of analysis %d sent to %s", d.id, d.kind, d.analysis_id, d.destination)
                stats.sent += 1
        return stats


class SenderThread(threading.Thread):
    def __init__(self, config: NodeConfig, store) -> None:
        super().__init__(name="result-sender", daemon=True)
        self.sender = ResultSender(config, store)
        self.poll_seconds = config.delivery_poll_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_seconds):
            try:
                self.sender.run_once()
            except Exception:
                LOG.exception("result delivery round failed; retrying next round")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)
