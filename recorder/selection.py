"""Which tensors' full values the recorder keeps: :func:`select`, ``values="all"``, ``"leaves"``.

Plain frozen data and a predicate the capture engines call per (role, module, op, source); the
native engine caches the answer per such key, so the predicate must depend on nothing else.
Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ALL_VALUES",
    "LEAF_VALUES",
    "RANDOM_OPS",
    "ROLE_NAMES",
    "ValuesSelection",
    "is_random_op",
    "parse_values",
    "select",
]

#: Role names a values selection may use (the labels of :class:`tracefmt.model.Role`).
ROLE_NAMES = frozenset(
    {"activation", "input", "parameter", "buffer", "gradient", "optimizer_state", "constant"}
)
_ROLE_ALIASES = {
    "inputs": "input",
    "parameters": "parameter",
    "params": "parameter",
    "buffers": "buffer",
    "gradients": "gradient",
    "grads": "gradient",
    "activations": "activation",
    "optimizer": "optimizer_state",
    "optimizer_states": "optimizer_state",
    "constants": "constant",
}


def _strings(name: str, value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise TypeError(f"select({name}=...) takes non-empty strings, got {item!r}.")
    return items


#: The ops whose outputs are random draws, by name without the overload: those torch 2.13 tags
#: ``nondeterministic_seeded`` (fused attention and RNN kernels among them, whose dropout is
#: inside), and ``random``, ``binomial``, ``_sample_dirichlet`` and the in-place and feature
#: dropouts, which draw without the tag.  A leaves selection keeps their outputs: the one part of
#: a step its sources do not determine (tests/recorder/test_leaves.py checks the set against the
#: tags of the torch it runs with).
RANDOM_OPS: frozenset[str] = frozenset(
    (
        "aten::_cudnn_attention_backward",
        "aten::_cudnn_attention_forward",
        "aten::_cudnn_init_dropout_state",
        "aten::_cudnn_rnn",
        "aten::_efficient_attention_forward",
        "aten::_fill_mem_eff_dropout_mask_",
        "aten::_flash_attention_forward",
        "aten::_flash_attention_forward_no_dropout_inplace",
        "aten::_fused_dropout",
        "aten::_fused_sdp_choice",
        "aten::_lstm_mps",
        "aten::_nested_tensor_softmax_with_shape",
        "aten::_sample_dirichlet",
        "aten::_scaled_dot_product_attention_math",
        "aten::_scaled_dot_product_attention_math_for_mps",
        "aten::_scaled_dot_product_cudnn_attention",
        "aten::_scaled_dot_product_cudnn_attention_backward",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_scaled_dot_product_efficient_attention_backward",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_fused_attention_overrideable",
        "aten::_standard_gamma",
        "aten::_triton_scaled_dot_attention",
        "aten::alpha_dropout",
        "aten::alpha_dropout_",
        "aten::bernoulli",
        "aten::bernoulli_",
        "aten::binomial",
        "aten::cauchy",
        "aten::cauchy_",
        "aten::dropout",
        "aten::dropout_",
        "aten::exponential",
        "aten::exponential_",
        "aten::feature_alpha_dropout",
        "aten::feature_alpha_dropout_",
        "aten::feature_dropout",
        "aten::feature_dropout_",
        "aten::geometric",
        "aten::geometric_",
        "aten::gru",
        "aten::log_normal",
        "aten::log_normal_",
        "aten::lstm",
        "aten::miopen_rnn",
        "aten::multinomial",
        "aten::native_dropout",
        "aten::normal",
        "aten::normal_",
        "aten::normal_functional",  # registered when torch._inductor is imported
        "aten::poisson",
        "aten::rand",
        "aten::rand_like",
        "aten::randint",
        "aten::randint_like",
        "aten::randn",
        "aten::randn_like",
        "aten::random",
        "aten::random_",
        "aten::randperm",
        "aten::rnn_relu",
        "aten::rnn_tanh",
        "aten::rrelu",
        "aten::rrelu_",
        "aten::rrelu_with_noise",
        "aten::rrelu_with_noise_",
        "aten::rrelu_with_noise_functional",
        "aten::scaled_dot_product_attention",
        "aten::uniform",
        "aten::uniform_",
    )
)


def is_random_op(op: str) -> bool:
    """Whether ``op`` (``aten::bernoulli_.float``, or ``aten::bernoulli_``) draws random numbers.

    A fused attention kernel counts whatever its dropout probability: the name does not say it.
    """
    return op in RANDOM_OPS or op.rsplit(".", 1)[0] in RANDOM_OPS


@dataclass(frozen=True)
class ValuesSelection:
    """Which tensors get their full values recorded.

    Each criterion that is set must hold (they combine with AND); inside one criterion any item
    may match (OR).  ``None`` means "any".  A tensor's module and op are those of the op that
    produced it, or, for a tensor that entered the step from outside (parameters, inputs), of the
    first op that read it.

    ``leaves``: only the step's *leaves*, what it starts from: every value that entered the step
    from outside it (parameters, buffers and optimizer state as they were before the step's first
    op touched them, the batch, any other tensor read from outside) and the outputs of random ops
    (:data:`RANDOM_OPS`).  ``replayer check --chain`` re-executes the rest of the step from them.
    """

    roles: frozenset[str] | None = None
    modules: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None
    leaves: bool = False

    def matches(self, role: str, module: str, op: str, source: bool = False) -> bool:
        """True when a tensor of ``role``, made or first read by ``op`` in ``module``, is selected.

        ``op`` is the full overload name (``aten::mm.default``); a pattern may name the packet
        (``aten::mm``) or use globs (``aten::conv*``).  ``source``: the tensor entered the step
        from outside (``op`` is its first reader, not its producer).
        """
        if self.leaves and not source and not is_random_op(op):
            return False
        if self.roles is not None and role not in self.roles:
            return False
        if self.modules is not None and not any(fnmatch.fnmatchcase(module, p) for p in self.modules):
            return False
        if self.ops is not None:
            packet = op.rsplit(".", 1)[0]
            if not any(fnmatch.fnmatchcase(op, p) or fnmatch.fnmatchcase(packet, p) for p in self.ops):
                return False
        return True


ALL_VALUES = ValuesSelection()
#: ``values="leaves"``.
LEAF_VALUES = ValuesSelection(leaves=True)


def select(
    *,
    roles: str | Iterable[str] | None = None,
    modules: str | Iterable[str] | None = None,
    ops: str | Iterable[str] | None = None,
    leaves: bool = False,
) -> ValuesSelection:
    """Choose the tensors whose full values are recorded.

    >>> select(roles=["parameters", "gradients"], modules="layers.0.*")
    >>> select(ops="aten::convolution*")
    >>> select(leaves=True, modules="h.0.*")  # the leaves of one block

    Roles: ``inputs, parameters, buffers, gradients, activations, optimizer_state, constants`` (the
    singular forms work too).  Modules and ops are ``fnmatch`` globs.  ``leaves=True`` narrows
    the selection to the step's leaves (:class:`ValuesSelection`); ``select(leaves=True)`` is
    ``values="leaves"``.
    """
    role_items = _strings("roles", roles)
    role_set: frozenset[str] | None = None
    if role_items is not None:
        normalised = [_ROLE_ALIASES.get(r, r) for r in role_items]
        unknown = sorted(set(normalised) - ROLE_NAMES)
        if unknown:
            raise ValueError(
                f"Unknown role(s) {', '.join(map(repr, unknown))} in select(roles="
                f"...); use {', '.join(sorted(ROLE_NAMES))}."
            )
        role_set = frozenset(normalised)
    if not isinstance(leaves, bool):
        raise TypeError(f"select(leaves=...) takes True or False, got {leaves!r}.")
    return ValuesSelection(role_set, _strings("modules", modules), _strings("ops", ops), leaves)


def parse_values(value: object) -> ValuesSelection | None:
    """``values=``: ``None``, ``"all"``, ``"leaves"`` or a :func:`select` result."""
    if value == "all":
        return ALL_VALUES
    if value == "leaves":
        return LEAF_VALUES
    if isinstance(value, str):
        raise ValueError(
            f"record(values={value!r}) is not a selection; pass 'all', 'leaves' or "
            "recorder.select(roles=..., modules=..., ops=..., leaves=...)."
        )
    if value is not None and not isinstance(value, ValuesSelection):
        raise TypeError(
            f"record(values=...) takes recorder.select(...), 'all' or 'leaves', got {value!r}."
        )
    return value
