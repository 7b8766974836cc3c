"""How many rank files of a run are open at once.

A run of thousands of ranks cannot keep every rank file open: each costs a file descriptor (a
default ``ulimit -n`` of 1024 ends a 4,096-rank run at open) and about 3 MB of HDF5 caches, and
HDF5 takes longer to close a file the more files are open (about 0.1 ms per open file, measured
with HDF5 2.0: closing 256 files one after the other cost 7 s).  :class:`OpenFiles` keeps at most
``limit`` open: opening one more closes the one read least recently, which
:class:`~tracefmt._rankfile.RankFile` opens again when it is next read.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracefmt._rankfile import RankFile

__all__ = ["OpenFiles"]


class OpenFiles:
    """The rank files of a run that are open, at most ``limit``; opening one more closes the one
    read least recently (it opens again when next read)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}.")
        self.limit = limit
        self._open: OrderedDict[int, RankFile] = OrderedDict()
        self._last: RankFile | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, rf: RankFile) -> None:
        """``rf`` has just been opened: count it, closing the least recently read past the limit."""
        self._open[id(rf)] = rf
        self._last = rf
        while len(self._open) > self.limit:
            _, old = self._open.popitem(last=False)
            old._suspend()

    def touch(self, rf: RankFile) -> None:
        """``rf`` is being read: it becomes the most recently used."""
        if rf is not self._last:
            self._open.move_to_end(id(rf))
            self._last = rf

    def closed(self, rf: RankFile) -> None:
        self._open.pop(id(rf), None)
        if self._last is rf:
            self._last = None
