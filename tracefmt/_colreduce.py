"""One number per series and step from the statistics of its members, for :mod:`tracefmt.columns`.

A series is one tensor, or several taken together (a module's outputs, the gradients of a
module's parameters).  Each member observation is one statistics row (``stats`` or
``light_stats``) with a *key*: ``series * steps + step position``.  The statistics of the union
of a key's members follow from theirs (spec section 5.7: over the finite values): the L2 norm
from the sum of the squared norms, the mean and population standard deviation from the first two
moments weighted by the finite element counts, the counts by adding them.  A key none of whose
members has the field set gets NaN ("not measured"), never 0.  Everything is a numpy reduction
over all observations at once (``bincount``, ``ufunc.at``): no Python object per observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from tracefmt.model import StatFlags

__all__ = ["FIELDS", "Observations", "reduce"]

_MOMENTS = int(StatFlags.MOMENTS)  # light_stats uses the same bits (LIGHT_MOMENTS, LIGHT_COUNTS)
_COUNTS = int(StatFlags.COUNTS)

#: The statistics fields each metric reads, besides ``flags`` (and the element counts).
FIELDS: dict[str, tuple[str, ...]] = {
    "norm": ("norm",),
    "max_abs": ("min", "max"),
    "min": ("min",),
    "max": ("max",),
    "mean": ("mean", "nan", "inf"),
    "std": ("mean", "std", "nan", "inf"),
    "nan": ("nan",),
    "inf": ("inf",),
    "nonfinite": ("nan", "inf"),
    "zeros": ("zero",),
}


class Observations(NamedTuple):
    """Member observations: ``key`` (series * steps + step position), the row ``flags``, the
    fields the metric reads (:data:`FIELDS`) and each member's number of elements."""

    key: np.ndarray
    flags: np.ndarray
    fields: Mapping[str, np.ndarray]
    numel: np.ndarray


def _sum(key: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    return np.bincount(key, weights=weights, minlength=size)[:size].astype(np.float64)


def _extreme(key: np.ndarray, values: np.ndarray, size: int, *, largest: bool) -> np.ndarray:
    out = np.full(size, -np.inf if largest else np.inf)
    (np.maximum if largest else np.minimum).at(out, key, values)
    out[np.isinf(out)] = np.nan
    return out


def _finite_counts(obs: Observations, ok: np.ndarray) -> np.ndarray:
    """Each observation's number of finite elements (its ``numel`` where counts were not set)."""
    n = obs.numel[ok].astype(np.float64)
    counted = (obs.flags[ok] & _COUNTS) != 0
    nonfinite = obs.fields["nan"][ok].astype(np.float64) + obs.fields["inf"][ok]
    out: np.ndarray = np.maximum(np.where(counted, n - nonfinite, n), 0.0)
    return out


def reduce(metric: str, obs: Observations, size: int) -> np.ndarray:
    """``metric`` (a key of :data:`FIELDS`) for each of ``size`` keys, NaN where not measured."""
    key, flags, f = obs.key, obs.flags, obs.fields
    moments = (flags & _MOMENTS) != 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if metric in ("nan", "inf", "nonfinite", "zeros"):
            ok = (flags & _COUNTS) != 0
            names = (
                ("nan", "inf") if metric == "nonfinite" else (metric if metric != "zeros" else "zero",)
            )
            total = sum((f[name][ok].astype(np.float64) for name in names), np.zeros(int(ok.sum())))
            seen = _sum(key[ok], None, size)
            return np.where(seen > 0, _sum(key[ok], total, size), np.nan)
        k = key[moments]
        if metric == "norm":
            seen = _sum(k, None, size)
            return np.where(seen > 0, np.sqrt(_sum(k, f["norm"][moments] ** 2, size)), np.nan)
        if metric == "max_abs":
            big = np.maximum(np.abs(f["min"][moments]), np.abs(f["max"][moments]))
            return _extreme(k, big, size, largest=True)
        if metric in ("min", "max"):
            return _extreme(k, f[metric][moments], size, largest=metric == "max")
        if metric not in ("mean", "std"):
            raise ValueError(f"No reduction for metric {metric!r}.")
        n = _finite_counts(obs, moments)
        mean_vals = f["mean"][moments]
        weight = _sum(k, n, size)
        members = _sum(k, None, size)
        single = members == 1  # one member: its own numbers, not a rounded recombination
        mean = np.where(single, _sum(k, mean_vals, size), _sum(k, mean_vals * n, size) / weight)
        if metric == "mean":
            return np.where(members > 0, mean, np.nan)
        std_vals = f["std"][moments]
        second = _sum(k, (std_vals**2 + mean_vals**2) * n, size) / weight
        std = np.where(single, _sum(k, std_vals, size), np.sqrt(np.maximum(second - mean**2, 0.0)))
        return np.where(members > 0, std, np.nan)
