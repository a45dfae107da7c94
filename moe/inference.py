"""Inference-time routing controls: change ``k`` for every router of a model, and self-contrast decoding.

SCMoE (Shi et al. 2024, "Unchosen Experts Can Contribute Too: Unleashing MoE Models' Power by
Self-Contrast") runs the same MoE model twice — under its strong routing (top-k) and under a weak routing
(e.g. top-1, or rank-k: only the k-th ranked expert) — and decodes from

.. math::
    s(v) = (1 + \\beta) \\log p_{strong}(v) - \\beta \\log p_{weak}(v), \\qquad
    v \\in V_{head} = \\{v : p_{strong}(v) \\ge \\alpha \\max_w p_{strong}(w)\\}

with ``s(v) = -inf`` outside the plausibility set ``V_head`` (eq. 2-3 of the paper).

Routers honour the override through :meth:`circuitml.moe.router.Router.select_topk`; a router that cannot
honour a mode (see :attr:`circuitml.moe.router.Router.overrides`) makes :func:`routing_override` and
:func:`set_top_k` raise :class:`~circuitml.errors.ConfigError` instead of silently routing as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.router import Router
from torch import Tensor, nn

from circuitml.errors import ConfigError

ROUTING_MODES = ("topk", "rank")


def routers_of(model: nn.Module) -> list[Router]:
    """Every :class:`Router` inside ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, Router)]


def _check(model: nn.Module, mode: str, value: int) -> list[Router]:
    if mode not in ROUTING_MODES:
        raise ConfigError(f"routing override: mode: expected one of {ROUTING_MODES}, got {mode!r}")
    routers = routers_of(model)
    for r in routers:
        r.check_override(mode, value)
    return routers


@contextmanager
def routing_override(model: nn.Module, mode: str = "topk", value: int = 1) -> Iterator[nn.Module]:
    """Temporarily route every router of ``model`` with ``("topk", k)`` or ``("rank", r)``; restored on exit."""
    routers = _check(model, mode, value)
    saved = [r.routing_override for r in routers]
    try:
        for r in routers:
            r.routing_override = (mode, value)
        yield model
    finally:
        for r, old in zip(routers, saved, strict=True):
            r.routing_override = old


@contextmanager
def top_k(model: nn.Module, k: int) -> Iterator[nn.Module]:
    """``with top_k(model, 1): ...`` — evaluate with ``k`` experts per token in every router."""
    with routing_override(model, "topk", k) as m:
        yield m


def set_top_k(model: nn.Module, k: int) -> None:
    """Permanently set ``k`` for every router of ``model`` (e.g. before exporting a cheaper model).

    Every router must accept it (:meth:`~circuitml.moe.router.Router.reconfigure_top_k`) before any changes,
    so a refusal leaves the model as it was. Modules that keep ``k`` in their own saved config define
    ``routing_top_k_changed(k)``, called afterwards so the saved model reloads with the new ``k``.
    """
    routers = _check(model, "topk", k)
    configs = [r.top_k_config(k) for r in routers]  # any refusal raises before a router changed
    for r, config in zip(routers, configs, strict=True):
        r.reconfigure_top_k(k, config)
    for m in model.modules():
        hook = getattr(m, "routing_top_k_changed", None)
        if callable(hook):
            hook(k)


def contrastive_scores(
    strong_logits: Tensor, weak_logits: Tensor, beta: float = 0.5, alpha: float = 0.1
) -> Tensor:
    """SCMoE scores ``(1+beta) log p_strong - beta log p_weak`` over ``V_head``, ``-inf`` elsewhere.

    Args:
        strong_logits: ``[..., V]`` next-token logits under strong routing.
        weak_logits: ``[..., V]`` logits of the same model under weak routing.
        beta: contrast strength (``beta = 0`` is plain decoding with the strong model).
        alpha: plausibility threshold relative to the strong model's most likely token.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"SCMoE: alpha: expected 0 <= alpha <= 1, got {alpha}")
    log_strong = F.log_softmax(strong_logits.float(), dim=-1)
    log_weak = F.log_softmax(weak_logits.float(), dim=-1)
    scores = (1 + beta) * log_strong - beta * log_weak
    # p >= alpha * max p  <=>  log p >= log alpha + max log p
    threshold = log_strong.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(max(alpha, 1e-45)))
    return scores.masked_fill(log_strong < threshold, float("-inf"))


def _default_logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None:
        raise TypeError("scmoe_scores: pass logits_fn to extract logits from the model output")
    return logits


@torch.no_grad()
def scmoe_scores(
    model: nn.Module,
    *args: Any,
    beta: float = 0.5,
    alpha: float = 0.1,
    weak: tuple[str, int] = ("rank", 2),
    strong: tuple[str, int] | None = None,
    logits_fn: Callable[[Any], Tensor] = _default_logits,
    **kwargs: Any,
) -> Tensor:
    """Run ``model(*args, **kwargs)`` under strong and weak routing and return the SCMoE scores.

    ``weak`` defaults to rank-2 routing (the paper's choice for Mixtral, top-2); ``strong`` defaults to the
    model's own routing. Take ``argmax`` of the last position for greedy self-contrast decoding.
    """
    if strong is None:
        strong_logits = logits_fn(model(*args, **kwargs))
    else:
        with routing_override(model, *strong):
            strong_logits = logits_fn(model(*args, **kwargs))
    with routing_override(model, *weak):
        weak_logits = logits_fn(model(*args, **kwargs))
    return contrastive_scores(strong_logits, weak_logits, beta=beta, alpha=alpha)
