"""Organ segmentation: the TotalSegmentator adapter and the protocol our own model implements."""
