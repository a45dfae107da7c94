r"""AdvMoE: router-expert alternating adversarial training of an MoE-CNN, on scikit-learn's ``load_digits``.

Zhang, Chen, Liu et al. 2023, "Robust Mixture-of-Expert Training for Convolutional Neural Networks" (ICCV,
arXiv:2308.10110). Adversarial training (AT, Madry et al. 2018) minimises the loss on PGD examples,

.. math::
    \min_\theta \; \mathbb{E}_{(x,y)} \max_{\|\delta\|_\infty \le \epsilon} \ell(f_\theta(x + \delta), y),

and the paper finds that on an MoE-CNN the routers ``phi`` and the experts ``psi`` adapt poorly to each other when
trained jointly this way. AdvMoE alternates, every iteration:

1. router step — PGD examples against the current model, then a step on ``phi`` only (experts fixed);
2. expert step — fresh PGD examples against the updated model, then a step on ``psi`` only (routers fixed).

Compared here, at the same number of epochs (AdvMoE takes two attacks and two half-updates per batch):
a dense CNN + AT, the MoE-CNN + AT, and the MoE-CNN + AdvMoE. The MoE-CNN's experts are either the paper's
channel subsets of the dense layer (``expert="channels"``, :class:`~circuitml.moe.experts.channel_conv.
ChannelMoEConv2d`: same parameters as the dense CNN, ``k/E`` of its MoE layers' compute per sample) or full-width
convolutions (``expert="full"``, :class:`~circuitml.moe.experts.conv.MoEConv2d`: ``E`` times the parameters);
a router per MoE layer either way. Reported: standard accuracy (SA) and robust accuracy (RA) under PGD on held-out digits.
Data: the 1,797 8×8 digits bundled with scikit-learn (no download), scaled to [0, 1], stratified 75/25 split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from circuitml.moe.experts.channel_conv import ChannelMoEConv2d
from circuitml.moe.experts.conv import MoEConv2d, RoutedConv
from circuitml.moe.router import Router
from torch import Tensor, nn

from circuitml.errors import ConfigError

METHODS = ("dense_at", "moe_at", "advmoe")
EXPERTS = ("channels", "full")


@dataclass
class AdvConfig:
    """Budget and attack of a run.

    Args:
        epochs, batch_size, lr: training budget (Adam).
        eps: L-inf radius of the attack on [0, 1] pixels.
        train_steps, eval_steps: PGD iterations in training / evaluation (step size ``2.5 eps / steps``).
        num_experts, top_k: experts per MoE layer and experts per sample.
        expert: ``"channels"`` (channel groups of the dense layer, the paper's) or ``"full"`` (full-width convs).
        seed: data split, initialisation, PGD random starts.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-3
    eps: float = 0.1
    train_steps: int = 3
    eval_steps: int = 10
    num_experts: int = 4
    top_k: int = 2
    expert: str = "full"
    seed: int = 0


def load_digits_split(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: ``x [N, 1, 8, 8]`` in [0, 1], stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=seed, stratify=digits.target)
    return x[tr], y[tr], x[te], y[te]


class DigitCNN(nn.Module):
    """conv 1→16, conv 16→32, 2×2 pool, conv 32→32, global pool, linear 10; BatchNorm + ReLU after each conv.

    With ``moe=True`` the last two convolutions are MoE layers, each with its own router: channel-subset
    experts (``expert="channels"``; a sample runs ``k/E`` of each layer's 32 filters, the others output zero)
    or full-width :class:`MoEConv2d` experts (``expert="full"``).
    """

    def __init__(self, moe: bool, num_experts: int = 4, top_k: int = 2, expert: str = "full") -> None:
        super().__init__()
        if expert not in EXPERTS:
            raise ConfigError(f"advmoe: expert: expected one of {EXPERTS}, got {expert!r}")

        def conv(c_in: int, c_out: int) -> nn.Module:
            if not moe:
                return nn.Conv2d(c_in, c_out, 3, padding=1)
            kind = MoEConv2d if expert == "full" else ChannelMoEConv2d
            return kind(c_in, c_out, num_experts=num_experts, top_k=top_k, balance_loss_weight=0.01)

        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = conv(16, 32)
        self.conv3 = conv(32, 32)
        self.bn = nn.ModuleList([nn.BatchNorm2d(16), nn.BatchNorm2d(32), nn.BatchNorm2d(32)])
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn[0](self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn[1](self.conv2(x))), 2)
        x = F.relu(self.bn[2](self.conv3(x)))
        return self.head(x.mean(dim=(2, 3)))

    def aux_loss(self) -> Tensor:
        return sum(
            (m.aux_loss() for m in self.modules() if isinstance(m, RoutedConv)),
            self.head.bias.new_zeros(()),
        )


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator) -> Tensor:
    """L-inf PGD with a random start (Madry et al. 2018): ``steps`` signed-gradient ascents of the cross-entropy
    of step ``2.5 eps / steps``, each projected onto the eps-ball and onto [0, 1]."""
    alpha = 2.5 * eps / max(steps, 1)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(router parameters, all other parameters)`` of ``model``."""
    routers = {id(p) for m in model.modules() if isinstance(m, Router) for p in m.parameters()}
    router_params = [p for p in model.parameters() if id(p) in routers]
    return router_params, [p for p in model.parameters() if id(p) not in routers]


def _step(model: DigitCNN, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> float:
    loss = F.cross_entropy(model(x), y) + model.aux_loss()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train(model: DigitCNN, method: str, x: Tensor, y: Tensor, cfg: AdvConfig) -> list[float]:
    """Adversarially train ``model`` with ``method`` (``dense_at``/``moe_at``: joint AT; ``advmoe``: alternating);
    returns the mean loss per epoch."""
    if method not in METHODS:
        raise ConfigError(f"advmoe: method: expected one of {METHODS}, got {method!r}")
    gen = torch.Generator().manual_seed(cfg.seed)
    router_params, expert_params = split_parameters(model)
    if method == "advmoe":
        if not router_params:
            raise ConfigError("advmoe: the model has no router (AdvMoE needs an MoE-CNN)")
        opts = [torch.optim.Adam(router_params, lr=cfg.lr), torch.optim.Adam(expert_params, lr=cfg.lr)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=cfg.lr)]
    history = []
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        losses = []
        for s in range(0, len(y), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            for (
                opt
            ) in opts:  # AdvMoE: routers (experts fixed), then experts (routers fixed), each on fresh PGD
                adv = pgd(model, xb, yb, cfg.eps, cfg.train_steps, gen)
                losses.append(_step(model, opt, adv, yb))
        history.append(float(np.mean(losses)))
    return history


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


def evaluate(model: nn.Module, x: Tensor, y: Tensor, cfg: AdvConfig) -> dict[str, float]:
    """Standard accuracy and robust accuracy under PGD-``eval_steps`` at ``eps``."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 10_000)
    adv = pgd(model, x, y, cfg.eps, cfg.eval_steps, gen)
    return {"sa": _accuracy(model, x, y), "ra": _accuracy(model, adv, y)}


def run_advmoe(method: str, cfg: AdvConfig) -> dict[str, float]:
    """Train and evaluate one method on one seed: ``{"sa", "ra", "final_loss"}``."""
    torch.manual_seed(cfg.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg.seed)
    model = DigitCNN(method != "dense_at", cfg.num_experts, cfg.top_k, cfg.expert)
    history = train(model, method, x_tr, y_tr, cfg)
    return {**evaluate(model, x_te, y_te, cfg), "final_loss": history[-1]}
