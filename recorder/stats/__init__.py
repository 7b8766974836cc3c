"""Per-tensor statistics and fingerprints of a captured step, computed on the tensor's device.

* :mod:`recorder.stats.cpu` - :class:`StatsCollector` and :class:`PendingStats`, the CPU path;
* :mod:`recorder.stats.native` - the one-pass C kernel (``fused_stats.c``) for float32 and
  bfloat16 CPU tensors, and its histogram pass, compiled on first use;
* :mod:`recorder.stats.smallcpu` - the small CPU tensors of a step, copied and reduced together;
* :mod:`recorder.stats.device` - reductions that stay on an accelerator;
* :mod:`recorder.stats.common` - what the paths share: dtype classes, fingerprint, histograms.
"""

from recorder.stats.cpu import PendingStats, StatsCollector

__all__ = ["PendingStats", "StatsCollector"]
