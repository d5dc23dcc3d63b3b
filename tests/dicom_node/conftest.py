"""Fixtures: a real node on a free loopback port over a real SQLite store, and small CT instances made with pydicom."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from appliance.store import open_store
from dicom_node.config import NodeConfig
from dicom_node.scp import StorageNode


def make_ct(study: str, series: str, index: int, *, sop: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Secret^Patient", "PID-SECRET"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.arange(64 * 64, dtype=np.int16) + index).tobytes()
    return ds


def make_study(n: int) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [make_ct(study, series, i) for i in range(n)]


def scu(calling: str = "SENDER") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae


def db_rows(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@pytest.fixture
def node_factory(tmp_path):
    started = []

    def start(**overrides) -> StorageNode:
        db = tmp_path / "node.db"
        cfg = NodeConfig(**{"port": 0, "spool_dir": str(tmp_path / "spool"), "store_url": f"sqlite:///{db}",
                            "min_free_bytes": 0, "max_disk_usage_percent": 100.0, "ae_titles": ("TOTALFM",),
                            **overrides})
        node = StorageNode(cfg, open_store(cfg.store_url))
        node.start()
        node.db_path = db
        started.append(node)
        return node

    yield start
    for n in started:
        n.stop()
