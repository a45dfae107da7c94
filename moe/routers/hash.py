"""Hash routing: a fixed, parameter-free map from token (or node) ids to experts (Roller et al. 2021)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers._gating import token_ids_or_positions
from torch import Tensor

from circuitml.errors import ConfigError

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the signed int64 torch stores (same bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(h: Tensor, bits: int) -> Tensor:
    # Logical right shift on int64 (torch's >> is arithmetic): clear the sign-extended high bits.
    return (h >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(h: Tensor) -> Tensor:
    """The splitmix64 finaliser (Steele et al. 2014) on int64 tensors; integer multiply wraps mod 2^64."""
    h = h + _GOLDEN
    h = (h ^ _shr(h, 30)) * _MIX1
    h = (h ^ _shr(h, 27)) * _MIX2
    return h ^ _shr(h, 31)


def rendezvous_scores(ids: Tensor, num_experts: int, seed: int) -> Tensor:
    """``[N, E]`` int64 scores ``splitmix64(splitmix64(id ^ seed) + expert)`` of highest-random-weight hashing."""
    base = splitmix64(ids.long() ^ seed)
    return splitmix64(base[:, None] + torch.arange(num_experts, device=ids.device)[None, :])


def rendezvous_experts(ids: Tensor, num_experts: int, k: int, seed: int) -> Tensor:
    """``k`` distinct experts per id by highest-random-weight hashing (Thaler & Ravishankar 1998).

    Each (id, expert) pair gets a :func:`rendezvous_scores` score; an id goes to its ``k`` best-scoring
    experts. For ``k = 1`` every expert is equally likely; the choice depends only on the id. The scores rank
    every expert, so the ``k'`` best of a ``k`` route are its first ``k'`` (what lets overrides apply).
    """
    return rendezvous_scores(ids, num_experts, seed).topk(k, dim=-1).indices


def balanced_assignment_table(
    frequencies: Sequence[int] | np.ndarray | Tensor, num_experts: int, k: int = 1
) -> Tensor:
    """Balanced hash table of Roller et al. 2021 (Sec. 3): ids by decreasing frequency, each to the least-loaded.

    Greedy longest-processing-time assignment: ids are visited from most to least frequent and each one's ``k``
    slots go to the ``k`` distinct experts with the least load so far (ties to the lower expert id), so every
    expert ends within one id's frequency of the mean load. Returns ``table[V, k]`` long.
    """
    freq = np.asarray(torch.as_tensor(frequencies).cpu(), dtype=np.int64).reshape(-1)
    if k > num_experts:
        raise ConfigError(f"balanced hash: k: expected <= num_experts={num_experts}, got {k}")
    if (freq < 0).any():
        raise ConfigError("balanced hash: frequencies: expected non-negative counts")
    table = np.zeros((freq.shape[0], k), dtype=np.int64)
    heap = [(0, e) for e in range(num_experts)]
    for token in np.argsort(-freq, kind="stable"):
        picked = [heapq.heappop(heap) for _ in range(k)]
        for slot, (load, expert) in enumerate(picked):
            table[token, slot] = expert
            heapq.heappush(heap, (load + int(freq[token]), expert))
    return torch.from_numpy(table)


@dataclass
class HashConfig(RouterConfig):
    """Options of :class:`HashRouter`.

    Args:
        seed: salt of the hash; different seeds give independent random assignments.
        vocab_size: size of the id space of a balanced table (``balanced_hash``); ids at or beyond it, or all
            ids when no table was fitted, use the random hash.
    """

    seed: int = 0
    vocab_size: int | None = None
    balance_loss: str | None = None


@register_router("hash")
class HashRouter(Router):
    r"""Hash layers of Roller et al. 2021, "Hash Layers For Large Sparse Models" (NeurIPS).

    .. math::
        h_t = \frac{1}{k} \sum_{j=1}^{k} \mathrm{FFN}_{\mathrm{hash}_j(\mathrm{id}_t)}(x_t)

    The experts of a token depend only on its id (ctx ``token_ids[N]``: vocabulary ids, AIG node ids, ...; the
    row position when absent), never on ``x``; routing has no learned parameters and needs no balancing loss.
    ``k = 1`` is the paper's hash layer; ``k > 1`` sends a token to ``k`` distinct hashed experts with equal
    weight (the paper's MultiHash splits features instead). ``logits``/``probs`` are ``None``. Overrides use the
    hash's ranking of all experts: ``top_k`` keeps the ``k'`` best-hashed, rank ``r`` the ``r``-th.
    """

    config_class = HashConfig

    def __init__(self, config: HashConfig) -> None:
        super().__init__(config)
        # Empty until fitted: the random hash covers every id then.
        self.register_buffer("table", torch.zeros(0, config.top_k, dtype=torch.long))

    def example_ctx(self, num_tokens: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        return {"token_ids": torch.randint(0, 1000, (num_tokens,), generator=generator)}

    def reconfigure_top_k(self, k: int, config: RouterConfig | None = None) -> None:
        super().reconfigure_top_k(k, config)
        # The unfitted table is empty but shaped [0, k]: keep it in step so the saved state reloads.
        self.table = self.table.new_zeros(0, k)

    def expert_ids(self, ids: Tensor) -> Tensor:
        """``[N, k]`` experts of ``ids[N]`` (table lookup for fitted ids, random hash otherwise)."""
        if self.routing_override is not None:
            return self.select_topk(rendezvous_scores(ids, self.num_experts, self.config.seed))[1]
        experts = rendezvous_experts(ids, self.num_experts, self.top_k, self.config.seed)
        if self.table.numel():
            in_table = (ids >= 0) & (ids < self.table.shape[0])
            looked_up = self.table[ids.clamp(0, self.table.shape[0] - 1)].to(ids.device)
            experts = torch.where(in_table[:, None], looked_up, experts)
        return experts

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        ids = token_ids_or_positions(x, ctx.get("token_ids"))
        indices = self.expert_ids(ids)
        weights = torch.full(indices.shape, 1.0 / indices.shape[1], dtype=x.dtype, device=x.device)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(logits=None, probs=None, weights=weights, indices=indices, aux_losses={})


@register_router("balanced_hash")
class BalancedHashRouter(HashRouter):
    """Balanced hash routing (Roller et al. 2021, "Balanced assignment"): a fixed table from id frequencies.

    Call :meth:`fit` with the id frequencies of the training data (or with the ids themselves); each id then
    maps to the experts chosen by :func:`balanced_assignment_table`, so expected tokens per expert are balanced.
    Before fitting, a round-robin table over ``vocab_size`` ids is used (the balanced table for uniform
    frequencies). The table is a buffer: it is saved and loaded with the state dict. Its ``k`` columns are
    unranked, so no routing override is honoured and ``top_k`` cannot be changed.
    """

    overrides = frozenset()
    top_k_shapes_parameters = True  # table[V, k]

    def __init__(self, config: HashConfig) -> None:
        super().__init__(config)
        if config.vocab_size:
            self.fit(torch.ones(config.vocab_size, dtype=torch.long))

    def fit(
        self, frequencies: Tensor | np.ndarray | Sequence[int] | None = None, *, ids: Tensor | None = None
    ) -> Tensor:
        """Build the table from per-id ``frequencies[V]`` or from a stream of observed ``ids``; returns it."""
        if (frequencies is None) == (ids is None):
            raise ConfigError("balanced hash: fit: expected exactly one of frequencies= or ids=")
        if ids is not None:
            ids = torch.as_tensor(ids).reshape(-1).long()
            size = max(int(ids.max().item()) + 1 if ids.numel() else 0, self.config.vocab_size or 0)
            frequencies = torch.bincount(ids, minlength=size)
        table = balanced_assignment_table(frequencies, self.num_experts, self.top_k)
        self.table = table.to(self.table.device)
        return self.table

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The fitted table's size is only known from the checkpoint: resize the buffer before copying.
        key = prefix + "table"
        if key in state_dict:
            self.table = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
