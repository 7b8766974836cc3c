"""A one-pass statistics kernel for CPU tensors, compiled from C on first use.

Why: the torch path of :mod:`recorder.stats.cpu` reads each tensor five times (fingerprint, ``aminmax``,
the ``-0.0`` check and zero count, sum, norm), each pass a separate kernel.  Inside the FACTS GPT
step (440 float32 tensors, ~490 MB) that was most of the recorder's cost.
``fused_stats.c`` computes the whole row in one pass over the bytes, on up to
``torch.get_num_threads()`` threads.

It is plain C99 (no torch headers, no build tool): the first recording process compiles it with
``$CC``, ``cc``, ``gcc`` or ``clang`` in about a second and caches the library under
``$TRACEFMT_CACHE_DIR`` (default ``~/.cache/tracefmt``, else a private directory under the
system's temporary directory), keyed by the source, the compiler's version, the flags and the
CPU's vector level, so machines sharing a home directory never load each other's builds.  Ranks
starting together build it once (a lock file); a library writable by other users is not loaded.
Without a compiler, or with ``TRACEFMT_NATIVE_STATS=0``, the torch path computes the same row
(within spec section 5.7's accuracy) more slowly; in the first case a warning says so, once per
process and only on local rank 0.

Float flags: sums may be reassociated (they are blocked sums anyway) and min/max assume no NaN;
zero, NaN and infinity are integer tests on the bits, and what the float code makes of a block
holding a non-finite element is thrown away: the block is read again with each such element as 0
or ``+-FLT_MAX`` (chosen on the bits).  A sum that overflows float comes back infinite, and the
caller then computes that row in float64.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from recorder.buildcache import cache_dirs, locked, warn_local_rank0

__all__ = ["FusedStats", "available", "entry_address", "fused_histogram", "fused_stats"]
__all__ += ["kernel_address"]

_SOURCE = Path(__file__).with_name("fused_stats.c")
_FLAGS = [
    "-O3",
    "-std=c99",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-ffinite-math-only",
]
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: A compile takes about a second; past this, something is wrong (and the torch path is used).
_COMPILE_SECONDS = 60


class _Row(ctypes.Structure):
    _fields_ = [
        ("sum", ctypes.c_double),
        ("sumsq", ctypes.c_double),
        ("min", ctypes.c_double),
        ("max", ctypes.c_double),
        ("nonzero", ctypes.c_int64),
        ("negzero", ctypes.c_int64),
        ("nan", ctypes.c_int64),
        ("inf", ctypes.c_int64),
        ("fingerprint", ctypes.c_uint64),
    ]


class FusedStats(NamedTuple):
    """One tensor's pass: moments over the finite elements (``min``/``max`` are ``+-FLT_MAX``
    when there is none, and do not tell ``-0.0`` from ``0.0``: ``negzero`` counts the ``-0.0``
    elements); a sum that overflowed float is infinite; ``fingerprint`` is unsigned.  A named
    tuple: the recorder makes hundreds per step, and a frozen dataclass costs twice as much."""

    sum: float
    sumsq: float
    min: float
    max: float
    nonzero: int
    negzero: int
    nan: int
    inf: int
    fingerprint: int


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _vector_flags() -> list[str]:
    """The x86 vector level torch itself runs at (``AVX512`` means F, BW, VL and DQ): 512-bit
    vectors where it has them (the kernel runs 1.2-1.6x faster than with AVX2 alone)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    level = torch.backends.cpu.get_cpu_capability()
    if level == "AVX512":
        avx512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
        return ["-mavx2", "-mfma", *avx512, "-mprefer-vector-width=512"]
    if level == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


def _openmp_flags(compiler_version: str) -> list[str]:
    """``-fopenmp`` where torch runs libgomp and the compiler is GCC: the kernel then links the
    same ``libgomp.so.1`` (the loader reuses the copy torch loaded) and splits its work over
    torch's worker threads.  Threads of its own would fight those workers, which spin for a while
    after each op; clang's ``-fopenmp`` would bring a second runtime (libomp)."""
    lib = Path(torch.__file__).parent / "lib"
    gcc = "Free Software Foundation" in compiler_version and "clang" not in compiler_version
    return ["-fopenmp"] if gcc and sys.platform == "linux" and (lib / "libgomp.so.1").exists() else []


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a session of its own; past ``timeout`` kill all of it (the compiler's
    cc1, as and ld too, not only the driver)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise OSError(f"{cmd[0]} took more than {timeout:.0f} s") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _load(cc: str, flags: list[str], target: Path) -> ctypes.CDLL:
    """The library at ``target``, compiled there first if it is not yet."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent):
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fused_stats-", suffix=".so")
            os.close(fd)
            try:
                proc = _run([cc, *flags, "-o", tmp, str(_SOURCE)], _COMPILE_SECONDS)
                if proc.returncode != 0:
                    raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
                os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep other users of a shared cache out
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    if target.stat().st_mode & 0o022:
        raise OSError(
            f"{target} is writable by other users; not loading it. Remove it, or point "
            "TRACEFMT_CACHE_DIR at a directory only you can write."
        )
    return ctypes.CDLL(str(target))


def _warn(message: str) -> None:
    warn_local_rank0(message, stacklevel=6)


def _build() -> ctypes.CDLL | None:
    """Compile (or find in the cache) and load the kernel; None, with a warning, if impossible."""
    if os.environ.get("TRACEFMT_NATIVE_STATS", "1") == "0" or sys.byteorder != "little":
        return None
    cc = _compiler()
    if cc is None:
        _warn(
            "no C compiler found ($CC, cc, gcc, clang); CPU statistics use the slower torch "
            "path. Install one (e.g. gcc), or set TRACEFMT_NATIVE_STATS=0 to silence this."
        )
        return None
    errors: list[str] = []
    try:
        version = _run([cc, "--version"], 30).stdout
        source = _SOURCE.read_bytes()
    except OSError as e:
        errors.append(str(e))
        version, source = "", b""
    base = [*_FLAGS, *_vector_flags()]
    openmp = _openmp_flags(version)
    for flags in ([*base, *openmp], base) if openmp else (base,):
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(flags).encode(), platform.machine().encode()])
        ).hexdigest()[:20]
        for cache in cache_dirs() if source else ():
            try:
                lib = _load(cc, flags, cache / f"fused_stats-{key}.so")
            except OSError as e:
                errors.append(str(e))
                continue
            lib.tf_stats_run.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(_Row),
            ]
            lib.tf_stats_run.restype = ctypes.c_int
            lib.tf_hist_run.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_double,
                ctypes.c_double,
                ctypes.c_int64,
                ctypes.c_int,
                ctypes.c_void_p,
            ]
            lib.tf_hist_run.restype = ctypes.c_int
            return lib
    _warn(
        f"could not build the one-pass statistics kernel ({errors[-1] if errors else '?'}); "
        "CPU statistics use the slower torch path. Set TRACEFMT_NATIVE_STATS=0 to silence this."
    )
    return None


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib = _build()
                _tried = True
    return _lib


def available() -> bool:
    """Whether the kernel is loaded (building it now if this process has not tried yet)."""
    return _library() is not None


def kernel_address() -> int:
    """The address of the kernel's C entry point ``tf_stats_run`` (0 when it is unavailable),
    for native code that calls it directly (:mod:`recorder.engine`)."""
    lib = _library()
    if lib is None:
        return 0
    return ctypes.cast(lib.tf_stats_run, ctypes.c_void_p).value or 0


def entry_address(name: str) -> int:
    """The address of the library's C entry point ``name`` (0 when the library is unavailable
    or has no such entry point), for callers that declare its prototype themselves
    (:mod:`recorder.flight.lightnative`: light capture's ``tf_light_*`` and ``tf_copy_many``)."""
    lib = _library()
    if lib is None:
        return 0
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
    except AttributeError:
        return 0


def fused_stats(x: torch.Tensor) -> FusedStats | None:
    """The pass over ``x`` (a contiguous float32 or bfloat16 CPU tensor); None when the kernel is
    unavailable or ``x`` is not such a tensor."""
    code = _DTYPES.get(x.dtype)
    lib = _lib if _tried else _library()
    if lib is None or code is None or x.device.type != "cpu" or not x.is_contiguous():
        return None
    row = _Row()
    if lib.tf_stats_run(x.data_ptr(), x.numel(), code, torch.get_num_threads(), ctypes.byref(row)) != 0:
        return None
    return FusedStats(
        row.sum, row.sumsq, row.min, row.max, row.nonzero, row.negzero, row.nan, row.inf, row.fingerprint
    )


def fused_histogram(
    x: torch.Tensor, lo: float, hi: float, bins: int, *, finite: bool = False
) -> np.ndarray | None:
    """Counts of the finite elements of ``x`` (a contiguous float32 or bfloat16 CPU tensor) in
    ``bins`` equal-width bins from ``lo`` to ``hi``, its finite elements' min and max (``hi`` in
    the last bin; all in bin 0 when ``lo == hi``), as uint64; None when the kernel is
    unavailable or ``x`` is not such a tensor.  ``finite``: :func:`fused_stats` counted no NaN
    or infinity in ``x`` (the kernel then skips its test of each element).

    One more pass over the bytes after :func:`fused_stats` found ``lo`` and ``hi``: the bins
    are computed in float, vectorised, and an element close enough to a bin's edge for float's
    rounding to matter is binned again in double exactly as ``recorder.stats.common.bin_of``
    bins it, so both paths (and numpy's ``histogram``) agree on every element.  It costs about
    4x :func:`fused_stats` (counting is one scalar increment per element), against about 25x
    for the torch ops it replaces (a float64 copy, a finite mask, the bin arithmetic and a
    scatter-add).
    """
    code = _DTYPES.get(x.dtype)
    lib = _lib if _tried else _library()
    if lib is None or code is None or x.device.type != "cpu" or not x.is_contiguous():
        return None
    counts = np.zeros(bins, dtype=np.int64)
    threads = torch.get_num_threads()
    ptr, n = x.data_ptr(), x.numel()
    if lib.tf_hist_run(ptr, n, code, int(finite), lo, hi, bins, threads, counts.ctypes.data) != 0:
        return None
    return counts.view(np.uint64)
