"""Errors of the replayer.  They derive from :class:`tracefmt.TraceError` so one handler serves."""

from __future__ import annotations

from tracefmt.errors import TraceError


class ReplayError(TraceError):
    """A step cannot be exported, run or compared as asked."""
