"""Rules about a packed rank file (``tracefmt pack``): its ``packed_from`` provenance.

The object is parsed by :func:`tracefmt.packinfo.parse_packed_from`, which ``tracefmt info`` uses
too: the rule reports what the parser refuses, and a filter that is not the file's own.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracefmt import _layout as L
from tracefmt._primitives import Problem, read_provenance
from tracefmt.packinfo import PACKED_FROM_KEY, parse_packed_from
from tracefmt.rules._base import GATE_TRACE, Issue, rule
from tracefmt.rules._context import FileContext


@rule(
    "TF-PACK-001",
    "Provenance 'packed_from', when present, names the packing tool, time, filter and sources",
    gate=GATE_TRACE,
)
def file_packed_from(ctx: FileContext) -> Iterator[Issue]:
    provenance = read_provenance(ctx.h5)
    if isinstance(provenance, Problem):
        return  # TF-FILE-004
    info = parse_packed_from(provenance.extra)
    loc = f"{ctx.path}:/@{L.ATTR_PROVENANCE}"
    if isinstance(info, Problem):
        yield Issue(loc, info.message)
        return
    if info is not None and ctx.values_filter is not None and info.filter != ctx.values_filter:
        yield Issue(
            loc,
            f"The provenance field {PACKED_FROM_KEY}.filter is {info.filter!r}, but the root "
            f"attribute 'values_filter' is {ctx.values_filter!r}: the values were not packed "
            "with the filter the provenance names.",
        )
