"""TLS: the node serves DICOM over TLS with a self-signed certificate made by openssl in the test."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from tests.dicom_node.conftest import db_rows, make_study, scu


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_store_over_tls_and_plain_client_fails(node_factory, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    node = node_factory(tls_cert=str(cert), tls_key=str(key))
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = scu()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM", tls_args=(client_ctx, "127.0.0.1"))
    assert assoc.is_established
    assert [assoc.send_c_store(d).Status for d in make_study(2)] == [0, 0]
    assoc.release()
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 2
    ae.acse_timeout = ae.network_timeout = 3
    plain = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert not plain.is_established
