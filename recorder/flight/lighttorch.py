"""The torch path of light capture's statistics (:mod:`recorder.flight.lightstats`): for
tensors the kernel does not read (other dtypes and devices, tensor subclasses, everything when
the kernel could not be built, a row whose sums overflowed float).

Reductions whose ``[k, 8]`` float64 results (:data:`TORCH_COLUMNS`) stay on the device until
the caller copies them (:func:`host_rows`, one copy per device); nothing synchronises.  On a
device, several tensors are reduced by segment in chunks of :data:`CHUNK` elements (a few dozen
kernels for an optimizer's tensors; on CPU, ``segment_reduce`` is slow, and tensors are reduced
one by one).  :func:`fill_rows` turns such columns into light rows with numpy (the kernel's
rows alone are built in C: ``tf_light_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tracefmt.light import LightFlags

__all__ = ["CHUNK", "TORCH_COLUMNS", "Columns", "Lengths", "fill_rows", "host_rows", "torch_stats"]

#: Columns of a torch row: sums and extremes over the finite values, counts, the centred sum of
#: squares, and the module's inputs' float64 sum (non-finite: they held NaN or Inf; 0: unchecked).
TORCH_COLUMNS = ("sum", "sumsq", "min", "max", "nan", "inf", "centred", "inputs")
#: Elements reduced together by segment in one torch call (bounds its temporary copies).
CHUNK = 1 << 22


def _flat(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().reshape(-1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


#: Segment lengths on devices, made once (a host-to-device copy may wait for the device).
Lengths = dict[tuple[torch.device, tuple[int, ...]], torch.Tensor]


def torch_stats(
    tensors: Sequence[torch.Tensor],
    *,
    together: bool = False,
    lengths: Lengths | None = None,
    segments: bool | None = None,
) -> torch.Tensor:
    """``[k, 8]`` float64 statistics (:data:`TORCH_COLUMNS`, ``inputs`` 0) of ``tensors``, one
    row each (``together``: one row for all), on their one device, without a sync.  Several
    tensors are reduced by ``segments`` (default: off CPU, where ``segment_reduce`` is slow)."""
    flats = [_flat(t) for t in tensors]
    device = flats[0].device if flats else torch.device("cpu")
    with torch.no_grad():
        if together:
            return _rows_of([x for x in flats if x.numel()], None, device)
        parts: list[torch.Tensor] = []
        group: list[torch.Tensor] = []
        chunk = CHUNK if (device.type != "cpu" if segments is None else segments) else 0
        for x in [*flats, None]:
            if group and (x is None or sum(g.numel() for g in group) + x.numel() > chunk):
                sizes = tuple(g.numel() for g in group)
                on = None
                if len(group) > 1:
                    cache = {} if lengths is None else lengths
                    on = cache.get((device, sizes))
                    if on is None:
                        on = cache[device, sizes] = torch.tensor(sizes).to(device, non_blocking=True)
                parts.append(_rows_of(group, on, device))
                group = []
            if x is not None:
                group.append(x)
        return torch.cat(parts) if parts else torch.zeros((0, 8), dtype=torch.float64)


def _rows_of(
    group: list[torch.Tensor], lengths: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """One row per tensor of ``group`` (``lengths``: by segment), or one over all of it (plain
    reductions: int64 counts, float64 sums without a float64 copy)."""
    n = sum(g.numel() for g in group)
    if not n:
        empty = [[0.0, 0.0, math.nan, math.nan, 0.0, 0.0, 0.0, 0.0]] * len(group or [0])
        return torch.tensor(empty, dtype=torch.float64).to(device, non_blocking=True)
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in group) else torch.float32
    x = torch.cat([g.to(dtype) for g in group]) if len(group) > 1 else group[0]
    if lengths is None and x.device.type == "cpu":  # may look at values: no masks when finite
        a, b = (float(v) for v in torch.aminmax(x))
        if math.isfinite(a) and math.isfinite(b):
            v, u = (float(r) for r in torch.var_mean(x, correction=0))
            q = float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
            return torch.tensor([[u * n, q, a, b, 0.0, 0.0, v * n, 0.0]], dtype=torch.float64)

    def red(v: torch.Tensor, how: str = "sum") -> torch.Tensor:
        if lengths is None:
            r = v.sum(dtype=torch.float64) if how == "sum" else getattr(v, "a" + how)()
            return r.double().reshape(1)
        return torch.segment_reduce(v.double() if how == "sum" else v, how, lengths=lengths).double()

    finite = torch.isfinite(x)
    nan, m = red(x != x), red(finite)
    kept = torch.where(finite, x, 0.0)
    total = red(kept)
    lo, hi = red(torch.where(finite, x, math.inf), "min"), red(torch.where(finite, x, -math.inf), "max")
    mean = (total / m.clamp(min=1)).to(dtype)
    if lengths is not None:
        mean = torch.repeat_interleave(mean, lengths, output_size=x.numel())
    d = torch.where(finite, x - mean, 0.0)
    centred = red(d * d) - red(d).square() / m.clamp(min=1)  # Sum (x - mean)^2, mean's rounding removed
    inf: torch.Tensor = (x.numel() if lengths is None else lengths) - m - nan
    cols = [total, red(kept * kept), lo, hi, nan, inf, centred, torch.zeros_like(total)]
    return torch.stack(cols, dim=1)


def host_rows(rows: list[torch.Tensor]) -> np.ndarray:
    """``rows`` (results of :func:`torch_stats`, on any devices) on the host, concatenated in
    order, with one copy per device."""
    host = list(rows)
    for device in {r.device for r in rows}:
        js = [j for j, r in enumerate(rows) if r.device == device]
        together = torch.cat([rows[j] for j in js]).cpu()
        sizes = [len(rows[j]) for j in js]
        for j, part in zip(js, torch.split(together, sizes), strict=True):
            host[j] = part
    return torch.cat(host).numpy()


#: A row's columns for :func:`fill_rows`: sum, sum of squares, min, max, NaN and Inf counts, the
#: centred sum of squares (NaN: derive it from the sums).
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_MOMENTS = ("min", "max", "mean", "std", "norm")
_COUNTS, _MOMENTS_FLAG = int(LightFlags.COUNTS), int(LightFlags.MOMENTS)


def fill_rows(
    out: np.ndarray, numel: np.ndarray, cols: Columns, neg: np.ndarray, inputs: np.ndarray | None
) -> None:
    """Moments, counts and flags of ``out`` from ``cols``; ``neg`` rows describe the negated
    tensor; ``inputs`` is the torch rows' inputs' sum (non-finite: ``INPUTS_NONFINITE``).
    Few numpy calls, each over all rows: this runs at every step."""
    total, sumsq, lo, hi, nan, inf, centred = cols
    m = numel - nan - inf
    mm = np.maximum(m, 1)
    mean = total / mm
    centred = np.where(np.isnan(centred), sumsq - total * mean, centred)
    std = np.sqrt(np.maximum(centred, 0.0) / mm)
    norm = np.sqrt(sumsq)
    # a diverging run's huge values overflow the sums: no moments then, never infinite ones
    ok = (m > 0) & np.isfinite(mean + std + norm)
    if neg.any():
        lo, hi, mean = np.where(neg, -hi, lo), np.where(neg, -lo, hi), np.where(neg, -mean, mean)
    moments = np.stack([lo, hi, mean, std, norm])
    np.copyto(moments, np.nan, where=~ok)
    flags = np.where(ok, _COUNTS | _MOMENTS_FLAG, _COUNTS).astype(np.uint8)
    if inputs is not None:
        flags[~np.isfinite(inputs)] |= np.uint8(LightFlags.INPUTS_NONFINITE)
    out["flags"], out["nan"], out["inf"] = flags, nan, inf
    for name, values in zip(_MOMENTS, moments, strict=True):
        out[name] = values
