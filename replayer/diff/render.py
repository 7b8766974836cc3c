"""Reports of a diff: a rich terminal report, JSON data, and an HTML page with a plot.

The terminal report and the HTML page are the same rendering (the page is rich's HTML export of
it, with the plot of divergence along execution order above it), so the two never disagree.

Example::

    result = diff_sides("runs/a", "runs/b")
    render(result, Console())
    write_html(result, "diff.html")
    print(json.dumps(to_json(result)))
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import html
import io
import math
import os
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from replayer.diff.results import (
    OpDivergence,
    OpRef,
    RunDiff,
    Status,
    StepDiff,
    TensorDiff,
)
from tracefmt.model import Phase, TensorStats

__all__ = ["plot_png", "render", "to_json", "write_html"]

PHASE_COLOURS = {
    Phase.FORWARD: "#1f77b4",
    Phase.BACKWARD: "#ff7f0e",
    Phase.OPTIMIZER: "#2ca02c",
    Phase.OTHER: "#7f7f7f",
}
_VERDICT_STYLE = {"identical": "bold green", "equal": "bold yellow", "different": "bold red"}


# -- JSON ------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        label = getattr(value, "label", None)
        return label if isinstance(label, str) else value.name.lower()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _measured(x: OpDivergence) -> bool:
    return x.status is Status.CLOSE or x.status is Status.DIFFERENT


def top_divergences(d: StepDiff, n: int) -> list[OpDivergence]:
    """The ``n`` measured divergences (close or different) with the largest distance; those
    without a distance (fingerprints only, shapes differ) after them; ties earliest first."""
    measured = [x for x in d.divergences if _measured(x)]
    measured.sort(key=lambda x: (not _has_distance(x), -x.score, x.position))
    return measured[:n]


def _has_distance(x: OpDivergence) -> bool:
    return any(t.distance is not None for t in x.outputs)


def _step_json(d: StepDiff, limit: int) -> dict[str, Any]:
    data = {
        f.name: _plain(getattr(d, f.name))
        for f in dataclasses.fields(d)
        if f.name not in ("divergences", "structural", "phase_spans")
    }
    data["verdict"] = d.verdict
    data["structural"] = _plain(d.structural[:limit])
    data["structural_total"] = len(d.structural)
    data["structural_by_kind"] = dict(Counter(c.kind for c in d.structural))
    data["divergent_ops"] = len(d.divergences)
    data["top_divergences"] = _plain(top_divergences(d, limit))
    data["phase_spans"] = _plain(d.phase_spans)
    return data


def to_json(result: StepDiff | RunDiff, *, limit: int = 100) -> dict[str, Any]:
    """Plain JSON data of a result; long lists cut to ``limit`` items (totals kept)."""
    if isinstance(result, StepDiff):
        return {"kind": "step", **_step_json(result, limit)}
    data: dict[str, Any] = {"kind": "run", "verdict": result.verdict}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name in ("diff", "different_diff"):
            data[f.name] = None if value is None else _step_json(value, limit)
        else:
            data[f.name] = _plain(value)
    return data


# -- terminal ----------------------------------------------------------------------------------
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
    tops = top_divergences(d, top)
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


# -- HTML --------------------------------------------------------------------------------------
def plot_png(result: StepDiff | RunDiff) -> bytes | None:
    """A PNG plot of divergence (max relative distance, log scale) along execution order,
    coloured by phase; ``None`` when there is no step diff to plot."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    d = result if isinstance(result, StepDiff) else result.diff
    if d is None:
        return None
    run = result if isinstance(result, RunDiff) and len(result.steps) > 1 else None
    fig = Figure(figsize=(11, 6.5 if run else 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot(2, 1, 1) if run else fig.add_subplot(1, 1, 1)
    for span in d.phase_spans:
        ax.axvspan(span.start, span.stop, color=PHASE_COLOURS[span.phase], alpha=0.06, lw=0)
    floor = 1e-12
    for phase, colour in PHASE_COLOURS.items():
        pts = [
            (x.position, max(x.score, floor)) for x in d.divergences if x.phase is phase and _measured(x)
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, [min(y, 1e6) for y in ys], s=10, color=colour, label=phase.label)
    struct = [c.position for c in d.structural if c.kind in ("added", "removed")]
    if struct:
        ax.scatter(
            struct, [floor] * len(struct), marker="|", s=60, color="black", label="op on one side only"
        )
    if d.origin is not None:
        ax.axvline(d.origin.position, color="red", lw=1, ls="--", label="origin")
    ax.set_yscale("log")
    ax.set_xlim(0, max(d.positions, 1))
    ax.set_xlabel("aligned execution order (op position)")
    ax.set_ylabel("max relative distance")
    ax.set_title(
        f"Divergence along step {d.step_a} (A) vs step {d.step_b} (B)", loc="right", fontsize=10
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=6, fontsize=8, frameon=False)
    if run is not None:
        ax2 = fig.add_subplot(2, 1, 2)
        steps = [v.step for v in run.steps]
        ax2.bar(steps, [v.different_tensors for v in run.steps], color="#d62728")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("step")
        ax2.set_ylabel("tensors beyond tolerance")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>@TITLE@</title>
<style>body{{font-family:sans-serif;margin:1.5em}} img{{max-width:100%}}
pre{{font-family:Menlo,'DejaVu Sans Mono',monospace;font-size:13px;line-height:1.3;
white-space:pre-wrap}}</style></head>
<body><h1>@TITLE@</h1>@IMAGE@
<pre style="color:#000;background:#fff">{code}</pre></body></html>
"""


def write_html(result: StepDiff | RunDiff, path: str | os.PathLike[str], *, top: int = 25) -> None:
    """Write the report and its plot (an embedded PNG) as one self-contained HTML page."""
    console = Console(record=True, width=140, file=io.StringIO(), color_system="truecolor")
    render(result, console, top=top)
    png = plot_png(result)
    image = (
        ""
        if png is None
        else (
            f'<img alt="divergence along execution order" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">'
        )
    )
    title = html.escape(f"replayer diff: {result.verdict}")
    # rich formats the template with str.format (CSS braces are doubled); ours go in first.
    template = _PAGE.replace("@TITLE@", title).replace("@IMAGE@", image)
    with open(path, "w", encoding="utf-8") as f:
        f.write(console.export_html(inline_styles=True, code_format=template))
