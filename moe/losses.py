"""Auxiliary losses of MoE routers, each a separate named function (as MegaBlocks keeps them).

All balancing losses take router *probabilities* (softmax already applied exactly once by the router); a known
bug elsewhere applies softmax a second time inside the loss, which flattens the probabilities towards uniform and
hides imbalance. ``tests/test_moe_core_losses.py`` checks a peaked router reaches the maximum value.
"""

from __future__ import annotations

import torch
from torch import Tensor


def router_z_loss(logits: Tensor) -> Tensor:
    """Router z-loss of ST-MoE (Zoph et al. 2022, eq. 5): ``mean_i (logsumexp_j logits_ij)^2``.

    Penalizes large logits so the router's softmax stays numerically stable in low precision.
    """
    if logits.numel() == 0:
        return logits.new_zeros(())
    # Half-precision logits are summed in float32; float32/float64 stay as they are.
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.logsumexp(z, dim=-1).square().mean().to(logits.dtype)


def tokens_per_expert(indices: Tensor, num_experts: int) -> Tensor:
    """Count of (token, slot) assignments per expert; ``-1`` slots (dropped/unused) are ignored."""
    flat = indices.reshape(-1)
    flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=num_experts)[:num_experts]


def switch_balance_loss(probs: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Load-balancing loss of the Switch Transformer (Fedus et al. 2021, eq. 4) / GShard (Lepikhin et al. 2020).

    ``loss = E * sum_e f_e * P_e`` with ``f_e`` the fraction of (token, slot) assignments sent to expert ``e``
    (counted from the router's choices ``indices[N, k]``; not differentiable) and ``P_e`` the mean router
    probability of ``e`` over tokens. It equals 1 under perfectly uniform routing and ``E`` when every token
    goes to one expert with probability 1.

    Args:
        probs: ``[N, E]`` router probabilities (rows sum to 1).
        indices: ``[N, k]`` chosen experts (``-1`` ignored).
        num_experts: ``E``.
    """
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    counts = tokens_per_expert(indices, num_experts).to(probs.dtype)
    f = counts / counts.sum().clamp_min(1)
    p = probs.mean(dim=0)
    return num_experts * torch.sum(f * p)


def cv_squared(values: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``var / mean^2`` (unbiased variance, as in Shazeer's code); 0 for E=1."""
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.var() / (values.mean().square() + eps)


def cv2_balance_loss(importance: Tensor, load: Tensor) -> Tensor:
    """Importance + load balancing loss of the sparsely-gated MoE (Shazeer et al. 2017, eqs. 6-11).

    ``loss = CV(importance)^2 + CV(load)^2`` where ``importance_e = sum_x G(x)_e`` (sum of gate weights) and
    ``load_e`` is the (smooth) number of tokens routed to ``e`` — see :func:`noisy_topk_load`.
    """
    return cv_squared(importance) + cv_squared(load)


def importance(weights: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Per-expert sum of the gate weights ``importance_e = sum_x G(x)_e`` (Shazeer et al. 2017, eq. 6)."""
    valid = indices >= 0
    flat_idx = indices.clamp_min(0).reshape(-1)
    flat_w = torch.where(valid, weights, torch.zeros_like(weights)).reshape(-1)
    out = weights.new_zeros(num_experts)
    return out.index_add(0, flat_idx, flat_w)


def noisy_topk_load(clean_logits: Tensor, noisy_logits: Tensor, noise_std: Tensor, k: int) -> Tensor:
    """Smooth load estimator of noisy top-k gating (Shazeer et al. 2017, eqs. 8-10).

    ``P(x, i) = Phi((clean_i - kth_excluding(H(x), i)) / std_i)``: the probability that expert ``i`` is still in
    the top-k when only its own noise is re-drawn, with ``kth_excluding`` the k-th largest noisy logit among
    the *other* experts. ``load_i = sum_x P(x, i)``.

    Args:
        clean_logits: ``[N, E]`` logits without noise.
        noisy_logits: ``[N, E]`` logits with the sampled noise.
        noise_std: ``[N, E]`` (or broadcastable) noise standard deviation.
        k: experts chosen per token.
    """
    num_experts = clean_logits.shape[-1]
    if k >= num_experts:
        return clean_logits.new_full((num_experts,), float(clean_logits.shape[0]))
    top_vals, _ = noisy_logits.topk(k + 1, dim=-1)
    # For an expert inside the top-k the threshold is the (k+1)-th value; outside it, the k-th value.
    threshold_in = top_vals[:, k : k + 1]
    threshold_out = top_vals[:, k - 1 : k]
    is_in = noisy_logits > threshold_in
    normal = torch.distributions.Normal(clean_logits.new_zeros(()), clean_logits.new_ones(()))
    std = noise_std.clamp_min(1e-9)
    prob_in = normal.cdf((clean_logits - threshold_in) / std)
    prob_out = normal.cdf((clean_logits - threshold_out) / std)
    return torch.where(is_in, prob_in, prob_out).sum(dim=0)


def routing_entropy(probs: Tensor) -> Tensor:
    """Mean per-token entropy (nats) of the router distribution ``-sum_e p log p``."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    logp = torch.log(probs.clamp_min(1e-30))
    return -(probs * logp).sum(dim=-1).mean()
