"""The storage SCP over real TCP with a real pynetdicom peer and a real SQLite store."""
from __future__ import annotations

import threading
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.dicom_node.conftest import db_rows, make_ct, make_study, scu


def _send(node, datasets, calling="SENDER"):
    assoc = scu(calling).associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    return statuses


def test_echo_and_store_spools_raw_bytes_and_indexes(node_factory):
    node = node_factory()
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert assoc.send_c_echo().Status == 0
    study = make_study(3)
    assert [assoc.send_c_store(ds).Status for ds in study] == [0, 0, 0]
    assoc.release()
    for ds in study:
        files = list(Path(node.config.spool_dir).rglob(f"{ds.SOPInstanceUID}.dcm"))
        assert len(files) == 1
        back = pydicom.dcmread(files[0])
        assert back.StudyInstanceUID == ds.StudyInstanceUID and back.PixelData == ds.PixelData
        assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 3
    assert not list(Path(node.config.spool_dir).rglob(".part-*"))


def test_same_instance_twice_is_stored_once(node_factory):
    node = node_factory()
    ds = make_study(1)[0]
    assert _send(node, [ds, ds]) == [0, 0]
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 1
    assert len(list(Path(node.config.spool_dir).rglob("*.dcm"))) == 1


def test_missing_uid_is_refused_and_nothing_written(node_factory):
    node = node_factory()
    ds = make_study(1)[0]
    del ds.SeriesInstanceUID
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert 0xC000 <= rsp.Status <= 0xCFFF
    assert "SeriesInstanceUID" in rsp.ErrorComment
    assert not list(Path(node.config.spool_dir).rglob("*.dcm"))
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 0


def test_malformed_dataset_is_refused(node_factory, tmp_path, monkeypatch):
    import pynetdicom._config
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    node = node_factory()
    good = make_study(1)[0]
    path = tmp_path / "bad.dcm"
    good.save_as(path, enforce_file_format=True)
    raw = bytearray(path.read_bytes())
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    # Stream cut inside the StudyInstanceUID value and followed by junk: pydicom decodes it leniently into a
    # garbage UID, which must be refused rather than filed.
    at = raw.index(good.StudyInstanceUID.encode(), meta_end) + 10
    raw[at:] = bytes.fromhex("e07f1000" "4f420000" "f0ffff7f") + b"abc"
    path.write_bytes(bytes(raw))
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    rsp = assoc.send_c_store(path)
    assoc.release()
    assert 0xC000 <= rsp.Status <= 0xCFFF and "UID" in rsp.ErrorComment
    assert not list(Path(node.config.spool_dir).rglob("*.dcm"))
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 0


def test_non_image_sop_class_rejected_or_ignored(node_factory):
    sr_class = "1.2.840.10008.5.1.4.1.1.88.22"
    ds = make_study(1)[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sr_class
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(sr_class, "1.2.840.10008.1.2.1")
    node = node_factory()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert not assoc.is_established  # no acceptable presentation context
    node2 = node_factory(accept_other_sop_classes=True, spool_dir=node.config.spool_dir + "2")
    assoc = ae.associate("127.0.0.1", node2.port, ae_title="TOTALFM")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert not list(Path(node2.config.spool_dir).rglob("*.dcm"))


def test_unknown_calling_ae_rejected_with_reason(node_factory):
    node = node_factory(allowed_calling_aes=("MODALITY1",))
    assoc = scu("STRANGER").associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert _send(node, make_study(1), calling="MODALITY1") == [0]
    assoc = scu("MODALITY1").associate("127.0.0.1", node.port, ae_title="WRONGAE")
    assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x07


def test_disk_reserve_answers_out_of_resources(node_factory):
    node = node_factory(min_free_bytes=1 << 62)
    assert _send(node, make_study(2)) == [0xA700, 0xA700]
    assert not list(Path(node.config.spool_dir).rglob("*.dcm"))
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 0


def test_association_logged_without_patient_names(node_factory, caplog):
    caplog.set_level("INFO")
    node = node_factory()
    _send(node, make_study(2))
    import time
    for _ in range(50):
        rows = db_rows(node.db_path, "select calling_ae, n_received, n_failed, status from associations")
        if rows:
            break
        time.sleep(0.1)
    assert rows == [("SENDER", 2, 0, "released")]
    assert "Secret" not in caplog.text and "PID-SECRET" not in caplog.text


def test_release_is_logged_as_released_when_the_close_comes_first(node_factory, monkeypatch):
    """pynetdicom fires EVT_RELEASED in the association thread after the A-RELEASE-RP has gone out; the peer may
    close the socket before that, and the socket thread logs the association. Force that order: the release
    notification is delayed until the row is written. It must still say "released" (it said "closed")."""
    from dicom_node.scp import StorageNode
    original = StorageNode._on_end

    def late_end(self, status):
        handler = original(self, status)

        def slow(event):
            for _ in range(50):  # until the close has been logged (at most 5 s)
                if db_rows(node.db_path, "select count(*) from associations")[0][0]:
                    break
                time.sleep(0.1)
            handler(event)
        return slow

    import time
    monkeypatch.setattr(StorageNode, "_on_end", late_end)
    node = node_factory()
    assert _send(node, make_study(1)) == [0]
    for _ in range(50):
        rows = db_rows(node.db_path, "select status from associations")
        if rows:
            break
        time.sleep(0.1)
    assert rows == [("released",)]


def test_aborted_and_concurrent_senders_lose_nothing(node_factory):
    node = node_factory(max_associations=16)
    acked: list[str] = []
    lock = threading.Lock()

    problems: list[str] = []

    def sender(k: int) -> None:
        study = make_study(6)
        ae = scu(f"S{k}")
        # Generous timeouts: on a shared, loaded host 8 writers' fsyncs can queue for seconds; a timeout here would be
        # the test's, not a loss (what was acknowledged is still checked below).
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM")
        if not assoc.is_established:
            problems.append(f"S{k}: association not established")
            return
        for i, ds in enumerate(study):
            if k == 0 and i == 3:
                assoc.abort()  # mid-study abort: what was acknowledged must survive
                return
            rsp = assoc.send_c_store(ds)
            if getattr(rsp, "Status", None) == 0:
                with lock:
                    acked.append(ds.SOPInstanceUID)
            else:
                problems.append(f"S{k} #{i}: status {getattr(rsp, 'Status', None)} {getattr(rsp, 'ErrorComment', '')}")
        assoc.release()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(acked) == 3 + 7 * 6, problems
    indexed = {r[0] for r in db_rows(node.db_path, "select sop_instance_uid from instances")}
    assert set(acked) <= indexed
    for sop in acked:
        assert len(list(Path(node.config.spool_dir).rglob(f"{sop}.dcm"))) == 1


def test_garbled_uid_is_refused_not_filed(node_factory):
    node = node_factory()
    ds = make_study(1)[0]
    ds.StudyInstanceUID = "1.2.840.x/../../etc"
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert 0xC000 <= rsp.Status <= 0xCFFF and "Invalid StudyInstanceUID" in rsp.ErrorComment
    assert not list(Path(node.config.spool_dir).rglob("*.dcm"))


def test_several_ae_titles_answer_and_others_are_refused(node_factory):
    node = node_factory(ae_titles=("TOTALFM", "TOTALFM2"))
    ae = scu()
    ok = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM2")
    assert ok.is_established and ok.send_c_store(make_study(1)[0]).Status == 0
    ok.release()
    bad = ae.associate("127.0.0.1", node.port, ae_title="NOTOURS")
    # A proper A-ASSOCIATE-RJ: rejected-permanent, service user, called AE title not recognised.
    assert bad.is_rejected
    rj = bad.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 1
    import time
    for _ in range(50):
        called = {r[0] for r in db_rows(node.db_path, "select called_ae from associations")}
        if "TOTALFM2" in called:
            break
        time.sleep(0.1)
    assert "TOTALFM2" in called  # the audit names the title that was called


def test_wrong_host_for_calling_ae_is_rejected_not_aborted(node_factory):
    node = node_factory(allowed_hosts={"SENDER": "10.9.9.9"})
    assoc = scu("SENDER").associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x03
    assert _send(node, make_study(1), calling="OTHER") == [0]


def test_truncated_pixel_data_is_refused(node_factory):
    node = node_factory()
    ds = make_study(1)[0]
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a stream cut short inside the pixel data
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert 0xC000 <= rsp.Status <= 0xCFFF and "truncated" in rsp.ErrorComment
    assert not list(Path(node.config.spool_dir).rglob("*.dcm"))
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 0
