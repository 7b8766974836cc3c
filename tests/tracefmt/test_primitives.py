"""The reader and the validator read through one set of primitives: for each broken file, the
reader's error says exactly what the validator's finding says, and each table's named row has the
fields of its row dtype."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tracefmt
from tests import badfiles as bad
from tracefmt import TraceError, TraceNotFoundError, UnsupportedVersionError
from tracefmt import _layout as L
from tracefmt._rows import ROWS
from tracefmt.validate import validate


def _bad_utf8_module(p: Path) -> Path:
    return bad.set_field(p, "ops", 0, module=bad.add_string(p, b"\xff\xfe"))


def _negative_dim(p: Path) -> Path:
    return bad.set_item(p, "dims", int(bad.get(p, "tensors", 0, "dim_start")), -5)


#: (rule, how to break the file, the reader's exception type).
BREAKS: dict[str, tuple[str, Callable[[Path], Path], type[TraceError]]] = {
    "no trace mark": ("TF-FILE-001", lambda p: bad.delete_attr(p, L.ATTR_MAGIC), TraceError),
    "another mark": ("TF-FILE-001", lambda p: bad.set_attr(p, L.ATTR_MAGIC, "zarr"), TraceError),
    "version not MAJOR.MINOR": (
        "TF-FILE-003",
        lambda p: bad.set_attr(p, L.ATTR_VERSION, "one"),
        TraceError,
    ),
    "unknown major version": (
        "TF-FILE-003",
        lambda p: bad.set_attr(p, L.ATTR_VERSION, "2.0"),
        UnsupportedVersionError,
    ),
    "version as variable-length data": (
        "TF-FILE-003",
        lambda p: bad.set_vlen_attr(p, L.ATTR_VERSION, "1.1"),
        TraceError,
    ),
    "provenance not JSON": (
        "TF-FILE-004",
        lambda p: bad.set_attr(p, L.ATTR_PROVENANCE, "{not json"),
        TraceError,
    ),
    "empty run_id": ("TF-FILE-005", lambda p: bad.set_attr(p, L.ATTR_RUN_ID, ""), TraceError),
    "rank outside the world": (
        "TF-FILE-005",
        lambda p: bad.set_attr(p, L.ATTR_RANK, np.int64(3)),
        TraceError,
    ),
    "unknown values filter": (
        "TF-FILE-006",
        lambda p: bad.set_attr(p, L.ATTR_VALUES_FILTER, "lz77"),
        TraceError,
    ),
    "too many bins": (
        "TF-FILE-006",
        lambda p: bad.set_attr(p, L.ATTR_HIST_BINS, np.int64(5000)),
        TraceError,
    ),
    "missing dataset": ("TF-LAYOUT-001", lambda p: bad.delete(p, L.EVENTS), TraceError),
    "string not UTF-8": ("TF-STR-002", _bad_utf8_module, TraceError),
    "negative dimension": ("TF-TENSOR-002", _negative_dim, TraceError),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bad.write_base(tmp_path_factory.mktemp("base") / "base.tft.h5")


@pytest.mark.parametrize("name", list(BREAKS))
def test_reader_raises_what_the_validator_reports(base: Path, tmp_path: Path, name: str) -> None:
    rule, breaks, error = BREAKS[name]
    path = breaks(Path(shutil.copy(base, tmp_path / "t.tft.h5")))
    findings = validate(path)
    assert [f.rule for f in findings] == [rule], findings
    with pytest.raises(error) as info, tracefmt.open(path) as trace:
        for _ in trace.iter_steps():
            pass
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert message.endswith(f": {findings[0].message}"), (message, findings[0].message)


@pytest.mark.parametrize("make", [lambda d: d / "nothing", lambda d: d])
def test_reader_and_validator_find_no_trace_alike(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)
    with pytest.raises(TraceNotFoundError) as read:
        tracefmt.open(path)
    with pytest.raises(TraceNotFoundError) as checked:
        validate(path)
    assert str(read.value) == str(checked.value)


def test_every_table_has_a_named_row_with_its_dtype_s_fields() -> None:
    """Code reads a row's columns by name (``row.tensor``); the names are the dtype's, in order."""
    dtypes = {name: dtype for name, (dtype, _) in L.TABLES.items()}
    dtypes[L.HISTS] = L.hist_dtype(4)
    assert set(ROWS) == set(dtypes)
    for name, row in ROWS.items():
        assert row._fields == dtypes[name].names, name
