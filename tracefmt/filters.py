"""Filters (compressors and checksums) a trace's value heaps may use, by name.

The default, ``none``, uses no HDF5 filter at all: any HDF5 build reads it, it writes at disk speed,
and every tensor's values carry a fingerprint the reader checks.  ``blosc2-lz4-bitshuffle`` (alias
``fast``; about twice as fast to write as ``blosc2-zstd``, which compresses more) and the other
Blosc2 and Zstd filters need the ``hdf5plugin`` package on both sides; the filter's name is written
in the file so a reader without the plugin says what to install instead of failing inside HDF5.
(hdf5plugin's standalone Bitshuffle filter, a little faster still, is not offered: it crashed the
reading process on 21 of 300 corrupted chunks, where Blosc2 raised an error.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracefmt.errors import MissingFilterError


def _no_filter() -> dict[str, Any]:
    return {}


def _fletcher32() -> dict[str, Any]:
    return {"fletcher32": True}


def _gzip() -> dict[str, Any]:
    return {"compression": "gzip", "compression_opts": 1, "shuffle": True}


def _plugin() -> Any:
    try:
        import hdf5plugin
    except ImportError as e:
        raise MissingFilterError(
            "This trace's values use an hdf5plugin compressor, but the hdf5plugin package is not "
            "installed: run 'pip install hdf5plugin' (or pip install 'tracefmt[archive]')."
        ) from e
    return hdf5plugin


def _blosc2(cname: str, bitshuffle: bool = False) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        plugin = _plugin()
        shuffle = plugin.Blosc2.BITSHUFFLE if bitshuffle else plugin.Blosc2.SHUFFLE
        return dict(plugin.Blosc2(cname=cname, clevel=1, filters=shuffle))

    return kwargs


def _zstd() -> dict[str, Any]:
    return dict(_plugin().Zstd(clevel=1))


@dataclass(frozen=True)
class ValuesFilter:
    """A named filter pipeline for value heaps."""

    name: str
    description: str
    needs_plugin: bool
    make_kwargs: Callable[[], dict[str, Any]]

    def h5py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_dataset``; raises :class:`MissingFilterError`."""
        return self.make_kwargs()


FILTERS: dict[str, ValuesFilter] = {
    f.name: f
    for f in (
        ValuesFilter("none", "no filter; per-tensor fingerprints guard integrity", False, _no_filter),
        ValuesFilter("fletcher32", "HDF5 fletcher32 checksum per chunk", False, _fletcher32),
        ValuesFilter("gzip", "deflate level 1 + shuffle (standard, slow: about 60 MB/s)", False, _gzip),
        ValuesFilter(
            "blosc2-zstd", "Blosc2 zstd level 1 + byte shuffle (hdf5plugin)", True, _blosc2("zstd")
        ),
        ValuesFilter(
            "blosc2-lz4", "Blosc2 lz4 level 1 + byte shuffle (hdf5plugin)", True, _blosc2("lz4")
        ),
        ValuesFilter(
            "blosc2-lz4-bitshuffle",
            "Blosc2 lz4 level 1 + bit shuffle (hdf5plugin)",
            True,
            _blosc2("lz4", bitshuffle=True),
        ),
        ValuesFilter("zstd", "Zstandard level 1 (hdf5plugin)", True, _zstd),
    )
}
ALIASES = {"default": "none", "fast": "blosc2-lz4-bitshuffle"}


def get_filter(name: str) -> ValuesFilter:
    """Look up a filter by name or alias (``default``, ``fast``)."""
    key = ALIASES.get(name, name)
    try:
        return FILTERS[key]
    except KeyError:
        raise ValueError(
            f"Unknown values filter {name!r}; choose one of {', '.join([*FILTERS, *ALIASES])}."
        ) from None


def ensure_readable(name: str) -> None:
    """Make the filter ``name`` usable for reading (imports hdf5plugin when needed).

    Raises :class:`MissingFilterError` naming what to install.
    """
    f = FILTERS.get(name)
    if f is not None and f.needs_plugin:
        try:
            _plugin()
        except MissingFilterError as e:
            raise MissingFilterError(
                f"This trace's values use the {name!r} filter, an hdf5plugin compressor, but the "
                "hdf5plugin package is not installed: run 'pip install hdf5plugin' (or pip "
                "install 'tracefmt[archive]')."
            ) from e
