"""Without the analysis extra, ``tracefmt.analysis`` imports and its functions raise a
TraceError that says what to install (these tests run with or without the extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tracefmt
from tracefmt.analysis import INSTALL_HINT, run_sql, to_parquet


def test_the_package_and_its_commands_import_without_the_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('pyarrow', 'pyarrow.parquet', 'duckdb'):\n"
        "    sys.modules[name] = None\n"
        "import tracefmt.analysis, tracefmt.analysis.cli, tracefmt.tablescan\n"
        "print(sorted(tracefmt.analysis.SCHEMAS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "light_stats" in out.stdout


def test_to_parquet_says_what_to_install(
    synthetic_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(tracefmt.TraceError, match="needs pyarrow") as e:
        to_parquet(synthetic_run, tmp_path / "e")
    assert INSTALL_HINT in str(e.value)
    assert not (tmp_path / "e").exists()


def test_sql_says_what_to_install_before_exporting(
    synthetic_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(tracefmt.TraceError, match="needs duckdb") as e:
        run_sql(synthetic_run, "SELECT 1", parquet=tmp_path / "e")
    assert INSTALL_HINT in str(e.value)
    assert not (tmp_path / "e").exists()
