"""One synthetic study from a seed: phantom (analytic or real-backed) -> findings -> noise -> report -> truth.

Reproducibility: study i of a run with seed S draws everything from numpy SeedSequence(S, spawn_key=(i, stream)),
with separate streams for anatomy, the findings plan, CT noise, the report and each finding (keyed by the finding's
place in the catalogue). So studies can be generated in parallel, and the same study generated without a lesion is
the identical base: lesions never consume the random numbers of the anatomy or the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from appliance.errors import OntologyError, TotalFMError
from appliance.ontology import CATEGORY_FINDINGS
from appliance.volume import Volume
from trainer.synth import GENERATOR_VERSION
from trainer.synth.analytic import FULL_TORSO_Z_MM, build_analytic, default_spacing
from trainer.synth.grid import Grid
from trainer.synth.lesions import insert_finding
from trainer.synth.phantom import PHASES, Phantom
from trainer.synth.plan import sample_findings
from trainer.synth.report import Report, write_report

KINDS = ("analytic", "real-backed")
SMALL_SHAPE = (64, 96, 96)  # (z, y, x): a whole torso at ~4 x 4 x 7 mm, cheap enough for unit tests
_STREAM = {"anatomy": 0, "plan": 1, "noise": 2, "report": 3}
_FINDING_INDEX = {f.name: i for i, f in enumerate(CATEGORY_FINDINGS)}


def stream(seed: int, index: int, name: str) -> np.random.Generator:
    key = _STREAM[name] if name in _STREAM else 100 + _FINDING_INDEX[name]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), key)))


@dataclass
class Study:
    image: Volume  # int16 HU
    labels: Volume  # uint8, TotalSegmentator `total` ids
    truth: dict
    report: Report
    phantom: Phantom  # noise-free HU after lesions, for tests and previews


def _add_noise(ph: Phantom, rng: np.random.Generator, sigma_range) -> tuple[np.ndarray, float]:
    """Correlated CT noise (white noise low-passed like a reconstruction kernel), independent of the content."""
    sigma = float(rng.uniform(*sigma_range))
    out = np.empty(ph.hu.shape, dtype=np.int16)
    n = rng.standard_normal(ph.hu.shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0.3, 0.7, 0.7))
    n *= np.float32(sigma / max(float(n[:: max(1, n.shape[0] // 16)].std()), 1e-6))
    n += ph.hu
    np.clip(n, -1024, 3071, out=n)
    np.rint(n, out=n)
    out[...] = n
    return out, sigma


def generate_study(kind: str = "analytic", seed: int = 0, index: int = 0, *, shape=None,
                   spacing=None, findings: list[str] | None = None, normal_fraction: float = 0.3,
                   phrasing: str = "train", data_dir=None, realism: bool = True, source: str | None = None,
                   findings_per_study: tuple[int, int] | None = None) -> Study:
    """Make study ``index`` of the run with ``seed``. ``shape`` is (z, y, x) (analytic default SMALL_SHAPE; real-backed
    default: a random crop of the source at about its spacing). ``findings``: exact list (``[]`` for a
    normal study) instead of sampling. ``findings_per_study=(lo, hi)``: the enriched training plan
    (``plan.sample_findings``). ``realism=False``: no blur, noise or findings (benchmark baseline)."""
    if kind not in KINDS:
        raise TotalFMError(f"unknown phantom kind {kind!r}; use one of {', '.join(KINDS)}")
    plan_rng = stream(seed, index, "plan")
    age = int(plan_rng.integers(25, 90))
    sex = str(plan_rng.choice(["male", "female"]))
    phase = str(plan_rng.choice(PHASES, p=[0.25, 0.2, 0.55]))
    anat = stream(seed, index, "anatomy")
    if shape is not None and (len(tuple(shape)) != 3 or not all(16 <= int(n) <= 1024 for n in shape)):
        raise TotalFMError(f"phantom size must be three numbers between 16 and 1024 voxels, got {tuple(shape)}")
    if spacing is not None and (len(tuple(spacing)) != 3 or not all(0.1 <= float(v) <= 20 for v in spacing)):
        raise TotalFMError(f"voxel spacing must be three numbers between 0.1 and 20 mm, got {tuple(spacing)}")
    if kind == "analytic":
        shape = tuple(int(n) for n in (shape or SMALL_SHAPE))
        sp = tuple(spacing) if spacing is not None else default_spacing(shape)
        fov_z = shape[0] * sp[0]
        cz = FULL_TORSO_Z_MM / 2 if fov_z >= FULL_TORSO_Z_MM - 10 else 190.0
        grid = Grid.centred(shape, sp, (0.0, 0.0, cz + float(anat.uniform(-10, 10))))
        ph = build_analytic(grid, anat, sex=sex, phase=phase, age=age)
        ph.meta["wall_mm"] = 2 + ph.meta["fat_mm"] + 12
        if realism:  # scanner blur (point spread ~1 mm FWHM in plane, slice profile along z)
            sig = [0.45 * max(1.0, 1.2 / sp[0]), 0.45 * max(1.0, 0.9 / sp[1]), 0.45 * max(1.0, 0.9 / sp[2])]
            ph.hu = ndimage.gaussian_filter(ph.hu, sig)
        sigma_range = (8, 20)
    else:
        from trainer.synth.realbacked import build_real_backed
        ph = build_real_backed(anat, data_dir=data_dir, phase=phase, age=age, source=source,
                               shape=shape, spacing=spacing)
        sigma_range = (2, 8)  # the source already has its own noise
    if findings is None:
        names = sample_findings(plan_rng, age=age, sex=ph.sex, normal_fraction=normal_fraction,
                                per_study=findings_per_study) if realism else []
    else:
        names = list(findings)
        unknown = [n for n in names if n not in _FINDING_INDEX]
        if unknown:
            raise OntologyError(f"no insertion method for finding(s) {unknown}; known: appliance.ontology."
                                f"CATEGORY_FINDINGS ({', '.join(sorted(_FINDING_INDEX))})")
    records = [insert_finding(ph, n, stream(seed, index, n)) for n in names]
    if realism:
        hu_i16, sigma = _add_noise(ph, stream(seed, index, "noise"), sigma_range)
    else:
        hu_i16, sigma = np.rint(np.clip(ph.hu, -1024, 3071)).astype(np.int16), 0.0
    inserted = [r for r in records if r["inserted"]]
    # the real source patient's own findings (``source_findings``), unless the same finding was painted in as well
    present = inserted + [r for r in ph.meta.get("source_findings", [])
                          if r["finding"] not in {i["finding"] for i in inserted}]
    truth = {
        "generator_version": GENERATOR_VERSION, "seed": int(seed), "index": int(index), "kind": kind,
        "source": ph.meta.get("source"), "source_patient": ph.meta.get("source_patient"), "sex": ph.sex, "age": ph.age, "phase": ph.phase,
        "normal": not present, "findings": present, "not_inserted": [r for r in records if not r["inserted"]],
        "organ_volumes_ml": ph.organ_volumes_ml(), "noise_sigma_hu": round(sigma, 2),
        "geometry": ph.image_volume().describe() | {"value_range": None},
    }
    report = write_report(truth, stream(seed, index, "report"), phrasing=phrasing)
    truth["phrasing"] = phrasing
    truth["sentences"] = report.sentences
    image = ph.grid.to_volume(hu_i16, source=f"synth-{kind}", synth_seed=[int(seed), int(index)])
    return Study(image, ph.label_volume(), truth, report, ph)
