"""dcmtk's echoscu/storescu (a real third-party peer) against our node."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dicom_node.conftest import db_rows, make_study

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None and os.environ.get("CI") != "true",
                                reason="dcmtk not installed (apt-get install dcmtk)")
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


def test_dcmtk_echo_and_store(node_factory, tmp_path):
    node = node_factory(allowed_calling_aes=("DCMTK",))
    echo = subprocess.run(["echoscu", "-aet", "DCMTK", "-aec", "TOTALFM", "127.0.0.1", str(node.port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    files = []
    for i, ds in enumerate(make_study(4)):
        files.append(tmp_path / f"f{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    store = subprocess.run(["storescu", "-aet", "DCMTK", "-aec", "TOTALFM", "127.0.0.1", str(node.port),
                            *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 4
    # Stored as received: the dataset bytes after the file meta equal what dcmtk sent (storescu keeps the syntax).
    for f in files:
        import pydicom
        uid = pydicom.dcmread(f).SOPInstanceUID
        spooled = next(Path(node.config.spool_dir).rglob(f"{uid}.dcm"))
        assert pydicom.dcmread(spooled).PixelData == pydicom.dcmread(f).PixelData
    rejected = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "TOTALFM", "127.0.0.1", str(node.port)],
                              env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
    assert rejected.returncode != 0
