"""The contract every organ segmenter fulfils (TotalSegmentator today, our distilled model later)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from appliance.volume import Volume


@runtime_checkable
class OrganSegmenter(Protocol):
    def segment(self, volume: Volume) -> Volume:
        """Label map in TotalSegmentator `total` numbering, on the same grid as `volume`."""
        ...
