"""Read side of a pair dataset (what the model trainers code against).

    ds = PairDataset("DATASET")
    for row in ds.crops(organ="liver", split="train"):          # crop rows (crop_id, study_key, organ, status, ...)
        image, mask = ds.load_crop(row["crop_id"])              # float32 [d,h,w] windowed 0..1, uint8 [d,h,w]
    ds.pairs(split="train")                                     # crop <-> sentence pairs (positive | normal)
    ds.query(organ="liver", finding="hepatic_steatosis", polarity="positive")

Rows are sqlite3.Row (index by name, or dict(row)). Images are stored float16; load_crop returns float32.
"""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import numpy as np

from appliance.errors import TotalFMError
from trainer.pairs.index import connect

USABLE = ("ok", "partial_in_crop", "truncated_by_scan")  # crop statuses that have an image stored


class PairDataset:
    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.con: sqlite3.Connection = connect(self.root / "index.sqlite")
        self._npz_cache: tuple[str, dict] | None = None

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- studies
    def studies(self, split: str | None = None, status: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT study_key, patient, kind, seed, split, status, reason, duplicate_of, n_crops, n_sentences," \
              " n_pairs, truth, path FROM studies WHERE 1=1"
        sql, args = _filtered(sql, (("split", split), ("status", status)))
        return self.con.execute(sql + " ORDER BY study_key", args).fetchall()

    # ---- crops
    def crops(self, organ: str | None = None, split: str | None = None, status: str | tuple | None = "ok"
              ) -> list[sqlite3.Row]:
        """Crop rows; ``status``: one status, a tuple of statuses (e.g. USABLE), or None for every row (absent and
        too_small rows have no image)."""
        sql = ("SELECT c.crop_id, c.study_key, c.organ, c.status, c.reason, c.volume_ml, c.voxel_count, c.shape,"
               " c.spacing, c.stored, s.split, s.patient, s.kind FROM crops c JOIN studies s USING(study_key)"
               " WHERE s.status='ok'")
        sql, args = _filtered(sql, (("c.organ", organ), ("s.split", split)), status=status)
        return self.con.execute(sql + " ORDER BY c.study_key, c.organ", args).fetchall()

    def load_crop(self, crop_id: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.con.execute("SELECT study_key, organ, stored FROM crops WHERE crop_id=?", (int(crop_id),)).fetchone()
        if row is None:
            raise KeyError(f"no crop {crop_id} in {self.root}")
        if not row["stored"]:
            raise KeyError(f"crop {crop_id} ({row['study_key']}/{row['organ']}) has no image (organ absent or too small)")
        key = row["study_key"]
        if self._npz_cache is None or self._npz_cache[0] != key:
            try:
                with np.load(self.npz_path(key)) as z:
                    self._npz_cache = (key, {k: z[k] for k in z.files})
            except (OSError, ValueError, zipfile.BadZipFile) as exc:  # missing, truncated or overwritten file
                raise TotalFMError(f"{self.npz_path(key)}: the crops of study {key} cannot be read ({exc}); the index "
                                   "lists them, so the file was damaged or removed after build-pairs wrote it: "
                                   "restore it, or build the dataset again") from None
        arrays = self._npz_cache[1]
        return arrays[f"{row['organ']}/image"].astype(np.float32), arrays[f"{row['organ']}/mask"].astype(np.uint8)

    def npz_path(self, study_key: str) -> Path:
        return self.root / "crops" / f"{study_key}.npz"

    # ---- sentences and pairs
    def sentences(self, study_key: str | None = None, organ: str | None = None, polarity: str | None = None,
                  finding: str | None = None) -> list[sqlite3.Row]:
        sql = ("SELECT t.sentence_id, t.study_key, t.idx, t.text, t.section, t.organ, t.polarity, t.finding, t.phase,"
               " t.hedged, t.synthetic, s.split FROM sentences t JOIN studies s USING(study_key) WHERE s.status='ok'")
        sql, args = _filtered(sql, (("t.study_key", study_key), ("t.organ", organ), ("t.polarity", polarity),
                                    ("t.finding", finding)))
        return self.con.execute(sql + " ORDER BY t.study_key, t.idx", args).fetchall()

    def pairs(self, split: str | None = None, organ: str | None = None, kind: str | None = None
              ) -> list[sqlite3.Row]:
        """Crop/sentence training pairs: kind 'positive' (a positive sentence about the organ) or 'normal' (a normal
        statement about an organ with no positive sentence; synthetic=1 when made from the ontology)."""
        sql = ("SELECT p.pair_id, p.kind, c.crop_id, c.study_key, c.organ, c.status AS crop_status, t.sentence_id,"
               " t.text, t.polarity, t.finding, t.synthetic, s.split FROM pairs p JOIN crops c USING(crop_id)"
               " JOIN sentences t USING(sentence_id) JOIN studies s ON s.study_key=c.study_key WHERE s.status='ok'")
        sql, args = _filtered(sql, (("s.split", split), ("c.organ", organ), ("p.kind", kind)))
        return self.con.execute(sql + " ORDER BY c.study_key, c.organ, t.idx", args).fetchall()

    def organ_labels(self, study_key: str) -> dict[str, dict]:
        """{organ: {"abnormal": bool, "findings": [names], "source": "truth"|"report"}} for every ontology organ."""
        rows = self.con.execute("SELECT organ, abnormal, findings, source FROM labels WHERE study_key=?",
                                (study_key,)).fetchall()
        return {r["organ"]: {"abnormal": bool(r["abnormal"]), "findings": json.loads(r["findings"]),
                             "source": r["source"]} for r in rows}

    def query(self, organ: str | None = None, finding: str | None = None, polarity: str | None = None,
              split: str | None = None, status: str | tuple | None = USABLE) -> list[sqlite3.Row]:
        """Crops joined with the sentences of the same study about the same organ, filtered: e.g. every liver crop
        with a positive hepatic_steatosis sentence."""
        sql = ("SELECT c.crop_id, c.study_key, c.organ, c.status AS crop_status, c.volume_ml, t.sentence_id, t.text,"
               " t.polarity, t.finding, t.synthetic, s.split FROM crops c JOIN studies s USING(study_key)"
               " JOIN sentences t ON t.study_key=c.study_key AND t.organ=c.organ WHERE s.status='ok' AND c.stored=1")
        sql, args = _filtered(sql, (("c.organ", organ), ("t.finding", finding), ("t.polarity", polarity),
                                    ("s.split", split)), status=status)
        return self.con.execute(sql + " ORDER BY c.study_key, c.organ, t.idx", args).fetchall()

    def log(self, study_key: str | None = None) -> list[sqlite3.Row]:
        sql, args = "SELECT run_id, ts, study_key, level, message FROM log", []
        if study_key is not None:
            sql, args = sql + " WHERE study_key=?", [study_key]
        return self.con.execute(sql + " ORDER BY log_id", args).fetchall()

    def summary(self) -> dict:
        one = lambda q: self.con.execute(q).fetchone()[0]  # noqa: E731
        return {
            "studies": one("SELECT COUNT(*) FROM studies"),
            "studies_by_status": dict(self.con.execute("SELECT status, COUNT(*) FROM studies GROUP BY status")
                                      .fetchall()),
            "studies_by_split": dict(self.con.execute("SELECT split, COUNT(*) FROM studies WHERE status='ok'"
                                                      " GROUP BY split").fetchall()),
            "crops_stored": one("SELECT COUNT(*) FROM crops WHERE stored=1"),
            "sentences": one("SELECT COUNT(*) FROM sentences"),
            "pairs_by_kind": dict(self.con.execute("SELECT kind, COUNT(*) FROM pairs GROUP BY kind").fetchall()),
        }


def _filtered(sql: str, equals, *, status: str | tuple | None = None) -> tuple[str, list]:
    """Append ``AND col=?`` for every (col, value) whose value is not None, and ``AND c.status IN (...)`` for a crop
    status or tuple of statuses; the query must already have a WHERE clause."""
    args: list = []
    for col, val in equals:
        if val is not None:
            sql += f" AND {col}=?"
            args.append(val)
    if status is not None:
        sts = (status,) if isinstance(status, str) else tuple(status)
        sql += f" AND c.status IN ({','.join('?' * len(sts))})"
        args += list(sts)
    return sql, args
