"""Test-side names for the synthetic traces in :mod:`tracefmt.synthetic`."""

from tracefmt.synthetic import mlp_graph, synthetic_step, write_synthetic

__all__ = ["mlp_graph", "synthetic_step", "write_synthetic"]
