"""spec/schema.json is generated from tracefmt._layout and the prose spec names the same layout."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from tests.badfiles import write_base
from tracefmt import _layout as L
from tracefmt.schema import ROOT_ATTRIBUTES, expected_datasets, schema, schema_json

SPEC = Path(__file__).resolve().parents[2] / "spec"


def test_committed_schema_is_current() -> None:
    committed = (SPEC / "schema.json").read_text(encoding="utf-8")
    assert committed == schema_json(), "run: python -m tracefmt.schema > spec/schema.json"


def test_schema_lists_every_dataset_and_attribute() -> None:
    data = schema()
    assert set(data["datasets"]) == set(expected_datasets(0))
    assert set(data["root_attributes"]) == set(L.ROOT_ATTRS)
    assert data["format_version"] == L.FORMAT_VERSION
    assert json.loads(schema_json()) == data


def test_prose_names_every_dataset_field_and_attribute() -> None:
    text = (SPEC / "format.md").read_text(encoding="utf-8")
    for name in [*ROOT_ATTRIBUTES, *expected_datasets(0)]:
        assert f"`{name}`" in text, name
    for path, entry in schema()["datasets"].items():
        for field in entry.get("fields", ()):
            assert f"`{field['name']}`" in text, (path, field["name"])


def test_written_file_matches_schema(tmp_path: Path) -> None:
    """A file the writer wrote has exactly the datasets, dtypes and chunking the schema lists."""
    path = write_base(tmp_path / "t.tft.h5", steps=1, hist_bins=4)
    data = schema()["datasets"]
    with h5py.File(path, "r", swmr=True) as f:
        found: dict[str, h5py.Dataset] = {}

        def collect(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

        f.visititems(collect)
        assert set(found) == set(data)
        for name, dtype in expected_datasets(4).items():
            assert found[name].dtype == dtype, name
            assert found[name].chunks == (data[name]["chunk_rows"],), name
        assert set(f.attrs) == set(ROOT_ATTRIBUTES)
