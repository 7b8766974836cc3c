"""Where the recorder's compiled code lives, and how ranks starting together build it once.

Two things are compiled on first use and cached: the one-pass statistics kernel
(:mod:`recorder.stats.native`) and the native capture engine (:mod:`recorder.engine.extension`).
Both go under ``$TRACEFMT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tracefmt`` or
``~/.cache/tracefmt``), else a private directory under the system's temporary directory (a
read-only home, a container); both hold a lock file while building, so the ranks of a job build
once and the others wait and load.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_dirs", "locked", "warn_local_rank0"]


def cache_dirs() -> list[Path]:
    """Where compiled code may live, in order of preference."""
    explicit = os.environ.get("TRACEFMT_CACHE_DIR")
    if explicit:
        first = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        first = Path(base) / "tracefmt"
    return [first, Path(tempfile.gettempdir()) / f"tracefmt-{os.getuid()}"]


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock``: the ranks of a job starting together build once, the others
    wait and load what it built."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds still end in one atomic rename
        yield
        return
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def warn_local_rank0(message: str, *, stacklevel: int = 5) -> None:
    """A ``recorder:`` warning, on local rank 0 only (once per node under torchrun; callers
    warn once per process)."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        warnings.warn(f"recorder: {message}", stacklevel=stacklevel)
