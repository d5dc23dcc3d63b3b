from __future__ import annotations

from collections import namedtuple

import pytest

from appliance.store import open_store
from tests.tui.fill import NOW, fill

DU = namedtuple("DU", "total used free")
FIXED_DISK = DU(500 << 30, 210 << 30, 290 << 30)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/totalfm.db"
    ids = fill(url)
    (tmp_path / "spool").mkdir()
    return url, ids, tmp_path


@pytest.fixture
def site_config(db):
    url, _, tmp = db
    p = tmp / "totalfm.toml"
    p.write_text(f'store_url = "{url}"\nspool_dir = "{tmp / "spool"}"\nport = 11112\n'
                 f'ae_titles = ["TOTALFM"]\n\n[destinations]\npacs = "PACS@127.0.0.1:1"\n\n'
                 f'[worker]\nllm_gguf = "off"\n')
    return p


@pytest.fixture
def make_app(db, site_config):
    from tui.cli import build_app
    made = []

    def _make(config=True, **kw):
        url = db[0]
        kw.setdefault("now", lambda: NOW)
        kw.setdefault("disk_usage", lambda p: FIXED_DISK)
        kw.setdefault("actor", "dr.test")
        kw.setdefault("refresh_seconds", 0.5)
        app = build_app(config=str(site_config), **kw) if config else build_app(db=url, **kw)
        made.append(app)
        return app

    yield _make
    for app in made:
        app.store.close()


@pytest.fixture
def store(db):
    s = open_store(db[0], migrate_schema=False)
    yield s
    s.close()
