"""The one exception hierarchy of tracefmt.

Every error a trace can cause derives from :class:`TraceError`, so a caller (or the CLI) catches one
class.  Messages are whole sentences that name the thing and say what to do.
"""

from __future__ import annotations


class TraceError(Exception):
    """Root of every error tracefmt raises about a trace, its arguments or its I/O."""


class TraceFormatError(TraceError, ValueError):
    """The file is not a valid trace: missing or malformed structure, out-of-range references."""


class UnsupportedVersionError(TraceFormatError):
    """The file's ``format_version`` has a major version this reader does not know."""


class TraceCorruptError(TraceFormatError):
    """Stored bytes fail a checksum or fingerprint: the file was damaged after it was written."""


class MissingFilterError(TraceError):
    """The file's data uses an HDF5 filter (compressor) that is not available here."""


class WriterClosedError(TraceError):
    """A write was attempted on a writer that is already closed."""


class TraceNotFoundError(TraceError, FileNotFoundError):
    """The path names no trace file or run directory."""
