"""The terminal form of a :class:`~replayer.summary.rollup.ModelSummary`: one rich table of
modules, indented by depth, then the totals and the notes (what the trace did not have).

Example::

    from rich.console import Console
    render_summary(summarize("runs/demo"), Console(), depth=2)
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replayer.summary.rollup import ModelSummary, ModuleSummary
from tracefmt.cli_info import human_bytes

__all__ = ["human_count", "render_summary"]

_BLANK = "-"


def human_count(n: int | None) -> str:
    """``1234567`` -> ``1.23 M``; small numbers as they are; None as a dash."""
    if n is None:
        return _BLANK
    for size, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _number(n: int | None) -> str:
    return _BLANK if n is None else f"{n:,}"


def _ms(ns: int | None) -> str:
    return _BLANK if ns is None else f"{ns / 1e6:.3f}"


def _bytes(n: int | None) -> str:
    return _BLANK if n is None else human_bytes(n)


def _label(m: ModuleSummary) -> str:
    name = m.name or "(model)"
    cls = None if m.class_name is None else m.class_name.rpartition(".")[2]
    text = name if cls is None else f"{name}: {cls}"
    return "  " * m.depth + escape(text)


def render_summary(summary: ModelSummary, console: Console, *, depth: int | None = None) -> None:
    """Print ``summary``: modules at most ``depth`` deep (all for None), totals and notes."""
    rows = summary.shown(depth)
    trainable_column = any(m.trainable is not None and m.trainable != m.params for m in rows)
    table = Table(
        title=f"Model summary of step {summary.step}, rank {summary.rank}: {escape(summary.trace)}",
        title_justify="left",
    )
    table.add_column("module: class")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    if trainable_column:
        table.add_column("trainable", justify="right")
    for title in ("mult-adds", "fwd ms", "bwd ms", "activations", "memory"):
        table.add_column(title, justify="right")
    for m in rows:
        shape = _BLANK if m.output_shape is None else str(list(m.output_shape))
        cells = [_label(m), shape, _number(m.params)]
        if trainable_column:
            cells.append(_number(m.trainable))
        cells += [
            human_count(m.mult_adds) if m.mult_adds else _BLANK,
            _ms(m.forward_ns),
            _ms(m.backward_ns),
            _bytes(m.activation_bytes) if m.activation_bytes else _BLANK,
            _bytes(m.mem_bytes),
        ]
        table.add_row(*cells)
    console.print(table)
    t = summary.totals
    lines = [
        f"Total params: {_number(t.params)}",
        f"Trainable params: {_number(t.trainable)}",
    ]
    if t.params is not None and t.trainable is not None:
        lines.append(f"Non-trainable params: {t.params - t.trainable:,}")
    lines += [
        f"Forward mult-adds: {human_count(t.mult_adds)} ({t.mult_adds:,})",
        f"Input size: {human_bytes(t.input_bytes)}",
        f"Forward activations: {human_bytes(t.activation_bytes)}",
        f"Params size: {_bytes(t.param_bytes)}",
        f"Estimated total size: {human_bytes(t.total_bytes)}",
        f"Host time (ms): forward {_ms(t.forward_ns)}, backward {_ms(t.backward_ns)}, "
        f"optimizer {_ms(t.optimizer_ns)}",
        f"Memory allocated by forward and backward ops: {_bytes(t.mem_bytes)}",
    ]
    console.print("\n".join(lines), highlight=False)
    for note in summary.notes:
        console.print(f"[dim]Note: {escape(note)}[/dim]")
