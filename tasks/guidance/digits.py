"""A class-conditional diffusion model on scikit-learn's ``load_digits`` and its guidance: unguided, CFG, AGD.

* Data: the 1,797 8×8 digit images bundled with scikit-learn (no download), scaled to [-1, 1], 10 classes.
* Model: an MLP noise predictor ``eps(x_t, t, c)`` (DDPM, Ho et al., NeurIPS 2020; linear betas, T = 200) trained
  with condition dropout (label -> null class with probability 0.1) so it is also unconditional.
* Sampling: deterministic DDIM (Song et al., ICLR 2021) on ``steps`` timesteps. Unguided = the conditional model;
  CFG = two evaluations per step; AGD (:class:`circuitml.moe.agd.AdapterGuidance`) = one.
* AGD training: CFG-guided DDIM trajectories at random scales ``w``; each visited ``(x_t, t, c, w)`` is paired with the
  CFG output there, and the adapters minimise the squared error of the one-pass output to it.
* Quality: a digits classifier (an MLP trained on the real training images): accuracy of the samples of each
  class on their own class, and the Fréchet distance of its hidden features between samples and real test images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from circuitml.moe.agd import AdapterGuidance, cfg_output
from torch import Tensor, nn

__all__ = [
    "DigitsDenoiser",
    "Schedule",
    "load_digits_tensors",
    "train_denoiser",
    "ddim_sample",
    "train_agd",
    "DigitsClassifier",
    "frechet_distance",
    "run_guidance",
]

NULL = 10  # the unconditional class id


def load_digits_tensors(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``, images flattened to 64 values in [-1, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(x))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


@dataclass
class Schedule:
    """DDPM linear-beta noise schedule."""

    steps: int = 200

    def __post_init__(self) -> None:
        betas = torch.linspace(1e-4, 0.02 * 1000 / self.steps, self.steps)
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0)


class DigitsDenoiser(nn.Module):
    """``eps(x_t, t, c)``: an MLP on the image, a sinusoidal time embedding and a class embedding (11 rows)."""

    def __init__(self, dim: int = 64, hidden: int = 256, steps: int = 200) -> None:
        super().__init__()
        self.steps = steps
        self.cls = nn.Embedding(11, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Linear(32, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        half = 16
        freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        arg = t.float()[:, None] * freqs[None]
        temb = self.time(torch.cat([arg.sin(), arg.cos()], dim=-1))
        h = F.silu(self.inp(x) + temb + self.cls(c))
        h = h + F.silu(self.fc1(h))
        h = h + F.silu(self.fc2(h))
        return self.out(h)


def train_denoiser(
    x: Tensor, y: Tensor, schedule: Schedule, steps: int = 4000, p_uncond: float = 0.1, seed: int = 0
) -> DigitsDenoiser:
    torch.manual_seed(seed)
    model = DigitsDenoiser(steps=schedule.steps)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,))
        x0, c = x[idx], y[idx].clone()
        c[torch.rand(len(c)) < p_uncond] = NULL  # condition dropout: one network is both models
        t = torch.randint(schedule.steps, (len(x0),))
        ab = schedule.alpha_bar[t][:, None]
        noise = torch.randn_like(x0)
        loss = F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, c), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _timesteps(schedule: Schedule, steps: int) -> list[int]:
    return torch.linspace(schedule.steps - 1, 0, steps).round().long().tolist()


@torch.no_grad()
def ddim_sample(
    eps_fn,
    c: Tensor,
    schedule: Schedule,
    steps: int = 25,
    generator: torch.Generator | None = None,
    record: list | None = None,
) -> Tensor:
    """Deterministic DDIM from Gaussian noise; ``eps_fn(x, t)`` returns the (guided) noise prediction.

    With ``record`` a list, every visited ``(x_t, t)`` is appended (the trajectory AGD trains on).
    """
    x = torch.randn(len(c), 64, generator=generator)
    ts = _timesteps(schedule, steps)
    for i, t in enumerate(ts):
        tt = torch.full((len(c),), t, dtype=torch.long)
        if record is not None:
            record.append((x.clone(), tt))
        eps = eps_fn(x, tt)
        ab = schedule.alpha_bar[t]
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clipped x0 (guided eps overshoots)
        ab_next = schedule.alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x.clamp(-1, 1)


def train_agd(
    denoiser: DigitsDenoiser,
    schedule: Schedule,
    steps: int = 600,
    sample_steps: int = 25,
    w_range=(1.0, 5.0),
    seed: int = 0,
    eval_every: int = 0,
) -> tuple[AdapterGuidance, list[float]]:
    """Adapters on ``fc1``/``fc2``/``out`` trained to match CFG on CFG-guided trajectories.

    Returns the wrapper and, when ``eval_every`` > 0, the mean squared gap to CFG on a fixed held-out set of
    trajectory points measured every ``eval_every`` steps (first entry: before training).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    agd = AdapterGuidance(denoiser, ["fc1", "fc2", "out"], bottleneck=64)

    def trajectory_points(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = torch.randint(10, (n,), generator=gen)
        w = w_range[0] + (w_range[1] - w_range[0]) * torch.rand(n, generator=gen)
        null = torch.full_like(c, NULL)
        rec: list = []
        ddim_sample(lambda x, t: cfg_output(denoiser, x, t, c, null, w), c, schedule, sample_steps, gen, rec)
        xs = torch.cat([r[0] for r in rec])
        ts = torch.cat([r[1] for r in rec])
        return xs, ts, c.repeat(len(rec)), w.repeat(len(rec))

    def gap(points) -> float:
        xs, ts, cs, ws = points
        with torch.no_grad():
            target = cfg_output(denoiser, xs, ts, cs, torch.full_like(cs, NULL), ws)
            return float(F.mse_loss(agd(xs, ts, cs, ws), target))

    held = trajectory_points(64)
    curve = [gap(held)] if eval_every else []
    opt = torch.optim.AdamW(agd.adapters.parameters(), lr=1e-3)
    pool = trajectory_points(256)
    for step in range(steps):
        if step and step % 100 == 0:
            pool = trajectory_points(256)  # fresh trajectories at fresh scales
        idx = torch.randint(len(pool[0]), (256,), generator=gen)
        xs, ts, cs, ws = (p[idx] for p in pool)
        with torch.no_grad():
            target = cfg_output(denoiser, xs, ts, cs, torch.full_like(cs, NULL), ws)
        loss = F.mse_loss(agd(xs, ts, cs, ws), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if eval_every and (step + 1) % eval_every == 0:
            curve.append(gap(held))
    return agd.eval(), curve


class DigitsClassifier(nn.Module):
    """The evaluation classifier: 64 -> 128 (features for the Fréchet distance) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_classifier(x: Tensor, y: Tensor, seed: int = 0, steps: int = 1500) -> DigitsClassifier:
    torch.manual_seed(seed)
    clf = DigitsClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,))
        xi = x[idx] + 0.1 * torch.randn(len(idx), 64)  # a little noise: samples are not exactly on the data
        loss = F.cross_entropy(clf(xi), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b`` (the FID formula)."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def run_guidance(
    seed: int = 0,
    w: float = 3.0,
    per_class: int = 50,
    sample_steps: int = 25,
    denoiser_steps: int = 4000,
    agd_steps: int = 600,
) -> dict[str, dict[str, float]]:
    """Unguided vs CFG vs AGD at scale ``w``: NFE per sample, CPU seconds, class accuracy, Fréchet distance."""
    xtr, ytr, xte, yte = load_digits_tensors(0)
    schedule = Schedule()
    denoiser = train_denoiser(xtr, ytr, schedule, denoiser_steps, seed=seed)
    agd, _ = train_agd(denoiser, schedule, agd_steps, sample_steps, seed=seed)
    clf = train_classifier(xtr, ytr, seed=0)
    with torch.no_grad():
        real = clf.body(xte)
    c = torch.arange(10).repeat_interleave(per_class)
    null = torch.full_like(c, NULL)
    ws = torch.full((len(c),), w)
    methods = {
        "unguided": (lambda x, t: denoiser(x, t, c), 1),
        "cfg": (lambda x, t: cfg_output(denoiser, x, t, c, null, ws), 2),
        "agd": (lambda x, t: agd(x, t, c, ws), 1),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (fn, nfe) in methods.items():
        gen = torch.Generator().manual_seed(1000 + seed)
        t0 = time.process_time()
        samples = ddim_sample(fn, c, schedule, sample_steps, gen)
        cpu = time.process_time() - t0
        with torch.no_grad():
            acc = float((clf(samples).argmax(-1) == c).float().mean())
            fd = frechet_distance(clf.body(samples), real)
        out[name] = {
            "nfe_per_sample": float(nfe * sample_steps),
            "cpu_seconds": cpu,
            "accuracy": acc,
            "frechet": fd,
        }
    return out
