"""The SQL store and durable work queue shared by the DICOM node, the workers and the admin console."""

from appliance.store.queue import Job
from appliance.store.results import AnalysisResult, FindingResult, OrganResult, ReportDraft, embedding_from_bytes
from appliance.store.store import PHI_SETTING, Store, open_store

__all__ = ["open_store", "Store", "Job", "AnalysisResult", "OrganResult", "FindingResult", "ReportDraft",
           "embedding_from_bytes", "PHI_SETTING"]
