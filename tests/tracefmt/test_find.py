"""Locating a step number in the step index: correct, and O(log n) reads on any ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracefmt import TraceError
from tracefmt.reader import RankFile


class _Index(RankFile):
    """A RankFile whose step index is an in-memory array, counting reads."""

    def __init__(self, steps: np.ndarray) -> None:  # no HDF5 file behind it
        self.steps, self.path, self.rank, self.reads = steps, "mem", 0, 0  # type: ignore[assignment]

    def num_steps(self) -> int:
        return len(self.steps)

    def _step_number(self, i: int, index: str = "steps") -> int:
        self.reads += 1
        return int(self.steps[i])


@pytest.mark.parametrize("kind", ["regular", "random gaps", "exponential"])
def test_find_every_present_step_and_refuse_absent(kind: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 3000))
        if kind == "regular":
            steps = np.arange(n) * int(rng.integers(1, 5)) + int(rng.integers(0, 100))
        elif kind == "random gaps":
            steps = np.cumsum(rng.integers(1, 1000, n))
        else:
            steps = np.unique(np.exp(rng.random(n) * 20).astype(np.int64))
        index = _Index(steps)
        present = set(steps.tolist())
        for q in [*rng.choice(steps, 5).tolist(), steps[0] - 1, steps[-1] + 1, steps[n // 2] + 1]:
            index.reads = 0
            if int(q) in present:
                assert steps[index.find(int(q))] == q
            else:
                with pytest.raises(TraceError, match="not in"):
                    index.find(int(q))
            assert index.reads <= 4 + 2 * math.ceil(math.log2(len(steps) + 1))
        if kind == "regular":  # interpolation finds a regular schedule in a couple of reads
            index.reads = 0
            index.find(int(steps[len(steps) // 3]))
            assert index.reads <= 3


def test_unsorted_index_terminates() -> None:
    index = _Index(np.array([5, 3, 9, 1, 7, 2, 8]))
    with pytest.raises(TraceError):
        index.find(4)
