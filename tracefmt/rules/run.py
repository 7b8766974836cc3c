"""Rules about a run as a whole (format 1.2): the run manifest, the ranks' agreement with it, and each
rank file's distributed provenance.

The manifest is parsed by :func:`tracefmt.manifest.load_manifest`, the distributed provenance by
:func:`tracefmt.rankinfo.parse_distributed`: the reader raises what these rules report.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracefmt import _layout as L
from tracefmt._primitives import Problem, read_provenance
from tracefmt.manifest import manifest_path
from tracefmt.rankinfo import parse_distributed
from tracefmt.rules._base import GATE_NONE, GATE_TRACE, Issue, rule
from tracefmt.rules._context import FileContext, RunContext


@rule("TF-RUN-003", "The run manifest run.json, when present, is valid", scope="run", gate=GATE_NONE)
def run_manifest(run: RunContext) -> Iterator[Issue]:
    if isinstance(run.manifest, Problem):
        yield Issue(str(manifest_path(run.path)), run.manifest.message)


@rule(
    "TF-RUN-004",
    "Every rank file agrees with the manifest: run_id, world_size, an expected rank",
    scope="run",
    gate=GATE_NONE,
)
def run_manifest_ranks(run: RunContext) -> Iterator[Issue]:
    m = run.manifest
    if m is None or isinstance(m, Problem):
        return
    for path, identity in run.files:
        if identity is None:
            continue  # unreadable: TF-FILE-001, TF-FILE-005
        if (identity.run_id, identity.world_size) != (m.run_id, m.world_size):
            yield Issue(
                str(path),
                f"run_id {identity.run_id!r} / world_size {identity.world_size} differ from the "
                f"manifest's {m.run_id!r} / {m.world_size}; the file belongs to another run.",
            )
        elif identity.rank not in m.expected_ranks:
            yield Issue(
                str(path),
                f"The file holds rank {identity.rank}, which the manifest's expected_ranks do not name.",
            )


@rule(
    "TF-FILE-007",
    "Provenance 'distributed', when present, is an object of the run's rank and world size",
    gate=GATE_TRACE,
)
def file_distributed(ctx: FileContext) -> Iterator[Issue]:
    provenance = read_provenance(ctx.h5)
    if isinstance(provenance, Problem):
        return  # TF-FILE-004
    info = parse_distributed(provenance.extra)
    loc = f"{ctx.path}:/@{L.ATTR_PROVENANCE}"
    if isinstance(info, Problem):
        yield Issue(loc, info.message)
        return
    identity = ctx.identity()
    if info is None or identity is None:
        return
    for key, value, root in (
        ("rank", info.rank, identity.rank),
        ("world_size", info.world_size, identity.world_size),
    ):
        if value is not None and value != root:
            yield Issue(
                loc,
                f"The provenance field distributed.{key} is {value}, but the root attribute "
                f"{key!r} is {root}.",
            )
