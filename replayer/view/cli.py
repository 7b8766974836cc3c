"""``replayer view``: serve one step with Netron or Model Explorer on 127.0.0.1 until Ctrl-C.

Thin: :func:`replayer.view.choice.choose_viewer` picks the viewer, :mod:`replayer.view.netron`
and :mod:`replayer.view.explorer` / :mod:`replayer.view.webapp` do the work.
:func:`echo_explorer_export` is ``replayer export --format explorer``'s half.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

import tracefmt
from replayer.errors import ReplayError
from replayer.export.mapping import PHASES
from replayer.view.choice import VIEWERS, choose_viewer
from tracefmt.progress import progress_bar

if TYPE_CHECKING:
    from replayer.view.netron import DiffView

__all__ = ["echo_explorer_export", "serve_diff_view", "view"]


def _serve_until_stopped(
    running: Callable[[], bool], stop: Callable[[], None], lines: list[str]
) -> None:
    """Print ``lines``, then wait until Ctrl-C (or the server ends) and stop the server."""
    # Ctrl-C sets an event rather than raising wherever the main thread happens to be.
    stopping = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        for line in lines:
            click.echo(line)
        while not stopping.is_set() and running():
            stopping.wait(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
        stop()
    click.echo("stopped")


def _netron_lines(host: str, port: int) -> tuple[Callable[[], bool], Callable[[], None]]:
    import netron

    from replayer.view.netron import stop

    return (lambda: bool(netron.status((host, port)))), (lambda: stop(host, port))


def _step_ops(trace: tracefmt.Trace, step: int, rank: int | None) -> int:
    for s in trace.summaries(rank):
        if s.step == step:
            return s.num_ops
    raise ReplayError(f"Step {step} is not in the trace; `tracefmt ls` lists its steps.")


@dataclass(frozen=True)
class ExplorerOptions:
    """What ``replayer view --viewer explorer`` serves (a step of a trace, its ops of ``phase``
    in modules matching ``module``) and how (port, browser, the conversion cache)."""

    trace: str
    step: int
    rank: int | None = None
    phase: str = "all"
    module: str | None = None
    port: int = 0
    browse: bool = False
    cache: bool = True


def _explorer(opts: ExplorerOptions, *, reason: str) -> None:
    """Convert (or take from the cache) and serve one step in Model Explorer until Ctrl-C;
    ``reason`` is why this viewer was chosen."""
    from replayer.view.cache import cached_export
    from replayer.view.webapp import serve_graph

    with tracefmt.open(opts.trace) as t, progress_bar("convert", "nodes") as progress:
        done = cached_export(
            t,
            opts.step,
            rank=opts.rank,
            phase=opts.phase,
            module=opts.module,
            progress=progress,
            use_cache=opts.cache,
        )
    graph = done.graph
    if done.from_cache:
        click.echo("converted before: the graph comes from the cache (--no-cache converts again).")
    server = serve_graph(graph, port=opts.port)
    widest, children = graph.widest
    overlays = ", ".join(o.name for o in graph.overlays) or "none"
    lines = [
        reason,
        f"{opts.phase}: {graph.ops:,} ops and {graph.inputs:,} input tensors as nodes in layers by "
        f"phase and module (the widest, {widest or 'the top level'!r}, has {children} children). "
        "Double-click a layer to open it"
        + (
            f"; its big layers are {graph.graphs - 1} graphs of their own (the square on a "
            "part node, or the graph list at the top, opens one)"
            if graph.graphs > 1
            else ""
        )
        + f"; overlays (the eye icons): {overlays}.",
        f"serving step {opts.step} at {server.url} (Ctrl-C stops)",
    ]
    if graph.focus is not None:  # the step holds NaN/Inf: the NaN-path overlay comes first
        lines.insert(-1, f"NaN/Inf entered at {graph.focus}: the page opens on it.")
    if opts.browse:
        import webbrowser

        webbrowser.open(server.url)
    _serve_until_stopped(server.running, server.stop, lines)


def serve_diff_view(
    dv: DiffView,
    *,
    viewer: str = "auto",
    phase: str | None = None,
    module: str | None = None,
    depth: int | None = None,
    flat: bool = False,
    port: int = 0,
    browse: bool = False,
) -> None:
    """Serve side B's step of a diff (``view --diff``, ``diff --view``) until Ctrl-C: Model
    Explorer with the divergence overlay, opened on the origin, or Netron with divergent ops
    marked, as :func:`choose_viewer` picks for B's step."""
    from replayer.view.netron import serve_diff_step

    with tracefmt.open(dv.path) as t:
        choice = choose_viewer(viewer, _step_ops(t, dv.step, dv.rank))
    head = f"{len(dv.notes)} ops of B diverged from A" + ("" if dv.notes else " (identical)") + "."
    click.echo(head)
    if dv.origin is not None:
        click.echo(f"origin: {dv.origin}")
    if choice.viewer == "explorer":
        if depth is not None or flat:
            raise click.UsageError("--depth and --flat fold Netron's view; Model Explorer has layers.")
        from replayer.view.divergence import explorer_diff
        from replayer.view.webapp import serve_graph

        with progress_bar("convert", "nodes") as progress:
            graph = explorer_diff(dv, phase=phase or "all", module=module, progress=progress)
        server = serve_graph(graph, port=port)
        where = f" opened on the origin op {graph.focus}" if graph.focus else ""
        lines = [
            choice.reason,
            "overlays (the eye icons): " + ", ".join(o.name for o in graph.overlays) + ".",
            f"serving step {dv.step} of {dv.path}{where} at {server.url} (Ctrl-C stops)",
        ]
        if browse:
            import webbrowser

            webbrowser.open(server.url)
        _serve_until_stopped(server.running, server.stop, lines)
        return
    served = serve_diff_step(
        dv,
        phase=phase or "forward",
        module=module,
        depth=depth,
        auto_depth=not flat,
        port=port,
        browse=browse,
    )
    running, stop = _netron_lines(served.host, served.port)
    url_line = f"serving step {dv.step} of {dv.path} at {served.url} (Ctrl-C stops)"
    _serve_until_stopped(running, stop, [choice.reason, served.message, url_line])


@click.command()
@click.argument("trace", type=click.Path(exists=True), required=False)
@click.option("--step", "step_no", type=int, default=None, help="Step number (required without --diff).")
@click.option("--rank", type=int, default=None, help="Rank (default: lowest).")
@click.option(
    "--viewer",
    type=click.Choice(VIEWERS),
    default="auto",
    show_default=True,
    help="auto: Netron for small steps, Model Explorer for large ones (the message says why).",
)
@click.option(
    "--phase",
    type=click.Choice(PHASES),
    default=None,
    help="Ops of one phase (default: forward in Netron, all in Model Explorer).",
)
@click.option("--module", default=None, help="Only ops in modules matching this glob.")
@click.option(
    "--depth",
    type=int,
    default=None,
    help="Netron: fold modules deeper than this into expandable Module nodes "
    "(default: chosen from the op count).",
)
@click.option("--flat", is_flag=True, help="Netron: every op a node (no folding).")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--browse", is_flag=True, help="Open a web browser.")
@click.option(
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="Model Explorer: convert the step again instead of reusing an earlier conversion.",
)
@click.option(
    "--diff",
    "diff_sides",
    nargs=2,
    default=None,
    metavar="A B",
    help="Diff two TRACE[:STEP][@RANK] sides (as `replayer diff`) and show B's step "
    "(for whole runs the first that differs): Netron marks divergent ops '≠', Model Explorer "
    "colours each op by its relative difference and opens on the origin.",
)
def view(
    trace: str | None,
    step_no: int | None,
    rank: int | None,
    viewer: str,
    phase: str | None,
    module: str | None,
    depth: int | None,
    flat: bool,
    port: int,
    browse: bool,
    no_cache: bool,
    diff_sides: tuple[str, str] | None,
) -> None:
    """Serve one step with Netron or Model Explorer on 127.0.0.1 until Ctrl-C.

    Model Explorer (`pip install --no-deps ai-edge-model-explorer`) shows steps of 100,000 ops
    layer by layer, with statistics, time and memory as overlays (a step holding NaN/Inf also
    the path from where it entered to the loss, and the page opens there); a conversion is
    kept for the next view in the folder 'explorer' of the cache directory
    ($TRACEFMT_CACHE_DIR/explorer, else $XDG_CACHE_HOME/tracefmt/explorer, else
    ~/.cache/tracefmt/explorer; the last 8 conversions).  With
    --diff A B, no TRACE or --step: serve side B's step with the ops that diverge from A
    marked (Netron: node names start with '≠'; Model Explorer: an overlay of each op's
    relative difference, the page opened on the origin).
    """
    from replayer.view.netron import prepare_diff, serve_step

    if diff_sides:
        if trace is not None or step_no is not None or rank is not None:
            raise click.UsageError(
                "--diff A B names the sides itself (TRACE[:STEP][@RANK]); "
                "give no TRACE, --step or --rank with it."
            )
        serve_diff_view(
            prepare_diff(diff_sides[0], diff_sides[1]),
            viewer=viewer,
            phase=phase,
            module=module,
            depth=depth,
            flat=flat,
            port=port,
            browse=browse,
        )
        return
    if trace is None or step_no is None:
        raise click.UsageError("Give TRACE and --step (or --diff A B).")
    with tracefmt.open(trace) as t:
        choice = choose_viewer(viewer, _step_ops(t, step_no, rank))
        if choice.viewer == "netron":
            served = serve_step(
                t,
                step_no,
                rank=rank,
                phase=phase or "forward",
                module=module,
                depth=depth,
                auto_depth=not flat,
                port=port,
                browse=browse,
            )
    if choice.viewer == "explorer":
        if depth is not None or flat:
            raise click.UsageError("--depth and --flat fold Netron's view; Model Explorer has layers.")
        opts = ExplorerOptions(
            trace=trace,
            step=step_no,
            rank=rank,
            phase=phase or "all",
            module=module,
            port=port,
            browse=browse,
            cache=not no_cache,
        )
        _explorer(opts, reason=choice.reason)
        return
    running, stop = _netron_lines(served.host, served.port)
    url_line = f"serving step {step_no} at {served.url} (Ctrl-C stops)"
    _serve_until_stopped(running, stop, [choice.reason, served.message, url_line])


def echo_explorer_export(
    trace: str, step_no: int, rank: int | None, phase: str, module: str | None, output: str
) -> None:
    """``replayer export --format explorer``: write the graph JSON and its overlays, and say how
    to open them."""
    from replayer.view.cache import cached_export
    from replayer.view.explorer import write_export

    with tracefmt.open(trace) as t, progress_bar("export", "nodes") as progress:
        graph = cached_export(t, step_no, rank=rank, phase=phase, module=module, progress=progress).graph
    files = write_export(graph, output)
    overlays = files[1:]
    names = ", ".join(Path(f).name for f in overlays)
    click.echo(
        f"wrote {files[0]}: {graph.ops:,} ops and {graph.inputs:,} input tensors as Model Explorer "
        f"nodes (widest layer {graph.widest[1]} children)"
        + (f", and {len(overlays)} overlays: {names}" if overlays else "")
    )
    paths = ",".join(str(f) for f in overlays)
    click.echo(
        f"open with: model-explorer {files[0]}"
        + (f" --node_data_paths={paths}" if paths else "")
        + " --host=127.0.0.1 --no_open_in_browser"
    )
