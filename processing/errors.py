"""Typed errors shared by the whole of revwatch.

Every error names what was wrong (the file, the parameter, the value) so that a
user reading a log line at 3 a.m. knows what to fix.
"""

__all__ = [
    "RevwatchError",
    "SliceReadError",
    "SliceShapeError",
    "CalibrationError",
]


class RevwatchError(Exception):
    """Base class of every error raised on purpose by revwatch."""


class SliceReadError(RevwatchError, ValueError):
    """A slice file cannot be read: unreadable, truncated, not a TIFF, no pixels.

    Parameters
    ----------
    path : str or os.PathLike
        The file that failed.
    reason : str
        What is wrong with it, in words.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read slice {self.path!s}: {reason}")


class SliceShapeError(RevwatchError, ValueError):
    """A slice does not fit the run: another size, dtype or number of channels."""


class CalibrationError(RevwatchError):
    """A model (phase thresholds, classifier) cannot be fitted from the data given."""
