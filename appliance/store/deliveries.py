"""Persistent retry queue of DICOM objects (SR, SEG) the node sends back to PACS.

Why no leases here (unlike jobs): one sender loop in the DICOM node drains this queue; a send is short and idempotent
on the PACS side (same SOPInstanceUID), so a crash at worst re-sends an object.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from appliance.errors import StoreError
from appliance.store.models import Analysis, Delivery, Study, as_naive_utc, utcnow

DELIVERY_KINDS = ("SR", "SEG")


@dataclass(frozen=True)
class DueDelivery:
    id: int
    analysis_id: int
    study_uid: str
    destination: str
    kind: str
    attempts: int


class DeliveryMixin:
    delivery_max_attempts: int = 10
    delivery_retry_base_seconds: float = 60.0
    delivery_retry_max_seconds: float = 6 * 3600.0

    def enqueue_delivery(self, analysis_id: int, *, destination: str, kind: str) -> int:
        """Queue one object for one destination; idempotent: the same (analysis, destination, kind) again returns
        the existing delivery's id (the database decides, so two planners racing cannot queue it twice)."""
        if kind not in DELIVERY_KINDS:
            raise StoreError(f"delivery kind {kind!r} is unknown; use one of {', '.join(DELIVERY_KINDS)}")
        now = utcnow()
        with self.session() as s:
            if s.get(Analysis, analysis_id) is None:
                raise StoreError(f"analysis {analysis_id} does not exist; nothing to send")
            s.execute(self._insert(Delivery).values(
                analysis_id=analysis_id, destination=destination, kind=kind, state="pending", attempts=0,
                next_try_at=now, created_at=now,
            ).on_conflict_do_nothing(index_elements=["analysis_id", "destination", "kind"]))
            return s.scalar(select(Delivery.id).where(Delivery.analysis_id == analysis_id,
                                                      Delivery.destination == destination, Delivery.kind == kind))

    def due_deliveries(self, *, now: dt.datetime | None = None, limit: int = 50) -> list[DueDelivery]:
        now = as_naive_utc(now) if now else utcnow()
        q = (select(Delivery, Study.study_uid).join(Analysis, Analysis.id == Delivery.analysis_id)
             .join(Study, Study.id == Analysis.study_id)
             .where(Delivery.state == "pending", Delivery.next_try_at <= now)
             .order_by(Delivery.next_try_at, Delivery.id).limit(limit))
        with self.read_session() as s:
            return [DueDelivery(d.id, d.analysis_id, uid, d.destination, d.kind, d.attempts) for d, uid in s.execute(q)]

    def delivery_sent(self, delivery_id: int) -> None:
        with self.session() as s:
            d = self._delivery(s, delivery_id)
            d.state, d.sent_at, d.attempts = "sent", utcnow(), d.attempts + 1

    def delivery_failed(self, delivery_id: int, error: str, *, now: dt.datetime | None = None) -> None:
        """Try again later with exponential backoff; give up (state failed, error kept) after the last attempt."""
        now = as_naive_utc(now) if now else utcnow()
        with self.session() as s:
            d = self._delivery(s, delivery_id)
            d.attempts += 1
            d.last_error = error[:4000]
            if d.attempts >= self.delivery_max_attempts:
                d.state = "failed"
            else:
                delay = min(self.delivery_retry_base_seconds * 2 ** (d.attempts - 1), self.delivery_retry_max_seconds)
                d.next_try_at = now + dt.timedelta(seconds=delay)

    def resend_delivery(self, delivery_id: int, *, actor: str) -> None:
        """Admin action: send a failed (or sent) object again now."""
        with self.session() as s:
            d = self._delivery(s, delivery_id)
            d.state, d.attempts, d.next_try_at = "pending", 0, utcnow()
            self._audit(s, "delivery_resend", actor=actor, detail={"delivery_id": delivery_id})

    @staticmethod
    def _delivery(s, delivery_id: int) -> Delivery:
        d = s.get(Delivery, delivery_id)
        if d is None:
            raise StoreError(f"delivery {delivery_id} does not exist")
        return d
