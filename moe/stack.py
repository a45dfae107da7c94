r"""A stack of MoE layers whose routers see what the layers before them decided.

Routers are built one per layer and run one layer at a time, but two methods route *across* layers:

* **RMoE** (Qiu et al. 2024, "Layerwise Recurrent Router for Mixture-of-Experts", arXiv:2408.06793): the
  router of layer ``l`` updates a GRU state from layer ``l-1``'s, :math:`r_l = \mathrm{GRU}(x_l W_l, r_{l-1})`;
* **Read-ME** (Cai et al. 2024, "Read-ME: Refactorizing LLMs as Router-Decoupled Mixture of Experts with
  System Co-Design", NeurIPS): one pre-gating network routes every layer from the input before the backbone
  runs, :math:`p^{(l)} = \mathrm{softmax}(R_l(u))`, so the whole plan is known ahead — which is what lets a
  server prefetch and cache the experts the next layers will use (:class:`LookaheadExpertCache`).

:class:`MoEStack` holds the routers of a model's MoE layers in order (it does not own them: they stay in their
layers, so checkpoints keep their keys). Each forward calls :meth:`MoEStack.start`, which computes the Read-ME
plan once from the stack input, and then, per MoE layer ``l``, ``ctx = run.ctx(l)`` before the layer and
``run.record(l, routing)`` after it; ``ctx`` carries the previous layer's state (``layer_state``), the plan
(``routing_plan``) and any per-forward keys (``token_ids``). Used by the ``moe_gnn`` encoder and the QA model.

With a :class:`LookaheadExpertCache` attached (inference), ``ctx`` also carries ``expert_source``: the
:class:`~circuitml.moe.MoEBlock` of layer ``l`` then computes its FFN experts with the weights the cache
serves — fetched from an :class:`ExpertStore` (the slow tier: a memory-mapped safetensors file or host copies)
ahead of use — not with the module's own parameters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import DispatchPlan, combine_outputs, gather_tokens
from circuitml.moe.experts.ffn import FFNExperts, apply_activation
from circuitml.moe.registry import router_class
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers.read_me import ReadMERouter, RoutingPlan
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from circuitml.errors import CheckpointError, ConfigError
from circuitml.fileio import atomic_write

EXPERT_TENSORS = ("gate_up_proj", "down_proj", "gate_up_bias", "down_bias")


def build_router_stack(name: str, num_layers: int, **values: Any) -> list[Router]:
    """Routers for ``num_layers`` MoE layers, e.g. ``build_router_stack("read_me", 4, d_model=64, ...)``.

    Independent routers for most names; Read-ME's layers share one planner (owned by the first router).
    """
    if num_layers < 0:
        raise ConfigError(f"router stack: num_layers: expected >= 0, got {num_layers}")
    return router_class(name).build_stack(num_layers, values) if num_layers else []


class ExpertStore:
    """The slow tier of expert weights: every MoE layer's :class:`~circuitml.moe.FFNExperts` tensors kept outside
    the model, read one expert at a time.

    :meth:`save` writes them to a safetensors file (``layers.{l}.{name}``, stacked over experts) and :meth:`open`
    memory-maps it, so :meth:`fetch` reads only that expert's rows from disk; :meth:`from_experts` keeps host
    copies instead. ``fetch(layer, expert)`` returns that expert's tensors on ``device`` (the fast tier) and
    counts ``reads`` — it is the ``fetch`` of a :class:`LookaheadExpertCache`.
    """

    def __init__(self, read: Callable[[int, str, int], Tensor | None], num_layers: int, device=None) -> None:
        self._read = read
        self.num_layers = num_layers
        self.device = device
        self.reads = 0

    @staticmethod
    def tensors(experts: Sequence[FFNExperts]) -> dict[str, Tensor]:
        """The flat ``layers.{l}.{name}`` tensors of the layers' experts (``None`` biases left out)."""
        out = {}
        for layer, ex in enumerate(experts):
            if not isinstance(ex, FFNExperts):
                raise ConfigError(
                    f"expert store: layer {layer}: expected FFNExperts, got {type(ex).__name__}"
                )
            for name in EXPERT_TENSORS:
                t = getattr(ex, name)
                if t is not None:
                    out[f"layers.{layer}.{name}"] = t.detach().cpu().contiguous()
        return out

    @classmethod
    def from_experts(cls, experts: Sequence[FFNExperts], device=None) -> ExpertStore:
        """Host copies of the layers' expert weights (taken now: later changes to the modules do not show)."""
        flat = {k: t.clone() for k, t in cls.tensors(experts).items()}  # copies, not views of the parameters

        def read(layer: int, name: str, expert: int) -> Tensor | None:
            t = flat.get(f"layers.{layer}.{name}")
            return None if t is None else t[expert].clone()

        return cls(read, len(experts), device)

    @classmethod
    def save(cls, path: str | os.PathLike, experts: Sequence[FFNExperts]) -> None:
        """Write the layers' expert weights to a safetensors file (atomically)."""
        atomic_write(path, save(cls.tensors(experts), metadata={"format": "circuitml-experts"}))

    @classmethod
    def open(cls, path: str | os.PathLike, device=None) -> ExpertStore:
        """Memory-map a file written by :meth:`save`; each fetch reads one expert's slices."""
        try:
            handle = safe_open(str(path), framework="pt")
            keys = set(handle.keys())
        except Exception as exc:  # safetensors raises several types on missing or corrupted files
            raise CheckpointError(f"{path}: expected an expert store (safetensors) ({exc})") from None
        parts = [k.split(".") for k in keys]
        layers = {int(p[1]) for p in parts if len(p) == 3 and p[0] == "layers" and p[1].isdigit()}
        named = all(
            len(p) == 3 and p[0] == "layers" and p[1].isdigit() and p[2] in EXPERT_TENSORS for p in parts
        )
        if not keys or not named or layers != set(range(len(layers))):
            raise CheckpointError(f"{path}: expected tensors layers.0..N.<name> written by ExpertStore.save")

        def read(layer: int, name: str, expert: int) -> Tensor | None:
            key = f"layers.{layer}.{name}"
            return handle.get_slice(key)[expert] if key in keys else None

        store = cls(read, len(layers), device)
        store._handle = handle  # keep the memory map open as long as the store
        return store

    def fetch(self, layer: int, expert: int) -> dict[str, Tensor | None]:
        if not 0 <= layer < self.num_layers:
            raise ConfigError(f"expert store: layer {layer} outside 0..{self.num_layers - 1}")
        self.reads += 1
        out = {}
        for name in EXPERT_TENSORS:
            t = self._read(layer, name, expert)
            out[name] = None if t is None else t.to(self.device) if self.device is not None else t
        return out


class LookaheadExpertCache:
    """A fixed number of expert slots filled ahead of use from a routing plan (Read-ME's lookahead caching).

    Experts live in slow storage (host memory, disk) and ``fetch(layer, expert)`` copies one into fast memory;
    only ``slots`` copies fit. Knowing the plan of every layer, :meth:`advance` to layer ``l`` prefetches the
    experts of layers ``l .. l + lookahead`` and, when full, evicts the resident expert whose next use in the
    plan is farthest away (Belady's optimal policy, Belady 1966, which a known future makes possible).
    :meth:`get` is the demand at compute time: a hit when the expert is already resident.

    With ``lookahead=None`` it ignores the plan: a demand-fetched LRU cache, the baseline.

    Attributes:
        hits, misses: demands served from the cache / that had to fetch.
        prefetches: fetches issued ahead of their demand.
        log: ``(at_layer, layer, expert)`` of every fetch, ``at_layer`` being the layer being computed then.
    """

    def __init__(self, slots: int, fetch: Callable[[int, int], Any], lookahead: int | None = 1) -> None:
        if slots < 1 or (lookahead is not None and lookahead < 0):
            raise ConfigError(
                f"expert cache: expected slots >= 1 and lookahead >= 0 or None, got {slots}, {lookahead}"
            )
        self.slots = slots
        self.fetch = fetch
        self.lookahead = lookahead
        self.resident: dict[tuple[int, int], Any] = {}
        self.last_used: dict[tuple[int, int], int] = {}
        self.uses: list[list[int]] = []
        self.clock = 0
        self.layer = 0
        self.hits = self.misses = self.prefetches = 0
        self.peak = 0  # most experts ever resident at once (never above ``slots``)
        self.log: list[tuple[int, int, int]] = []

    def set_plan(self, tokens_per_expert: Tensor) -> None:
        """Read the plan: ``[L, E]`` tokens per expert of every layer (experts with 0 tokens are not needed)."""
        if self.lookahead is None:
            return  # demand-only: the plan is not used
        load = tokens_per_expert.detach().cpu()
        self.uses = [torch.nonzero(row > 0).flatten().tolist() for row in load]

    def _next_use(self, key: tuple[int, int]) -> float:
        layer, expert = key
        # A cached (layer, expert) is only ever used by its own layer: needed iff that layer is still ahead.
        if layer >= self.layer and layer < len(self.uses) and expert in self.uses[layer]:
            return layer
        return float("inf")

    def _insert(self, key: tuple[int, int], protect: set[tuple[int, int]]) -> None:
        if len(self.resident) >= self.slots:
            candidates = [k for k in self.resident if k not in protect]
            if not candidates:
                return  # every slot holds an expert needed sooner; this one is fetched on demand
            if self.uses:
                victim = max(candidates, key=lambda k: (self._next_use(k), -self.last_used.get(k, 0)))
            else:
                victim = min(candidates, key=lambda k: self.last_used.get(k, 0))
            del self.resident[victim]
        self.resident[key] = self.fetch(*key)
        self.peak = max(self.peak, len(self.resident))
        self.log.append((self.layer, *key))

    def advance(self, layer: int) -> None:
        """Layer ``layer`` is about to run: prefetch the experts the plan names for it and the next layers."""
        self.layer = layer
        if self.lookahead is None:
            return
        window = range(layer, min(layer + self.lookahead + 1, len(self.uses)))
        wanted = [(j, e) for j in window for e in self.uses[j]]
        protect = set(wanted)
        for key in wanted:
            if key not in self.resident:
                self._insert(key, protect)
                if key in self.resident:
                    self.prefetches += 1

    def get(self, layer: int, expert: int) -> Any:
        """The weights of ``expert`` of ``layer`` for compute (fetched now if not resident: a miss)."""
        key = (layer, expert)
        self.clock += 1
        self.last_used[key] = self.clock
        if key in self.resident:
            self.hits += 1
            return self.resident[key]
        self.misses += 1
        self._insert(key, {key})
        return self.resident.get(key) if key in self.resident else self.fetch(*key)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachedExperts:
    """Layer ``layer``'s FFN expert computation with each used expert's weights taken from ``cache``
    (``cache.get(layer, e)``: a hit when prefetched), called by :class:`~circuitml.moe.MoEBlock` in place of
    its experts' own parameters. Inference only: no gradient reaches the module's parameters."""

    def __init__(self, cache: LookaheadExpertCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def __call__(
        self, experts: torch.nn.Module, x: Tensor, indices: Tensor, weights: Tensor, plan: DispatchPlan
    ) -> Tensor:
        if not isinstance(experts, FFNExperts):
            raise ConfigError(
                f"expert cache: layer {self.layer}: experts of type {type(experts).__name__} cannot read "
                "their weights from a cache (FFNExperts can)"
            )
        xs = gather_tokens(x, plan)
        outs, start = [], 0
        for e, count in enumerate(plan.counts_list()):
            if count == 0:
                continue  # an expert no token chose is not demanded
            w = self.cache.get(self.layer, e)
            h = F.linear(xs[start : start + count], w["gate_up_proj"], w["gate_up_bias"])
            outs.append(F.linear(apply_activation(h, experts.activation), w["down_proj"], w["down_bias"]))
            start += count
        outs.append(xs.new_zeros(1, x.shape[-1]))  # the row dropped slots read
        return combine_outputs(torch.cat(outs), weights, plan, padded=True)


class StackRun:
    """The routing state of one forward through a :class:`MoEStack` (see the module docstring)."""

    def __init__(
        self,
        stack: MoEStack,
        plan: RoutingPlan | None,
        ctx: dict[str, Any],
        cache: LookaheadExpertCache | None,
    ) -> None:
        self.stack = stack
        self.plan = plan
        self.base_ctx = ctx
        self.cache = cache
        self.states: list[Any] = [None] * len(stack)
        self.outputs: list[RouterOutput | None] = [None] * len(stack)

    def ctx(self, layer: int) -> dict[str, Any]:
        """Router ctx of MoE layer ``layer``: the plan, the previous layer's state and the per-forward keys."""
        ctx = dict(self.base_ctx)
        if self.plan is not None:
            ctx["routing_plan"] = self.plan
        if layer > 0 and self.states[layer - 1] is not None:
            ctx["layer_state"] = self.states[layer - 1]
        if self.cache is not None:
            self.cache.advance(layer)
            ctx["expert_source"] = CachedExperts(self.cache, layer)
        return ctx

    def record(self, layer: int, routing: RouterOutput) -> None:
        """Keep layer ``layer``'s routing; its state feeds the next layer."""
        self.outputs[layer] = routing
        if isinstance(routing.state, RoutingPlan):  # planned by the first layer: hand the plan on
            self.plan = routing.state
            self.states[layer] = None
        else:
            self.states[layer] = routing.state


class MoEStack:
    """The routers of a model's MoE layers, in order; :meth:`start` begins one forward.

    Args:
        routers: one router per MoE layer (e.g. from :func:`build_router_stack`); they stay owned by their layers.
    """

    def __init__(self, routers: Sequence[Router]) -> None:
        self.routers = list(routers)
        readme = [isinstance(r, ReadMERouter) for r in self.routers]
        if any(readme) and not all(readme):
            raise ConfigError("router stack: Read-ME pre-gating needs a read_me router in every MoE layer")
        self.pre_gated = bool(self.routers) and all(readme)
        if self.pre_gated:
            planner = self.routers[0].planner
            for i, r in enumerate(self.routers):
                if r.planner is not planner or r.layer != i or r.config.num_layers != len(self.routers):
                    raise ConfigError(
                        f"router stack: Read-ME layer {i} must share the first router's planner and serve "
                        f"layer {i} of {len(self.routers)} (build the routers with build_router_stack)"
                    )

    def __len__(self) -> int:
        return len(self.routers)

    def start(
        self,
        router_input: Tensor | None = None,
        cache: LookaheadExpertCache | None = None,
        **ctx: Any,
    ) -> StackRun:
        """Begin a forward: compute the Read-ME plan from ``router_input`` (the stack's input rows: node or
        token embeddings) when the stack is pre-gated; ``ctx`` (e.g. ``token_ids``) goes to every router.

        Without ``router_input`` a pre-gated stack plans from the first MoE layer's input instead (the plan
        is still computed once, by the first router, and handed on). With ``cache`` the layers' experts compute
        with the weights the cache serves (inference: raises under autograd, which could not train them).
        """
        plan = None
        if self.pre_gated and router_input is not None:
            plan = self.routers[0].plan(router_input)
        if cache is not None:
            if plan is None:
                raise ConfigError("router stack: lookahead expert caching needs a pre-gated (read_me) stack")
            if torch.is_grad_enabled():
                raise ConfigError(
                    "router stack: an expert cache serves inference (its copies get no gradient); run the "
                    "model under torch.no_grad() or torch.inference_mode()"
                )
            cache.set_plan(plan.tokens_per_expert)
        return StackRun(self, plan, ctx, cache)
