"""Storage SCP: pynetdicom event handlers that spool each instance durably and index it before answering success."""
from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import ssl
import threading
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_RELEASE_RP
from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage, Verification

from dicom_node.config import NodeConfig
from dicom_node.spool import has_room, spool_path, write_atomic

LOG = logging.getLogger("totalfm.node")
_VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
STORED_SOP_CLASSES = (CTImageStorage, EnhancedCTImageStorage)
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StorageNode:
    """Owns the pynetdicom AE and its server; `start()` returns once the port is listening."""

    def __init__(self, config: NodeConfig, store) -> None:
        self.config = config
        self.store = store
        self.spool_root = Path(config.spool_dir)
        self._assocs: dict[int, dict] = {}
        self._lock = threading.Lock()
        self.server = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        c = self.config
        ae = AE(ae_title=c.ae_titles[0])
        ae.maximum_associations = c.max_associations
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = c.acse_timeout, c.dimse_timeout, c.network_timeout
        ae.maximum_pdu_size = c.max_pdu
        # pynetdicom compares the called AE with the acceptor's one title; with several configured, _on_requested sets
        # the acceptor's title to the called one when it is ours, so an unknown one gets a proper A-ASSOCIATE-RJ (0x07).
        ae.require_called_aet = True
        if c.allowed_calling_aes:
            ae.require_calling_aet = list(c.allowed_calling_aes)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for sop in STORED_SOP_CLASSES:
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        if c.accept_other_sop_classes:
            from pynetdicom import StoragePresentationContexts
            for cx in StoragePresentationContexts:
                if cx.abstract_syntax not in STORED_SOP_CLASSES:
                    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return ctx

    def start(self):
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, self._on_conn_open), (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_RELEASED, self._on_end("released")),
            (evt.EVT_ABORTED, self._on_end("aborted")), (evt.EVT_REJECTED, self._on_end("rejected")),
            (evt.EVT_PDU_SENT, self._on_pdu), (evt.EVT_PDU_RECV, self._on_pdu),
        ]
        self.server = self.ae.start_server((self.config.bind_address, self.config.port), block=False,
                                           evt_handlers=handlers, ssl_context=self._ssl_context())
        LOG.info("DICOM node listening on %s:%d as %s", *self.server.server_address[:2], ",".join(self.config.ae_titles))
        return self.server

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def active_associations(self) -> int:
        with self._lock:
            return len(self._assocs)

    def stop(self) -> None:
        """Stop accepting; shutdown() waits for the in-flight associations' threads to finish."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # --- association bookkeeping --------------------------------------------------------------------------------
    def _on_conn_open(self, event) -> None:
        if self.config.tcp_nodelay:
            # Why: small DIMSE PDUs (C-STORE-RSP) wait on Nagle + delayed ACK otherwise, ~40 ms per instance.
            sock = event.assoc.dul.socket.socket
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._assocs[id(event.assoc)] = {"started_at": _now(), "n_received": 0, "n_failed": 0, "status": None,
                                             "host": event.address[0]}

    def _on_requested(self, event) -> None:
        """A-ASSOCIATE-RQ received, before negotiation: answer for the called title if it is ours; refuse a calling AE
        from the wrong host with a proper A-ASSOCIATE-RJ (calling AE not recognised) instead of an abort."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
        if called in self.config.ae_titles:
            assoc.acceptor.ae_title = called
        required_host = self.config.allowed_hosts.get(calling)
        peer = assoc.requestor.address
        if required_host and required_host != peer:
            LOG.warning("rejecting association from %s: host %s is not the configured host for this AE", calling,
                        peer)
            self._info(assoc)["status"] = "host-refused"
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.is_rejected = True
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def _info(self, assoc) -> dict:
        with self._lock:
            return self._assocs.setdefault(id(assoc), {"started_at": _now(), "n_received": 0, "n_failed": 0,
                                                       "status": None, "host": "?"})

    def _on_end(self, status: str):
        def handler(event) -> None:
            self._mark(event.assoc, status)
        return handler

    # The PDU that ends an association, sent or received, and the status it means.
    _ENDING_PDUS = {A_RELEASE_RP: "released", A_ABORT_RQ: "aborted", A_ASSOCIATE_RJ: "rejected"}

    def _on_pdu(self, event) -> None:
        """Why this and not only EVT_RELEASED/EVT_ABORTED: those fire in the association's thread AFTER the response
        has gone out, so a peer that closes the socket at once can make the socket thread (EVT_CONN_CLOSE) write the
        log row first, and a clean release was logged as "closed". PDUs are sent and received in the socket thread
        itself, so the ending PDU is always seen before the close."""
        status = self._ENDING_PDUS.get(type(event.pdu))
        if status:
            self._mark(event.assoc, status)

    def _mark(self, assoc, status: str) -> None:
        """First ending wins (a host refusal set in _on_requested stays). An association already logged is left."""
        with self._lock:
            info = self._assocs.get(id(assoc))
            if info is not None and info["status"] is None:
                info["status"] = status

    def _on_conn_close(self, event) -> None:
        assoc = event.assoc
        with self._lock:
            info = self._assocs.pop(id(assoc), None)
        if info is None:
            return
        calling = (assoc.requestor.ae_title or "").strip() or "?"
        called = (assoc.acceptor.ae_title or "").strip()
        status = info["status"] or ("rejected" if assoc.is_rejected else "closed")
        LOG.info("association %s from %s@%s: %s, %d received, %d failed", status, calling, info["host"], status,
                 info["n_received"], info["n_failed"])
        try:
            self.store.record_association(calling_ae=calling, called_ae=called, peer_host=info["host"],
                                          started_at=info["started_at"], ended_at=_now(),
                                          n_received=info["n_received"], n_failed=info["n_failed"], status=status)
        except Exception:  # the log line above already carries the facts; never kill the server thread
            LOG.exception("could not record the association in the store")

    # --- DIMSE services -----------------------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event):
        info = self._info(event.assoc)
        status = self._store_instance(event)
        code = status if isinstance(status, int) else status[0]
        info["n_received" if code == 0 else "n_failed"] += 1
        if isinstance(status, tuple):
            from pydicom import Dataset
            ds = Dataset()
            ds.Status, ds.ErrorComment = status[0], status[1][:64]
            return ds
        return status

    def _store_instance(self, event):
        sop_class = UID(event.request.AffectedSOPClassUID)
        if sop_class not in STORED_SOP_CLASSES:
            return 0x0000  # accepted-and-ignored by config (else the context would not have been accepted)
        try:
            ds = event.dataset
            for elem in ds.iterall():  # decode every element now: pydicom decodes lazily and defers errors
                _ = elem.value
            study, series, sop = (str(ds.get(k, "") or "").strip()
                                  for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        except Exception as exc:
            LOG.warning("C-STORE refused: dataset could not be decoded (%s)", type(exc).__name__)
            return (CANNOT_UNDERSTAND, "Dataset could not be decoded")
        missing = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                                  ("SOPInstanceUID", sop)) if not v]
        if missing:
            LOG.warning("C-STORE refused: missing %s", ", ".join(missing))
            return (CANNOT_UNDERSTAND + 1, "Missing " + ",".join(missing))
        bad = [n for n, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop))
               if not _VALID_UID.match(v)]
        if bad:
            # Why: a truncated/garbled stream decodes "successfully" into junk UIDs; never file it under them.
            LOG.warning("C-STORE refused: invalid %s (dataset garbled or truncated)", ", ".join(bad))
            return (CANNOT_UNDERSTAND, "Invalid " + ",".join(bad))
        problem = _pixel_data_problem(ds, event.context.transfer_syntax)
        if problem:
            LOG.warning("C-STORE refused: %s", problem)
            return (CANNOT_UNDERSTAND, problem)
        if not has_room(self.spool_root, min_free_bytes=self.config.min_free_bytes,
                        max_usage_percent=self.config.max_disk_usage_percent):
            LOG.error("C-STORE refused: spool disk below reserve/above watermark (out of resources)")
            return (OUT_OF_RESOURCES, "Out of resources: spool disk full")
        path = spool_path(self.spool_root, study, series, sop)
        try:
            # Raw bytes as received (preamble + file meta + dataset), never re-encoded.
            size = write_atomic(path, [event.encoded_dataset(include_meta=True)])
            self.store.record_instance(
                study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=str(sop_class),
                transfer_syntax_uid=str(event.context.transfer_syntax), path=str(path), size_bytes=size,
                calling_ae=event.assoc.requestor.ae_title.strip(), modality=_str(ds, "Modality"),
                accession=_str(ds, "AccessionNumber"), study_date=_str(ds, "StudyDate"),
                series_description=_str(ds, "SeriesDescription"), series_number=_int(ds, "SeriesNumber"),
                patient_name=_str(ds, "PatientName"), patient_id=_str(ds, "PatientID"))
        except Exception as exc:
            LOG.error("C-STORE failed while spooling/indexing: %s", type(exc).__name__)
            return (PROCESSING_FAILURE, f"Storage failure: {type(exc).__name__}")
        return 0x0000


def _pixel_data_problem(ds, transfer_syntax) -> str | None:
    """Why the pixel data cannot be whole, or None. Native syntaxes: the value must hold every frame's bytes (a
    truncated stream otherwise decodes "successfully" into a short image). Encapsulated: the fragments must parse."""
    if "PixelData" not in ds:
        return None
    try:
        data = ds.PixelData
        syntax = UID(str(transfer_syntax))
        if syntax.is_encapsulated:
            from pydicom.encaps import generate_fragments
            if not any(len(f) for f in generate_fragments(data)):
                return "PixelData has no fragments"
            return None
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:
        return f"PixelData cannot be checked ({type(exc).__name__})"
    expected = (rows * cols * spp * frames * bits + 7) // 8
    if len(data) < expected:
        return f"PixelData truncated ({len(data)} of {expected} bytes)"
    return None


def _str(ds, key: str) -> str | None:
    try:
        v = ds.get(key)
        return str(v) if v not in (None, "") else None
    except Exception:
        return None


def _int(ds, key: str) -> int | None:
    try:
        v = ds.get(key)
        return int(v) if v not in (None, "") else None
    except Exception:
        return None
