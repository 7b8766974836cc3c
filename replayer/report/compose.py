"""``replayer report``: one self-contained HTML page about a run.

:func:`build_report` gathers the sections in the order a reader asks their questions: what ran
(provenance, ranks, steps), what went wrong (every trigger event, explained by ``replayer why``),
since when (loss, scalars, step time and per-module norms across the run), what the model is
(``replayer summary``), where the time goes (the costliest ops of one step) and how to look
closer (that step as a Perfetto trace to download, the commands that show it).  Each section
reads only what it shows; a section the run has no data for says so instead of failing.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from pathlib import Path

from replayer.report.charts import run_charts
from replayer.report.gather import (
    OpCost,
    Overview,
    costly_ops,
    focus_step,
    overview,
    summary_fragment,
    why_fragment,
)
from replayer.report.htmlpage import Download, Image, Section, Table, render_page
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace

__all__ = ["ReportOptions", "build_report", "write_report"]


@dataclass(frozen=True)
class ReportOptions:
    """``rank``: the rank the step sections detail (default: the first); ``step``: the full
    step they detail (default: :func:`~replayer.report.gather.focus_step`); ``top_ops``: rows of
    the costliest-ops table; ``modules``: per-module norm lines per figure; ``embed_mb``: the
    largest step trace embedded for download (a larger one is left to the command shown);
    ``summary_depth``: the deepest modules the model table lists (None: all)."""

    rank: int | None = None
    step: int | None = None
    top_ops: int = 15
    modules: int = 8
    embed_mb: float = 25.0
    summary_depth: int | None = 3


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _overview_section(ov: Overview) -> Section:
    prov = ov.provenance
    rows = [
        ("run", ov.path),
        ("run id", ov.run_id or "-"),
        (
            "ranks",
            f"{ov.world_size} (" + ", ".join(f"{r}: {s}" for r, s in ov.rank_status.items()) + ")",
        ),
        (
            "full steps",
            f"{ov.full_steps} (steps {ov.first_step}..{ov.last_step})" if ov.full_steps else "0",
        ),
        ("light steps", str(ov.light_steps)),
        ("events", str(ov.events)),
        ("steps where an op created NaN/Inf", str(ov.steps_nonfinite_created)),
        ("steps whose loss or state held NaN/Inf", str(ov.steps_nonfinite_state)),
        ("median step", f"{ov.median_step_s * 1e3:.1f} ms" if ov.median_step_s else "-"),
        ("format", ov.format_version),
    ]
    versions = [(k, str(v)) for k, v in sorted(prov.items()) if v not in (None, "", {})]
    return Section(
        anchor="run",
        title="Run",
        tables=(
            Table(("", ""), tuple(rows)),
            Table(("written by", ""), tuple(versions), caption="Provenance"),
        ),
    )


def _ops_section(ops: list[OpCost], rank: int, step: int, trace_path: str) -> Section:
    rows = tuple(
        (
            o.name,
            o.module or "(top level)",
            o.phase,
            str(o.calls),
            f"{o.host_ms:.3f}",
            f"{o.share * 100:.1f}%",
            _bytes(o.mem_bytes),
        )
        for o in ops
    )
    table = Table(
        ("op", "module", "phase", "calls", "host ms", "share", "allocated"),
        rows,
        numeric=frozenset({3, 4, 5, 6}),
        caption=f"Rank {rank}, step {step}: ops by total host time",
    )
    quoted = shlex.quote(trace_path)
    return Section(
        anchor="ops",
        title="Where the time goes",
        intro="Host time the recorder measured per op (below autograd), summed by op, module and phase.",
        tables=(table,),
        commands=(
            f"tracefmt show {quoted} --step {step} --rank {rank} --sort time --limit 30",
            f"tracefmt show {quoted} --step {step} --rank {rank} --sort memory --limit 30",
        ),
    )


def _charts_section(trace: Trace, rank: int, modules: int) -> Section:
    charts = run_charts(trace, rank, modules)
    return Section(
        anchor="timelines",
        title="Across the run",
        intro=f"Rank {rank}: every recorded step (full and light), events marked.",
        images=tuple(Image(c.title, c.png, c.caption) for c in charts if c.png),
        notes=tuple(c.note for c in charts if not c.png),
        commands=(
            f"replayer timeline {shlex.quote(str(trace.path))} --metric norm --module '*' "
            "--phase backward -o grads.png",
        ),
    )


def _export_section(trace: Trace, step: int, path: str, embed_mb: float) -> Section:
    """The detailed step as a Perfetto trace to download (every rank that has it), when it fits
    in one file of at most ``embed_mb`` MB; the commands that export and view it either way.
    Exported as ``tracefmt export-trace`` does, one rank in memory at a time."""
    import tempfile

    from tracefmt.traceexport import export_trace

    quoted = shlex.quote(path)
    commands = (
        f"tracefmt export-trace {quoted} --step {step} -o step{step}.json   # open in ui.perfetto.dev",
        f"replayer export {quoted} --step {step} --phase forward -o step{step}.onnx",
        f"replayer view {quoted} --step {step}",
    )
    with tempfile.TemporaryDirectory(prefix="tracefmt-report-") as tmp:
        done = export_trace(trace, step, Path(tmp) / "step.json", max_bytes=int(embed_mb * 1e6))
        data = done.files[0].read_bytes() if len(done.files) == 1 else b""
    ranks = done.ranks
    if not data:
        note = (
            f"The step's trace is larger than the {embed_mb:g} MB the page embeds (it takes "
            f"{len(done.files)} files of that size): export it with the first command."
        )
        return Section(
            anchor="export", title=f"Step {step} in Perfetto", notes=(note,), commands=commands
        )
    plural = "s" if len(ranks) != 1 else ""
    label = f"step {step} as a Perfetto trace ({len(data) / 1e6:.1f} MB, {len(ranks)} rank{plural})"
    return Section(
        anchor="export",
        title=f"Step {step} in Perfetto",
        intro="Open the file in ui.perfetto.dev or chrome://tracing: one process per rank, "
        "ops nested in modules and phases.",
        downloads=(Download(label, f"step{step}.json", data),),
        commands=commands,
    )


def build_report(
    trace: Trace, options: ReportOptions | None = None, progress: ProgressFn | None = None
) -> str:
    """The report page of ``trace`` as HTML text (see the module docstring).  ``progress`` is
    called with (sections done, sections)."""
    opts = options or ReportOptions()
    rank = opts.rank if opts.rank is not None else (trace.ranks[0] if trace.ranks else 0)
    if trace.ranks:
        trace.rank_file(rank)  # a rank the run lacks: its TraceError names the ranks it has
    builders = 5
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, builders)

    ov = overview(trace)
    sections = [_overview_section(ov)]
    tick()

    count, why_html = why_fragment(trace)
    if count:
        sections.append(
            Section(
                anchor="events",
                title=f"Events ({count})",
                intro="Each trigger event and where it started, as replayer why explains it.",
                html=why_html,
                commands=(f"replayer why {shlex.quote(ov.path)}",),
            )
        )
    else:
        sections.append(Section(anchor="events", title="Events", intro="No trigger event was recorded."))
    tick()

    if trace.ranks:
        sections.append(_charts_section(trace, rank, opts.modules))
    tick()

    step = focus_step(trace, rank, opts.step) if trace.ranks else None
    if step is not None:
        summary, summary_html = summary_fragment(trace, rank, step, opts.summary_depth)
        sections.insert(
            1,
            Section(
                anchor="model",
                title="Model",
                intro=f"Rank {rank}, step {step}: the modules that ran, with their parameters, "
                "forward multiply-adds, host time and bytes (replayer summary).",
                html=summary_html,
                notes=summary.notes,
                commands=(f"replayer summary {shlex.quote(ov.path)} --step {step} --rank {rank}",),
            ),
        )
        ops = costly_ops(trace.step(step, rank), opts.top_ops)
        sections.append(_ops_section(ops, rank, step, ov.path))
    tick()

    if step is not None:
        sections.append(_export_section(trace, step, ov.path, opts.embed_mb))
    tick()

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{ov.path} · {ov.full_steps} full and {ov.light_steps} light steps · made {when}"
    return render_page(f"tracefmt report: {Path(ov.path).name}", subtitle, sections)


def write_report(
    trace: Trace,
    out: str | Path,
    options: ReportOptions | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Write :func:`build_report`'s page to ``out``; returns the path."""
    path = Path(out)
    path.write_text(build_report(trace, options, progress), encoding="utf-8")
    return path
