"""A small character-level GPT trained on text it generates; recorded with the recorder.

``python -m recorder.examples.gpt --steps 20 --out runs/demo``

Data parallel, every rank recording into one run directory::

    torchrun --standalone --nproc_per_node=2 -m recorder.examples.gpt --ddp --out runs/ddp

The model follows nanoGPT (token and position embeddings, pre-norm blocks of causal self-attention
and an MLP, a weight-tied head) at a size that runs a step in tens of milliseconds on 2 CPU cores.
The text comes from a small seeded grammar, so the example needs no download and is the same
everywhere.
"""

from __future__ import annotations

import functools
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from recorder.examples._common import (
    Batch,
    Faults,
    add_fault_args,
    finish_distributed,
    init_distributed,
    parser,
    run,
    setup,
)

_SUBJECTS = [
    "the recorder",
    "a tensor",
    "the optimizer",
    "every step",
    "the gradient",
    "a small model",
    "the loss",
    "our trace",
    "the writer",
    "one parameter",
]
_VERBS = ["keeps", "reads", "changes", "writes", "follows", "records", "compares", "shows"]
_OBJECTS = [
    "the numbers",
    "each op",
    "its shape",
    "the module path",
    "a fingerprint",
    "the last step",
    "every value",
    "the spike",
    "a histogram",
    "the backward pass",
]
_ENDINGS = [".", ".", ".", "!", "?", ", and then it sleeps.", " before the next batch."]


def make_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """Deterministic English-like text from a tiny grammar."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        s = s[0].upper() + s[1:] + rng.choice(_ENDINGS) + ("\n" if rng.random() < 0.2 else " ")
        parts.append(s)
        size += len(s)
    return "".join(parts)[:n_chars]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.1


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """nanoGPT's structure; ``forward(idx, targets)`` returns the loss (logits without targets)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: a shared parameter
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class CharData:
    """Random (input, target) windows of the encoded text."""

    def __init__(
        self,
        text: str,
        block_size: int,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor([index[c] for c in text], dtype=torch.long)
        # shard (i, n): the i-th of n contiguous pieces of the text (data parallel ranks)
        i, n = shard
        piece = len(data) // n
        if not 0 <= i < n or piece <= block_size + 1:
            raise ValueError(f"Shard {i} of {n} leaves too little text for windows of {block_size}.")
        self.data = data[i * piece : (i + 1) * piece]
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.gen = torch.Generator().manual_seed(seed + i)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def batch(self, step: int) -> Batch:
        starts = torch.randint(
            len(self.data) - self.block_size - 1, (self.batch_size,), generator=self.gen
        )
        x = torch.stack([self.data[i : i + self.block_size] for i in starts.tolist()])
        y = torch.stack([self.data[i + 1 : i + 1 + self.block_size] for i in starts.tolist()])
        return x.to(self.device), y.to(self.device)


def build(
    *,
    layers: int = 2,
    embd: int = 64,
    heads: int = 4,
    block: int = 64,
    batch: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    foreach: bool | None = None,
    shard: tuple[int, int] = (0, 1),
    init_seed: int | None = None,
) -> tuple[GPT, torch.optim.Optimizer, CharData]:
    """Model, AdamW optimizer and data of the example (also used by tests and benchmarks).

    ``shard=(rank, world_size)``: this data-parallel rank's piece of the text; the model is the
    same on every rank (same seed) unless ``init_seed`` gives its initialisation a seed of its own.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    data = CharData(make_text(seed=seed), block, batch, dev, seed=seed, shard=shard)
    if init_seed is not None:
        torch.manual_seed(init_seed)
    model = GPT(GPTConfig(data.vocab_size, block, layers, heads, embd)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, foreach=foreach)
    return model, optimizer, data


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("Train and record a small character-level GPT.")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--ddp",
        action="store_true",
        help="data parallel under torchrun (gloo on CPU, nccl on CUDA), one run dir for all ranks",
    )
    add_fault_args(p)
    args = p.parse_args(argv)
    if not args.ddp and (args.extra_allreduce or args.tamper_grad or args.unsynced_init):
        p.error("--extra-allreduce, --tamper-grad and --unsynced-init need --ddp.")
    device = setup(args)
    world = init_distributed(args) if args.ddp else None
    try:
        faults = None if world is None else Faults.from_args(args, world)
        unsynced = faults is not None and faults.unsynced_init
        model, optimizer, data = build(
            layers=args.layers,
            embd=args.embd,
            heads=args.heads,
            block=args.block,
            batch=args.batch,
            device=device if world is None else world.device,
            seed=args.seed,
            shard=(0, 1) if world is None else (world.rank, world.world_size),
            init_seed=args.seed + world.rank if world is not None and unsynced else None,
        )
        run(
            args,
            model,
            optimizer,
            data.batch,
            lambda m, b: m(b[0], b[1]),
            name="gpt",
            wrap=None if world is None else functools.partial(_ddp, init_sync=not unsynced),
            world=world,
            faults=faults,
        )
    finally:
        if world is not None:
            finish_distributed()
    return 0


def _ddp(model: nn.Module, *, init_sync: bool = True) -> nn.Module:
    """``DistributedDataParallel`` over ``model`` on its device (CPU: no device ids);
    ``init_sync=False``: no broadcast of rank 0's parameters (``--unsynced-init``; DDP has the
    argument from torch 2.6 on)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    if init_sync:
        return DistributedDataParallel(model, device_ids=ids)
    if "init_sync" not in inspect.signature(DistributedDataParallel).parameters:
        raise SystemExit(
            f"--unsynced-init needs DistributedDataParallel(init_sync=False), which torch "
            f"{torch.__version__} does not have (it came with torch 2.6)."
        )
    return DistributedDataParallel(model, device_ids=ids, init_sync=False)


if __name__ == "__main__":
    sys.exit(main())
