"""``replayer view``: a recorded step (or one side of a diff) served to Netron in the browser.

:mod:`replayer.view.netron` exports the step with modules folded to a depth Netron lays out in
seconds, marks divergent ops for ``view --diff``, and serves the model on 127.0.0.1.
"""

from replayer.view.netron import Prepared, prepare, prepare_diff, serve_diff, serve_step, stop

__all__ = ["Prepared", "prepare", "prepare_diff", "serve_diff", "serve_step", "stop"]
