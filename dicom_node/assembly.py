"""Study assembly: a study quiet for `quiet_seconds` gets one analysis job. State lives only in SQL (restart-safe)."""
from __future__ import annotations

import logging
import threading

LOG = logging.getLogger("totalfm.node")


def assemble_once(store, quiet_seconds: float, now=None) -> list[str]:
    """Queue a job for each study that went quiet with instances no job covers yet; returns their UIDs.

    Why no memory of our own: Store.studies_ready already excludes studies whose instances a job covers, so a
    restart (or a late instance, which raises the count) gives exactly one new version.
    """
    queued = []
    for study_uid in store.studies_ready(quiet_seconds, now=now):
        store.enqueue_analysis(study_uid, reason="study complete (quiet period)")
        queued.append(study_uid)
        LOG.info("study assembled; analysis queued (%d this round)", len(queued))
    return queued


class AssemblyThread(threading.Thread):
    def __init__(self, store, quiet_seconds: float, poll_seconds: float = 1.0) -> None:
        super().__init__(name="study-assembly", daemon=True)
        self.store, self.quiet_seconds, self.poll_seconds = store, quiet_seconds, poll_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_seconds):
            try:
                assemble_once(self.store, self.quiet_seconds)
            except Exception:
                LOG.exception("study assembly round failed; retrying next round")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
