"""Exception types of ours, with messages a PACS admin can act on.

Every error raised on bad input derives from TotalFMError, so callers (the worker, the DICOM node, the CLI) can catch
one type, log it with its reason and carry on with the next study instead of crashing.
"""


class TotalFMError(Exception):
    """Base class: something about the input or the configuration is wrong; the message says what and how to fix."""


class DicomInputError(TotalFMError):
    """A DICOM file or series cannot become a trustworthy CT volume (unreadable, not CT, broken geometry, ...)."""


class NotCTError(DicomInputError):
    """The series is not an axial CT image series (MR, localizer/scout, secondary capture, SR, ...)."""


class SeriesGeometryError(DicomInputError):
    """Slices do not form a regular volume: missing or duplicated slices, gantry tilt, mixed orientations, ..."""


class NoUsableSeriesError(DicomInputError):
    """A study contains no series that the appliance can analyse; the message lists each series and why."""


class VolumeFormatError(TotalFMError):
    """A NIfTI (or other volume) file is unreadable or has an unusable affine."""


class CropError(TotalFMError):
    """An organ crop cannot be made (label map and volume disagree in geometry, ...)."""


class OntologyError(TotalFMError):
    """An organ or finding name is unknown, or two components disagree about the ontology version."""


class StoreError(TotalFMError):
    """The SQL store cannot be used: bad database URL, server unreachable, schema not migrated, unknown job, ..."""


class LeaseLostError(StoreError):
    """A worker tried to finish a job it no longer holds (its lease expired and another worker took it over, or an
    admin cancelled it); its results are discarded so a study never gets two half-overlapping versions."""


class SegmentationError(TotalFMError):
    """The organ segmenter cannot run: model weights missing or unreadable, or it produced an unusable result."""
