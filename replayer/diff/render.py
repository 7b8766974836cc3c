"""A diff as a rich terminal report: the verdict, the origin, first differing named tensors,
the chain to the loss, structural changes and the largest divergences.

:mod:`replayer.diff.page` wraps the same report in an HTML page with a plot, and
:mod:`replayer.diff.jsondata` gives the result as JSON data.

Example::

    render(diff_sides("runs/a", "runs/b"), Console())
"""

from __future__ import annotations

import math
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from replayer.diff.results import OpRef, RunDiff, StepDiff, TensorDiff
from tracefmt.model import TensorStats

__all__ = ["render"]

_VERDICT_STYLE = {"identical": "bold green", "equal": "bold yellow", "different": "bold red"}


def _num(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _stats_line(s: TensorStats | None) -> str:
    if s is None:
        return "no statistics"
    parts = [
        f"{k}={_num(getattr(s, k))}"
        for k in ("min", "max", "mean", "std", "norm")
        if getattr(s, k) is not None
    ]
    if s.nan or s.inf:
        parts.append(f"nan={s.nan} inf={s.inf}")
    if s.fingerprint is not None:
        parts.append(f"fp={s.fingerprint:016x}")
    return " ".join(parts) or "no statistics"


def _tensor_lines(t: TensorDiff, indent: str = "  ") -> list[str]:
    label = t.name or f"tensor {t.a} (A) / {t.b} (B)"
    shape = (
        f"{t.dtype_a}{list(t.shape_a)}"
        if (t.dtype_a, t.shape_a) == (t.dtype_b, t.shape_b)
        else f"{t.dtype_a}{list(t.shape_a)} -> {t.dtype_b}{list(t.shape_b)}"
    )
    lines = [
        f"{indent}{label} ({t.role.label}, {shape}): {t.status.label}"
        + (" (inferred: made from diverged inputs)" if t.inferred else "")
    ]
    dist = t.distance
    if dist is not None:
        lines.append(
            f"{indent}  distance from {dist.source}: max abs {_num(dist.max_abs)}, max rel "
            f"{_num(dist.max_rel)}, ulp {_num(dist.ulp)}, differing {_num(dist.count)}"
            + (f" of {dist.numel:,}" if dist.numel else "")
        )
    if not t.inferred:
        lines.append(f"{indent}  A: {_stats_line(t.stats_a)}")
        lines.append(f"{indent}  B: {_stats_line(t.stats_b)}")
    return lines


def _steps(steps: tuple[int, ...]) -> str:
    if not steps:
        return "none"
    shown = ", ".join(map(str, steps[:8]))
    return f"{len(steps)} ({shown}{', ...' if len(steps) > 8 else ''})"


def _ref(r: OpRef | None) -> str:
    return "-" if r is None else f"#{r.index} {r.name} in {r.module or '<top>'} ({r.phase.label})"


def _summary(d: StepDiff) -> Text:
    c = d.counts
    text = Text()
    text.append(d.verdict.upper(), style=_VERDICT_STYLE[d.verdict])
    text.append(
        f"  step {d.step_a} (rank {d.rank_a}) vs step {d.step_b} (rank {d.rank_b}): "
        f"{d.matched:,} of {d.ops_a:,}/{d.ops_b:,} ops aligned; {c.close + c.different:,} "
        f"of {c.total:,} tensor pairs differ ({c.close:,} within tolerance, "
        f"{c.different:,} beyond), {c.unknown:,} without numbers; "
        f"{len(d.structural):,} structural changes"
    )
    return text


def _render_step(d: StepDiff, console: Console, top: int) -> None:
    console.print(_summary(d))
    if d.origin is not None:
        o = d.origin
        console.print(Text("Origin", style="bold underline"))
        console.print(Text(f"  {o.message}"))
        console.print(Text(f"  A: {_ref(o.a)}\n  B: {_ref(o.b)}"))
        if o.tensor is not None:
            console.print(Text("\n".join(_tensor_lines(o.tensor, "  "))))
    firsts = [
        ("parameter", d.first_parameter),
        ("gradient", d.first_gradient),
        ("optimizer state", d.first_optimizer_state),
    ]
    if any(t is not None for _, t in firsts):
        console.print(Text("First differing named tensors", style="bold underline"))
        for label, t in firsts:
            if t is not None:
                dist = t.distance
                how = (
                    ""
                    if dist is None
                    else (
                        f", max abs {_num(dist.max_abs)}, max rel {_num(dist.max_rel)} ({dist.source})"
                    )
                )
                console.print(Text(f"  {label}: {t.name} {t.status.label}{how}"))
    if d.chain:
        note = (
            "every link diverged"
            if d.chain_diverged
            else "data path only: the difference does not reach the loss"
        )
        console.print(
            Text(f"Chain to the loss ({note}, side {d.chain_side.upper()})", style="bold underline")
        )
        console.print(
            Text(
                "  "
                + " -> ".join(f"{r.name.removeprefix('aten::')}[{r.module or '<top>'}]" for r in d.chain)
            )
        )
    if d.structural:
        kinds = Counter(c.kind for c in d.structural)
        console.print(
            Text(
                "Structural changes: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common()),
                style="bold underline",
            )
        )
        if d.modules_added:
            console.print(Text(f"  modules only in B: {', '.join(d.modules_added)}"))
        if d.modules_removed:
            console.print(Text(f"  modules only in A: {', '.join(d.modules_removed)}"))
        table = Table(show_edge=False, pad_edge=False)
        for col in ("pos", "kind", "module", "detail"):
            table.add_column(col, overflow="fold")
        for c in d.structural[:top]:
            table.add_row(str(c.position), c.kind, c.module or "<top>", c.detail)
        console.print(table)
        if len(d.structural) > top:
            console.print(Text(f"  ... {len(d.structural) - top:,} more"))
    tops = d.top_divergences(top)
    if tops:
        console.print(
            Text(
                f"Top divergences ({len(d.divergences):,} ops with a non-identical output)",
                style="bold underline",
            )
        )
        table = Table(show_edge=False, pad_edge=False)
        for col in (
            "pos",
            "phase",
            "op",
            "output",
            "status",
            "max abs",
            "max rel",
            "ulp",
            "bits differ",
            "from",
        ):
            table.add_column(col, overflow="fold", no_wrap=col not in ("op", "output"))
        for x in tops:
            t = max((t for t in x.outputs if not t.inferred), key=lambda t: t.status)
            dist = t.distance
            table.add_row(
                str(x.position),
                x.a.phase.label,
                f"{x.a.module or '<top>'}: {x.a.name.removeprefix('aten::')}",
                f"{t.name + ' ' if t.name else ''}{t.dtype_b}{list(t.shape_b)}",
                t.status.label,
                _num(dist.max_abs if dist else None),
                _num(dist.max_rel if dist else None),
                _num(dist.ulp if dist else None),
                _num(dist.count if dist else None),
                dist.source if dist else "-",
            )
        console.print(table)
    for s in d.scalars:
        console.print(
            Text(
                f"scalar {s.name}: {s.a!r} vs {s.b!r}"
                + ("" if s.within_tolerance else " (beyond tolerance)")
            )
        )


def render(result: StepDiff | RunDiff, console: Console, *, top: int = 10) -> None:
    """Print the report of ``result`` on ``console``."""
    if isinstance(result, StepDiff):
        _render_step(result, console, top)
        return
    r = result
    text = Text()
    text.append(r.verdict.upper(), style=_VERDICT_STYLE[r.verdict])
    text.append(
        f"  {r.path_a} (rank {r.rank_a}) vs {r.path_b} (rank {r.rank_b}): "
        f"{len(r.steps)} of {r.common} common step(s) compared"
    )
    if r.first_divergent is not None:
        text.append(f"; first step not bit-identical: {r.first_divergent}")
    if r.first_different is not None:
        text.append(f"; first beyond tolerance: {r.first_different}")
    if r.stopped_early:
        text.append(" (stopped there)")
    console.print(text)
    if r.only_a or r.only_b:
        console.print(
            Text(
                f"  steps recorded by one side only (a difference): A {_steps(r.only_a)}"
                f"; B {_steps(r.only_b)}"
            )
        )
    if r.diff is not None:
        _render_step(r.diff, console, top)
    if r.different_diff is not None:
        console.print(Text(f"First step beyond tolerance: {r.different_diff.step_a}", style="bold"))
        _render_step(r.different_diff, console, top)
