"""The Parquet export is a dataset Dask reads as it is: one query through
``dask.dataframe.read_parquet`` on a ``dask.distributed.LocalCluster`` gives DuckDB's answer."""

from __future__ import annotations

from pathlib import Path

import pytest

REASON = "needs the analysis extra: pip install 'tracefmt[analysis]'"
dd = pytest.importorskip("dask.dataframe", reason=REASON)
distributed = pytest.importorskip("distributed", reason=REASON)
pytest.importorskip("duckdb", reason=REASON)

from tracefmt.analysis import query_export, to_parquet  # noqa: E402

#: The largest norm each gradient reached over the run, per gradient tensor.
QUERY = """
    SELECT t.name, max(s.norm) AS norm
    FROM stats s JOIN tensors t USING (rank, step, tensor)
    WHERE t.role = 'gradient'
    GROUP BY t.name
    ORDER BY t.name
"""


def test_dask_on_a_local_cluster_agrees_with_duckdb(recorded_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    to_parquet(recorded_run, export)
    want = query_export(export, QUERY).rows
    assert len(want) == 4  # weight and bias of two layers
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,  # a worker process reads the files, as on a real cluster
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        stats = dd.read_parquet(export / "stats", columns=["step", "tensor", "norm"])
        tensors = dd.read_parquet(export / "tensors", columns=["step", "tensor", "name", "role"])
        grads = tensors[tensors["role"] == "gradient"]
        joined = stats.merge(grads, on=["step", "tensor"])
        result = client.compute(joined.groupby("name")["norm"].max()).result()
    got = sorted((str(name), float(norm)) for name, norm in result.items())
    assert got == [(name, norm) for name, norm in want]
