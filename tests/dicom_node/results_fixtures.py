"""A small synthetic study on disk (DICOM series + organ label map) and a hand-made AnalysisResult for it, plus a
stand-in PACS (pynetdicom storage SCP) that keeps what our sender delivers."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from appliance.crops import organ_index_map
from appliance.measure import measure_organs
from appliance.nifti_io import write_nifti
from appliance.store.results import AnalysisResult, FindingResult, OrganResult, ReportDraft
from appliance.volume import Volume

DRAFT = "FINDINGS:\nLiver: mild steatosis.\nAI draft for radiologist review - not a diagnosis"


@dataclass
class SynthStudy:
    files: list[Path]
    labels_path: Path
    organ_map: np.ndarray  # (z, y, x) organ label space, same grid as the CT
    measurements: dict
    study_uid: str
    series_uid: str


def make_synth_study(folder: Path, seed: int = 2001) -> SynthStudy:
    from appliance.dicom_write import write_ct_series
    from trainer.synth.study import generate_study
    s = generate_study("analytic", seed=seed, index=0, shape=(16, 48, 48))
    files = write_ct_series(s.image, folder / "dicom")
    om = organ_index_map(s.labels)
    labels_path = folder / "labels.nii.gz"
    write_nifti(Volume(om, s.labels.spacing, s.labels.origin, s.labels.direction), labels_path)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return SynthStudy(list(files), labels_path, om, measure_organs(s.image, s.labels), first.StudyInstanceUID,
                      first.SeriesInstanceUID)


def make_result(study: SynthStudy, labels_path: Path | None = None) -> AnalysisResult:
    organs = [OrganResult(k, "ok", m.volume_ml, m.mean_hu, m.std_hu) for k, m in study.measurements.items()]
    findings = [FindingResult("liver", "hepatic_steatosis", 0.81, 0.5, True),
                FindingResult("kidneys", "kidneys_abnormal", 0.12, 0.5, False)]
    return AnalysisResult(organs, findings, ReportDraft(DRAFT), study.series_uid, "bundle-test-1", "cpu",
                          {"total": 1.0}, {"labels": str(labels_path or study.labels_path)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInPACS:
    def __init__(self, port: int = 0, ae_title: str = "PACS", ssl_context=None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def stop(self):
        self.server.shutdown()
