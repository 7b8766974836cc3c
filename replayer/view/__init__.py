"""``replayer view``: a recorded step (or one side of a diff) served to Netron or Model Explorer.

:mod:`replayer.view.netron` exports the step with modules folded to a depth Netron lays out in
seconds, marks divergent ops for ``view --diff``, and serves the model on 127.0.0.1.  Large
steps go to Model Explorer: :mod:`replayer.view.explorer` (graph JSON, built from
:mod:`replayer.view.nodes`, :mod:`replayer.view.layers`, :mod:`replayer.view.parts`),
:mod:`replayer.view.overlays`, :mod:`replayer.view.nanpath` and :mod:`replayer.view.divergence`
(node-data overlays), :mod:`replayer.view.cache` (conversions kept on disk) and
:mod:`replayer.view.webapp` (the page on 127.0.0.1).
"""

from replayer.view.netron import (
    Prepared,
    prepare,
    prepare_diff,
    serve_diff,
    serve_diff_step,
    serve_step,
    stop,
)

__all__ = ["Prepared", "prepare", "prepare_diff", "serve_diff", "serve_diff_step", "serve_step", "stop"]
