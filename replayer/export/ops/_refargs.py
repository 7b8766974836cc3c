"""What a numpy reference of a custom op sees: its inputs by schema position, attributes, outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tracefmt.model import TensorMeta


class RefArgs:
    """The arguments of one recorded op, as numpy arrays and plain attribute values.

    ``inputs`` are in recorded order, ``input_args`` their (schema position, list item) pairs;
    ``outputs`` the metadata of the recorded outputs by output slot.  A reference returns its
    outputs in schema order (``None`` for one it did not compute); the recorder numbers slots
    among the tensors actually returned, so outputs are matched to slots in order, skipping the
    ``None`` ones.
    """

    def __init__(
        self,
        name: str,
        inputs: Sequence[np.ndarray],
        input_args: Sequence[tuple[int, int]],
        attrs: Mapping[str, Any],
        outputs: Mapping[int, TensorMeta],
    ) -> None:
        self.name = name
        self.attrs = attrs
        self.outputs = outputs
        #: Set by a reference: the longest sum behind one output element (for the tolerance).
        self.reduction = 1
        #: Set by a reference: per output slot, the size of the terms summed into one element, so
        #: an output that cancels to rounding noise is judged against its terms, not itself.
        self.scales: dict[int, float] = {}
        self._by_arg: dict[tuple[int, int], np.ndarray] = {}
        for array, (arg, item) in zip(inputs, input_args, strict=True):
            self._by_arg.setdefault((arg, item), array)

    def has(self, arg: int) -> bool:
        return any(a == arg for a, _ in self._by_arg)

    def t(self, arg: int, item: int = -1) -> np.ndarray:
        """The tensor passed as schema argument ``arg`` (list item ``item``)."""
        try:
            return self._by_arg[(arg, item)]
        except KeyError:
            raise KeyError(f"{self.name}: argument {arg} was not a recorded tensor") from None

    def tl(self, arg: int) -> list[np.ndarray]:
        """The tensors of list argument ``arg``, in list order."""
        return [
            v
            for (a, _), v in sorted(
                ((k, v) for k, v in self._by_arg.items() if k[0] == arg), key=lambda kv: kv[0][1]
            )
        ]

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return default if value is None else value

    def out_dtype(self, slot: int = 0) -> np.dtype[Any]:
        from replayer.export.ops.opcontext import numpy_dtype

        meta = self.outputs.get(slot)
        if meta is None:
            raise KeyError(f"{self.name}: output {slot} was not recorded")
        return numpy_dtype(meta.dtype)


#: A reference: the recorded op's arguments -> its outputs by slot (``None`` for one not computed).
Reference = Callable[[RefArgs], Sequence[np.ndarray | None]]


def rms(x: np.ndarray) -> float:
    """Root mean square (0 for an empty array)."""
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64))))) if x.size else 0.0
