"""What every task shares: getting an encoder (pretrained frozen / fine-tuned / scratch), seeds, circuits, splits,
a readable training loop, and the metrics.

Encoder modes (the comparison MGVGA, Wu et al. ICLR 2025, Sec. 5, reports for its downstream tasks):

* ``frozen`` — a pretrained encoder whose weights stay fixed; only the task head trains (a linear-probe-like
  test of the representation). Embeddings are computed without gradients.
* ``finetune`` — a pretrained encoder trained together with the head (the encoder at a lower learning rate).
* ``scratch`` — ``build_encoder(config)`` with fresh weights (the pretrained encoder's config when comparing, so
  only the pretraining differs), trained with the head.
* ``random`` — the same architecture at random initialisation, frozen: the reference a frozen pretrained
  encoder's linear probe must beat (a random GNN already separates many structures; Kipf & Welling 2017, Sec. 6.2).

Heads (``head``): ``mlp`` (two hidden layers) or ``linear`` — a linear probe (Alain & Bengio, "Understanding
intermediate layers using linear classifier probes", ICLR workshop 2017), which only reads what the frozen
embedding already makes linearly available — or ``pretrained``: the pretraining head that matches the task,
shipped beside a pretrained encoder (:mod:`circuitml.pretrain.heads`; probability and equivalence only).
``zero_shot`` (with ``pretrained`` and a frozen encoder) trains nothing but the head's calibration scalars.

Fine-tuning practice (``TrainConfig``; applied to the pretrained encoder only, since each one protects pretrained
weights and a scratch encoder has none to protect — scratch trains every weight at ``lr`` for every epoch):

* ``encoder_lr`` — a smaller learning rate for the pretrained encoder than for the head (discriminative
  fine-tuning, Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018);
* ``probe_epochs`` — LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution", ICLR 2022): the first epochs train the head on the frozen encoder, then both train, so a
  random head's large early gradients do not overwrite the pretrained features;
* ``freeze_layers`` — the type embedding and the first N message-passing blocks stay frozen;
* ``sp_alpha`` — L2-SP (Li et al., ICML 2018; :mod:`circuitml.tasks.l2_sp`): the fine-tuned encoder decays
  toward its pretrained weights with strength alpha instead of toward zero.

``validation=True`` holds the test split out entirely and reports on a validation share of the training
groups: settings are chosen there, never on the test split.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from circuitml.moe.schedule import step_routers
from circuitml.tasks.l2_sp import anchor_group, pull_toward_anchors
from torch import Tensor, nn

from circuitml.aig import AIG
from circuitml.errors import ConfigError, DatasetError

__all__ = [
    "TaskResult",
    "GraphEncoding",
    "mlp",
    "make_head",
    "pretrained_head",
    "is_pretrained",
    "result_label",
    "param_groups",
    "ENCODER_MODES",
    "TrainConfig",
    "seed_everything",
    "configure_runtime",
    "scoped_runtime",
    "make_encoder",
    "make_head",
    "load_circuits",
    "load_families",
    "split_groups",
    "split_by_key",
    "split_items",
    "validation_split",
    "minibatches",
    "train_loop",
    "mse",
    "mae",
    "mape",
    "r2_score",
    "spearman",
    "binary_metrics",
]

ENCODER_MODES = ("frozen", "finetune", "scratch", "random")
HEADS = ("mlp", "linear", "pretrained")
CIRCUIT_SUFFIXES = (".aig", ".aag", ".bench", ".v", ".sv")


@dataclass
class TrainConfig:
    """Budget and optimizer of a task run; the same values are used for every encoder being compared."""

    epochs: int = 30
    lr: float = 3e-3
    encoder_lr: float = 3e-4  # fine-tuning a pretrained encoder: smaller steps keep what it learned
    weight_decay: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    test_fraction: float = 0.25
    device: str = "cpu"
    head: str = "mlp"  # "linear": a linear probe
    test_groups: tuple[
        str, ...
    ] = ()  # with groups (families): hold out exactly these instead of a random share
    probe_epochs: int = 0  # LP-FT: epochs that train only the head before the pretrained encoder unfreezes
    freeze_layers: int = 0  # pretrained encoder: type embedding + this many first blocks stay frozen
    validation: bool = False  # report on a validation share of the training groups; the test split is unused
    zero_shot: bool = False  # head "pretrained" on a frozen encoder: fit only its calibration (if any)
    sp_alpha: float = 0.0  # L2-SP: pull a fine-tuned pretrained encoder toward its starting weights (0: off)

    def validate(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"train config: head: expected one of {', '.join(HEADS)}, got {self.head!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"train config: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"train config: test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.probe_epochs < self.epochs:
            raise ConfigError(
                f"train config: probe_epochs must be in [0, epochs) = [0, {self.epochs}), got {self.probe_epochs}"
            )
        if self.zero_shot and self.head != "pretrained":
            raise ConfigError(f"train config: zero_shot needs head 'pretrained', got {self.head!r}")
        # torch's optimizers raise a bare ValueError on these; nan would train
        for key in ("lr", "encoder_lr"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ConfigError(
                    f"train config: {key} must be a finite number > 0, got {getattr(self, key)}"
                )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"train config: weight_decay must be a finite number >= 0, got {self.weight_decay}"
            )
        if not (math.isfinite(self.sp_alpha) and self.sp_alpha >= 0):
            raise ConfigError(f"train config: sp_alpha must be a finite number >= 0, got {self.sp_alpha}")
        if self.freeze_layers < 0 or self.encoder_lr <= 0:
            raise ConfigError(
                f"train config: freeze_layers must be >= 0 and encoder_lr > 0, got {self.freeze_layers}, "
                f"{self.encoder_lr}"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_runtime(
    threads: int | None = None, device: str = "cpu", *, deterministic: bool = True
) -> torch.device:
    """Thread count and device of a task run, and deterministic kernels so that a seed gives the same numbers.

    ``device`` is ``cpu``, ``cuda[:N]`` or ``auto`` (cuda when available); cuda asked on a machine without it is
    a :class:`ConfigError`, never a silent fall-back to the CPU. Both arguments are checked before anything is
    changed, so a refused value leaves the process as it was.

    With more than one intra-op thread, CPU scatter-adds (the GNN aggregations) sum in an order that depends on
    thread timing: ``evaluate equivalence`` gave accuracy 0.7157 and 0.7269 on two runs of one seed.
    ``torch.use_deterministic_algorithms`` makes those kernels order-fixed (same numbers at any thread count).

    The settings are process-wide (``torch.set_num_threads``, ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` unless ``deterministic=False``, and ``CUBLAS_WORKSPACE_CONFIG`` for cuda), as a CLI command
    wants; library code that must hand the caller's settings back uses :func:`scoped_runtime`.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: expected a positive number, got {threads}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if dev.type == "cuda":
        # cuBLAS needs a fixed workspace for deterministic matmuls (read when cuBLAS starts: left set)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return dev


@contextmanager
def scoped_runtime(
    threads: int | None = None, device: str = "cpu", *, deterministic: bool = True
) -> Iterator[torch.device]:
    """:func:`configure_runtime` for the duration of a ``with`` block: the thread count and torch's
    deterministic-algorithms mode are restored on leaving it, so a library call does not change them for the
    caller's process. Yields the device."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    dev = configure_runtime(threads, device, deterministic=deterministic)
    try:
        yield dev
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def make_encoder(
    source: str | os.PathLike | nn.Module | None,
    mode: str,
    *,
    seed: int = 0,
    config: dict | None = None,
) -> tuple[nn.Module, bool]:
    """An encoder and whether it trains.

    Args:
        source: ``"scratch"``/``None`` for a fresh encoder, a directory written by ``save_pretrained``, or an
            encoder module.
        mode: one of :data:`ENCODER_MODES`; ``scratch`` rebuilds ``source``'s config (or ``config``) with new
            weights drawn from ``seed``.
        config: encoder config (dict) for scratch encoders when there is no pretrained one to copy.
    """
    from circuitml.encoders import build_encoder, load_encoder

    if mode not in ENCODER_MODES:
        raise ConfigError(f"encoder mode: expected one of {', '.join(ENCODER_MODES)}, got {mode!r}")
    pretrained: nn.Module | None
    if source is None or (isinstance(source, str) and source == "scratch"):
        pretrained = None
    elif isinstance(source, nn.Module):
        pretrained = source
    else:
        pretrained = load_encoder(source)
    if mode in ("scratch", "random") or pretrained is None:
        if mode == "frozen":
            raise ConfigError("encoder mode: a frozen encoder needs a pretrained one (--encoder DIR)")
        cfg = (
            config if config is not None else (pretrained.config.to_dict() if pretrained is not None else {})
        )
        torch.manual_seed(seed)
        fresh = build_encoder(dict(cfg))
        if mode == "random":
            return _freeze(fresh), False
        return fresh, True
    if mode == "frozen":
        return _freeze(pretrained), False
    return pretrained, True


def _freeze(encoder: nn.Module) -> nn.Module:
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


def load_circuits(path: str | os.PathLike, *, limit: int | None = None) -> list[AIG]:
    """Circuits of a dataset folder (``manifest.json`` from ``circuitml data build/generate``), of a folder of
    circuit files (searched recursively), or of one file."""
    from circuitml.formats import read_circuit

    path = Path(path)
    if (path / "manifest.json").is_file():
        from circuitml.datasets import CircuitDataset

        ds = CircuitDataset(path)
        n = len(ds) if limit is None else min(limit, len(ds))
        out = []
        for i in range(n):
            aig = ds.aig(i)
            aig.name = aig.name or str(ds.records[i].get("id", i))
            out.append(aig)
        return out
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in CIRCUIT_SUFFIXES and f.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(2, "no such file", str(path))
    if not files:
        raise DatasetError(
            f"{path}: expected a dataset (manifest.json) or circuit files ({', '.join(CIRCUIT_SUFFIXES)})"
        )
    files = files[:limit] if limit is not None else files
    return [read_circuit(f) for f in files]


def load_families(path: str | os.PathLike, *, limit: int | None = None) -> list[str]:
    """The family of each circuit :func:`load_circuits` returns for ``path`` (same order): the dataset record's
    ``family``, or for plain files the name of their folder."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        from circuitml.datasets import CircuitDataset

        records = CircuitDataset(path).records
        records = records if limit is None else records[:limit]
        return [str(r.get("family") or r.get("id", k)) for k, r in enumerate(records)]
    if path.is_file():
        return [path.parent.name]
    files = sorted(f for f in path.rglob("*") if f.suffix in CIRCUIT_SUFFIXES and f.is_file())
    files = files[:limit] if limit is not None else files
    return [f.parent.name for f in files]


def split_groups(num_groups: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test group (design or circuit) indices: whole groups go to one side, at least one on each."""
    if num_groups < 2:
        raise DatasetError(f"split: expected at least 2 designs/circuits to hold some out, got {num_groups}")
    perm = np.random.default_rng(seed).permutation(num_groups)
    n_test = min(num_groups - 1, max(1, round(num_groups * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def split_by_key(keys: Sequence[str], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test item indices where items sharing a key (a family, a design) all go to one side.

    Keys are split with :func:`split_groups` in sorted order, so the split never depends on set or hash order.
    """
    names = sorted(set(keys))
    if len(names) < 2:
        raise DatasetError(
            f"split: expected at least 2 distinct groups (families) to hold some out, got {names}"
        )
    _, te = split_groups(len(names), test_fraction, seed)
    held_out = {names[i] for i in te}
    is_test = np.array([k in held_out for k in keys], dtype=bool)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def validation_split(
    keys: np.ndarray, train: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices inside ``train`` (indices of items whose group is ``keys[i]``): a seeded share of
    the training groups is held out as validation (the test groups are not used at all)."""
    names = np.unique(keys[train])
    if names.size < 2:
        raise DatasetError(
            f"validation split: expected at least 2 training groups to hold some out, got {names.size}"
        )
    _, val = split_groups(names.size, test_fraction, seed + 7919)  # another draw than the test split's
    is_val = np.isin(keys[train], names[val])
    return train[~is_val], train[is_val]


def split_items(n: int, groups: Sequence[str] | None, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole items (``groups=None``: each circuit its own group) or whole groups (families): a seeded
    share of them, or exactly ``cfg.test_groups``; with ``cfg.validation``, a share of the training groups
    instead (:func:`validation_split`)."""
    train, test = _split_items(n, groups, cfg)
    if not cfg.validation:
        return train, test
    keys = np.arange(n) if groups is None else np.asarray(groups, dtype=object)
    return validation_split(keys, train, cfg.test_fraction, cfg.seed)


def _split_items(n: int, groups: Sequence[str] | None, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    if groups is None:
        return split_groups(n, cfg.test_fraction, cfg.seed)
    if len(groups) != n:
        raise DatasetError(f"split: expected one group name per circuit ({n}), got {len(groups)}")
    if cfg.test_groups:
        missing = sorted(set(cfg.test_groups) - set(groups))
        if missing:
            raise ConfigError(
                f"--test-families: {', '.join(missing)} not in the data (has {', '.join(sorted(set(groups)))})"
            )
        is_test = np.isin(np.asarray(groups, dtype=object), list(cfg.test_groups))
        if is_test.all():
            raise ConfigError(
                "--test-families: every circuit would be held out; keep some families for training"
            )
        return np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return split_by_key(groups, cfg.test_fraction, cfg.seed)


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index batches over ``range(n)``, shuffled when an RNG is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


def train_loop(
    params: Sequence[dict],
    step: Callable[[np.ndarray], Tensor],
    num_items: int,
    cfg: TrainConfig,
    *,
    progress: Callable[[int, float], None] | None = None,
    modules: Iterable[nn.Module] = (),
) -> list[float]:
    """Adam over ``params`` (param groups) for ``cfg.epochs`` epochs; ``step(indices)`` returns the loss of a batch.

    A group with ``"frozen_epochs": k`` gets no gradients during the first ``k`` epochs (LP-FT's probe phase);
    a group made by :func:`~circuitml.tasks.l2_sp.anchor_group` is pulled toward its anchors after each step.
    Returns the mean training loss of each epoch; ``progress(epoch, loss)`` is called after each.
    """
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            if group.get("frozen_epochs", 0):
                for p in group["params"]:
                    p.requires_grad_(epoch >= group["frozen_epochs"])
        for m in modules:
            m.train()
        total, count = 0.0, 0
        for idx in minibatches(num_items, cfg.batch_size, rng):
            loss = step(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pull_toward_anchors(opt)
            for m in modules:
                step_routers(m)  # router anneals count optimizer steps
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if progress is not None:
            progress(epoch + 1, history[-1])
    for m in modules:
        m.eval()
    return history


# ------------------------------------------------------------------------------------------------ metrics
def mse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(true, np.float64)) ** 2))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))))


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute percentage error ``100 * mean(|pred - true| / |true|)``, on values far from 0 (raw counts).

    Computing it on z-scored targets (near 0 by construction) makes it meaningless; HOGA's authors (Deng et al.,
    2024) corrected their OpenABC-D numbers for exactly that, so callers pass de-normalized AND counts.
    """
    true = np.asarray(true, np.float64)
    if np.any(true == 0):
        raise ValueError("MAPE is undefined when a true value is 0")
    return float(100.0 * np.mean(np.abs(np.asarray(pred, np.float64) - true) / np.abs(true)))


def r2_score(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (0 for the mean predictor)."""
    true = np.asarray(true, np.float64)
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    ss_res = float(np.sum((np.asarray(pred, np.float64) - true) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), vectorized."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends - 1) / 2.0
    ranks = np.empty(x.size)
    ranks[order] = avg[group]
    return ranks


def spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); 0 when either side is constant."""
    a, b = _ranks(pred), _ranks(true)
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def binary_metrics(score: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, F1 (positive class 1) and ROC AUC of probabilities ``score`` against 0/1 ``label``."""
    from sklearn.metrics import roc_auc_score

    score = np.asarray(score, np.float64)
    label = np.asarray(label).astype(bool)
    pred = score >= threshold
    tp = int((pred & label).sum())
    fp = int((pred & ~label).sum())
    fn = int((~pred & label).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    auc = float(roc_auc_score(label, score)) if 0 < label.sum() < label.size else float("nan")
    return {"accuracy": float((pred == label).mean()), "f1": float(f1), "auc": auc}


# ------------------------------------------------------------------------------------------------ encoding
@dataclass
class TaskResult:
    """One trained task head: metrics on held-out groups, the trivial baseline's, and predictions for plots."""

    task: str
    encoder: str
    mode: str
    seed: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    history: list[float]
    pred: np.ndarray
    true: np.ndarray
    group: np.ndarray  # index into group_names of each prediction (design / circuit)
    group_names: list[str]
    notes: str = ""

    def summary(self) -> dict:
        return {
            "task": self.task,
            "encoder": self.encoder,
            "mode": self.mode,
            "seed": self.seed,
            "metrics": self.metrics,
            "baseline": self.baseline,
            "final_train_loss": self.history[-1] if self.history else None,
            "test_groups": sorted({self.group_names[g] for g in np.unique(self.group).tolist()}),
            "notes": self.notes,
        }


class GraphEncoding:
    """Runs an encoder on a fixed list of graphs, batched by PyG; caches everything once when it is frozen.

    Frozen encoders see each graph once (no gradients), so a task head trains on cached embeddings at the
    cost of a lookup; trainable ones re-encode the graphs of every batch. ``cache`` (a list, filled on first use)
    lets several runs of one frozen encoder share the embeddings — the seeds of ``evaluate`` encode once.
    """

    def __init__(
        self,
        encoder: nn.Module,
        graphs: Sequence,
        trainable: bool,
        *,
        device: torch.device | str = "cpu",
        cache: list | None = None,
    ) -> None:
        self.encoder = encoder
        self.graphs = list(graphs)
        self.trainable = trainable
        self.device = torch.device(device)
        self._cache: list | None = cache if cache is not None else []

    def _fill_cache(self) -> list:
        from torch_geometric.data import Batch

        if not self._cache:
            with torch.no_grad():
                for s in range(0, len(self.graphs), 32):
                    chunk = self.graphs[s : s + 32]
                    out = self.encoder(Batch.from_data_list(chunk).to(self.device))
                    sizes = [g.num_nodes for g in chunk]
                    nodes = torch.split(out.node, sizes)
                    self._cache.extend((n, out.graph[k]) for k, n in enumerate(nodes))
        return self._cache

    def __call__(self, idx: Sequence[int]):
        """``(node [sum N, h], graph [len(idx), h], batch vector, node offsets)`` for graphs ``idx``."""
        from torch_geometric.data import Batch

        idx = [int(i) for i in idx]
        if not self.trainable:
            cache = self._fill_cache()
            nodes = [cache[i][0] for i in idx]
            graph = torch.stack([cache[i][1] for i in idx])
            sizes = torch.tensor([n.size(0) for n in nodes], device=graph.device)
            batch = torch.repeat_interleave(torch.arange(len(idx), device=graph.device), sizes)
            return torch.cat(nodes), graph, batch, torch.cumsum(sizes, 0) - sizes
        b = Batch.from_data_list([self.graphs[i] for i in idx]).to(self.device)
        out = self.encoder(b)
        return out.node, out.graph, b.batch, b.ptr[:-1]

    def edges(self, idx: Sequence[int]) -> Tensor:
        """``long [2, E]`` edges of graphs ``idx`` numbered as in :meth:`__call__`'s node rows."""
        parts, offset = [], 0
        for i in idx:
            g = self.graphs[int(i)]
            parts.append(g.edge_index + offset)
            offset += g.num_nodes
        return torch.cat(parts, 1).to(self.device)

    def aux_loss(self) -> Tensor:
        fn = getattr(self.encoder, "aux_loss", None)
        if not self.trainable or fn is None:
            return torch.zeros((), device=self.device)
        return fn()


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden),
        nn.ReLU(),
        nn.Linear(d_hidden, d_hidden),
        nn.ReLU(),
        nn.Linear(d_hidden, d_out),
    )


def make_head(kind: str, d_in: int, d_hidden: int, d_out: int) -> nn.Module:
    """A fresh task head: ``mlp`` or a ``linear`` probe (``pretrained`` heads come from :func:`pretrained_head`)."""
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        return mlp(d_in, d_hidden, d_out)
    if kind == "pretrained":
        raise ConfigError(
            "head 'pretrained': this task has no pretraining head (probability and equivalence do)"
        )
    raise ConfigError(f"head: expected one of {', '.join(HEADS)}, got {kind!r}")


def pretrained_head(source, mode: str, cfg: TrainConfig, task: str, setting: str = "gates") -> nn.Module:
    """The task head initialised from the pretraining head shipped beside encoder ``source``
    (:func:`circuitml.pretrain.heads.load_task_head`); never a silent fresh head.

    Raises:
        ConfigError: the encoder is not pretrained (scratch/random) or is a module without a folder, or
            ``zero_shot`` with an encoder that trains.
        CheckpointError: the encoder folder has no such head.
    """
    from circuitml.pretrain.heads import load_task_head

    if not is_pretrained(source, mode):
        raise ConfigError(
            f"head 'pretrained': the {mode} encoder has no pretraining head (only a pretrained encoder, "
            "fine-tuned or frozen, carries one)"
        )
    if isinstance(source, nn.Module):
        raise ConfigError("head 'pretrained': expected the encoder as a folder or shipped name, got a module")
    if cfg.zero_shot and mode != "frozen":
        raise ConfigError(f"zero-shot: expected a frozen encoder, got mode {mode!r}")
    return load_task_head(source, task, setting)


def is_pretrained(source, mode: str) -> bool:
    """Whether the encoder of a run carries pretrained weights (the others start from random init)."""
    return source not in (None, "scratch") and mode in ("frozen", "finetune")


def result_label(source, mode: str) -> str:
    return str(source) if is_pretrained(source, mode) else mode


def param_groups(
    head: nn.Module, encoder: nn.Module, trainable: bool, pretrained: bool, cfg: TrainConfig
) -> list[dict]:
    """The head at ``cfg.lr``; a trainable encoder at ``cfg.lr`` (scratch) or, pretrained, at ``cfg.encoder_lr``
    with ``cfg.freeze_layers`` bottom blocks frozen, ``cfg.probe_epochs`` of head-only training first and, with
    ``cfg.sp_alpha``, L2-SP decay toward the pretrained weights in place of ordinary weight decay."""
    groups = [{"params": [p for p in head.parameters() if p.requires_grad], "lr": cfg.lr}]
    if not trainable:
        return groups
    if not pretrained:
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad], "lr": cfg.lr})
        return groups
    frozen = {id(p) for p in _bottom_parameters(encoder, cfg.freeze_layers)}
    for p in encoder.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    params = [p for p in encoder.parameters() if p.requires_grad]
    group = {"params": params, "lr": cfg.encoder_lr, "frozen_epochs": cfg.probe_epochs}
    groups.append(anchor_group(group, cfg.sp_alpha) if cfg.sp_alpha > 0 else group)
    return groups


def _bottom_parameters(encoder: nn.Module, num_layers: int) -> list[nn.Parameter]:
    """The type embedding and the first ``num_layers`` message-passing blocks of ``encoder``."""
    if num_layers == 0:
        return []
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or num_layers > len(layers):
        have = len(layers) if isinstance(layers, nn.ModuleList) else "no"
        raise ConfigError(
            f"--freeze-layers {num_layers}: the encoder ({type(encoder).__name__}) has {have} blocks to freeze"
        )
    params = list(encoder.type_embedding.parameters())
    if getattr(encoder, "pi_projection", None) is not None:  # the input embedding of random PI features
        params.extend(encoder.pi_projection.parameters())
    for layer in layers[:num_layers]:
        params.extend(layer.parameters())
    return params
