"""Training and evaluation of the four fusions on the description–AIG data set, and the seed × fusion comparison.

Every frozen computation is done once per process and shared by all runs (:class:`PillResources`): the circuit
encoder's pooled features per design (also cached on disk beside ``pill.json``), and the text's hidden states
entering the first fused layer per description (the layers below ``fuse_from`` are the unchanged LM on the text
alone). A training step then runs only the fused top layers with their adapters, gates and projections.

Training: binary matching (BCE) on one positive and one hard negative per sampled training design. Evaluation,
on items drawn with a fixed seed so every fusion and seed sees the same ones: matching accuracy (logit > 0), and
multiple choice among ``choices`` same-family candidates, picking the circuit for a description or the
description for a circuit (argmax of the scores; a tie counts as a uniform random pick among the tied, so a
fusion blind to one side scores chance, not the right answer's fixed position).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitml.errors import ConfigError

from .data import SPLITS, PillDesign, choice_items, load_pill_designs, matching_pairs
from .model import FUSIONS, PILLBert, TextCircuitScorer, fusion_bottleneck, trainable_parameters

__all__ = ["PillTrainConfig", "PillResources", "train_pill", "compare_fusions", "results_table"]

EVAL_SEED = 12345  # evaluation items do not depend on the training seed


@dataclass(frozen=True)
class PillTrainConfig:
    """One training run. ``bottleneck`` is PILL's per-expert adapter width (concat/text get twice it)."""

    fusion: str = "pill"
    steps: int = 300
    batch: int = 16  # designs per step; each gives one positive and one hard-negative pair
    lr: float = 1e-3
    bottleneck: int = 16
    num_tokens: int = 8
    fuse_from: int = 3
    choices: int = 4
    seed: int = 0
    adapter: str = "bottleneck"  # or "glu", PILL's improved adapter (for every fusion that has adapters)

    def check(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"pill: fusion {self.fusion!r}: expected one of {', '.join(FUSIONS)}")
        for name in ("steps", "batch", "bottleneck", "num_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pill: {name}: expected a positive number, got {getattr(self, name)}")
        if self.adapter not in ("bottleneck", "glu"):
            raise ConfigError(f"pill: adapter {self.adapter!r}: expected 'bottleneck' or 'glu'")
        if self.choices < 2:
            raise ConfigError(f"pill: choices: expected at least 2, got {self.choices}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"pill: lr: expected a positive number, got {self.lr}")


class PillResources:
    """The frozen LM and encoder, the designs, and the frozen features every run shares.

    Args:
        root: a data set made by :func:`~circuitml.tasks.pill.data.build_pill_dataset`.
        bert, tokenizer: the frozen language model (e.g. :func:`circuitml.lm.load_lm`).
        encoder: the frozen circuit encoder (e.g. ``circuitml.load_encoder("deepgcn32-allobj-corpus")``).
        encoder_name: names the on-disk feature cache (``None``: no disk cache).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        bert: torch.nn.Module,
        tokenizer: Any,
        encoder: torch.nn.Module,
        encoder_name: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.root = Path(root)
        self.device = torch.device(device)
        self.bert, self.tokenizer = bert.eval().to(self.device), tokenizer
        self.encoder = encoder.eval().to(self.device)
        self.encoder_name = encoder_name
        self.designs = load_pill_designs(root)
        if not self.designs:
            raise ConfigError(f"{self.root}: the pill data set holds no designs")
        self._circuits: dict[int, dict[str, Tensor]] = {}
        self._texts: dict[int, tuple[dict[str, int], Tensor, Tensor]] = {}

    def split(self, name: str) -> list[PillDesign]:
        return [d for d in self.designs if d.split == name]

    def circuit_features(self, num_tokens: int) -> dict[str, Tensor]:
        """Pooled frozen-encoder features ``[k, out_dim + 1]`` per design id."""
        if num_tokens in self._circuits:
            return self._circuits[num_tokens]
        from circuitml.datasets import CircuitDataset
        from safetensors.torch import load_file
        from safetensors.torch import save as st_save

        from circuitml.fileio import atomic_write

        from .model import CircuitTokens

        ids = [d.id for d in self.designs]
        path = None
        if self.encoder_name is not None:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.encoder_name)
            path = self.root / "pill_cache" / f"{safe}-k{num_tokens}.safetensors"
            if path.is_file():
                cached = load_file(str(path))
                if set(ids) <= set(cached):
                    self._circuits[num_tokens] = cached
                    return cached
        from torch_geometric.data import Batch

        ds = CircuitDataset(self.root)
        pos = {rec["id"]: i for i, rec in enumerate(ds.records)}
        pooler = CircuitTokens(self.encoder, 1, num_tokens)
        feats: dict[str, Tensor] = {}
        for start in range(0, len(ids), 16):
            chunk = ids[start : start + 16]
            pooled = pooler.pool(Batch.from_data_list([ds.graph(pos[i]) for i in chunk]).to(self.device))
            feats.update({i: pooled[j].cpu().contiguous() for j, i in enumerate(chunk)})  # cached on the CPU
        if path is not None:
            atomic_write(path, st_save(feats))
        self._circuits[num_tokens] = feats
        return feats

    def text_states(self, fuse_from: int) -> tuple[dict[str, int], Tensor, Tensor]:
        """Every description's row, its frozen states entering layer ``fuse_from`` ``[U, T, d]`` and mask ``[U, T]``."""
        if fuse_from in self._texts:
            return self._texts[fuse_from]
        texts = sorted({t for d in self.designs for t in d.descriptions})
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        lm = PILLBert(self.bert, "concat", 1, fuse_from).to(self.device)
        states = torch.cat(
            [
                lm.frozen_states(enc["input_ids"][i : i + 64], enc["attention_mask"][i : i + 64])
                for i in range(0, len(texts), 64)
            ]
        )
        self._texts[fuse_from] = ({t: i for i, t in enumerate(texts)}, states, enc["attention_mask"])
        return self._texts[fuse_from]


def _score(
    model: TextCircuitScorer,
    res: PillResources,
    cfg: PillTrainConfig,
    pairs: Sequence[tuple[str, PillDesign]],
) -> Tensor:
    """Scores ``[len(pairs)]`` of ``(description, design)`` pairs from the cached frozen features."""
    feats = res.circuit_features(cfg.num_tokens)
    circuits = (
        torch.stack([feats[d.id] for _, d in pairs]).to(res.device) if model.circuit is not None else None
    )
    if model.lm is None:
        return model.score_states(None, None, circuits)
    rows, states, mask = res.text_states(cfg.fuse_from)
    idx = torch.tensor([rows[t] for t, _ in pairs], device=states.device)
    m = mask[idx]
    length = int(m.sum(1).max())  # trim the padding no text of this batch needs
    return model.score_states(states[idx, :length], m[:, :length], circuits)


def choice_hit(scores: Tensor) -> float:
    """Expected accuracy of picking the best of ``scores`` (the right answer first), ties broken at random."""
    best = scores.max()
    tied = (scores >= best - 1e-6 * max(1.0, float(best.abs()))).nonzero().flatten().tolist()
    return 1.0 / len(tied) if 0 in tied else 0.0


def build_model(res: PillResources, cfg: PillTrainConfig) -> TextCircuitScorer:
    return TextCircuitScorer(
        res.bert,
        res.encoder,
        cfg.fusion,
        bottleneck=fusion_bottleneck(cfg.fusion, cfg.bottleneck),
        num_tokens=cfg.num_tokens,
        fuse_from=cfg.fuse_from,
        adapter=cfg.adapter,
    ).to(res.device)


@torch.no_grad()
def evaluate(
    model: TextCircuitScorer, res: PillResources, cfg: PillTrainConfig, split: str
) -> dict[str, float]:
    """Matching and multiple-choice accuracy on ``split`` (items drawn with :data:`EVAL_SEED`)."""
    model.eval()
    designs = res.split(split)
    rng = random.Random(EVAL_SEED)
    pairs = matching_pairs(designs, rng, fallback=res.designs)
    scores = torch.cat(
        [_score(model, res, cfg, [(t, d) for t, d, _ in pairs[i : i + 64]]) for i in range(0, len(pairs), 64)]
    ).cpu()
    labels = torch.tensor([y for _, _, y in pairs], dtype=torch.bool)
    out = {"match": float(((scores > 0) == labels).float().mean()), "pairs": len(pairs)}
    hits: dict[str, list[float]] = {"choose_circuit": [], "choose_text": []}
    for texts, circuits in choice_items(designs, cfg.choices, rng, fallback=res.designs):
        cand = [(texts[0], c) for c in circuits] if len(texts) == 1 else [(t, circuits[0]) for t in texts]
        key = "choose_circuit" if len(texts) == 1 else "choose_text"
        hits[key].append(choice_hit(_score(model, res, cfg, cand).cpu()))
    for key, h in hits.items():
        out[key] = sum(h) / len(h) if h else float("nan")
        out[f"{key}_items"] = len(h)
    return out


def train_pill(
    res: PillResources,
    cfg: PillTrainConfig,
    *,
    log: Callable[[str], None] | None = None,
    splits: Sequence[str] = ("test_seed", "test_width"),
) -> dict[str, Any]:
    """Train one fusion with ``cfg`` and evaluate it; returns the config, parameter count, CPU seconds, scores."""
    cfg.check()
    start = time.process_time()
    # the frozen features are shared by every run: computed before the clock of this run's training starts
    res.circuit_features(cfg.num_tokens)
    if cfg.fusion != "circuit":
        res.text_states(cfg.fuse_from)
    setup = time.process_time() - start
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = build_model(res, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    train = res.split("train")
    if not train:
        raise ConfigError(f"{res.root}: the pill data set has no training designs")
    t0 = time.process_time()
    losses = []
    for step in range(1, cfg.steps + 1):
        model.train()
        batch = rng.sample(train, min(cfg.batch, len(train)))
        pairs = matching_pairs(batch, rng, fallback=train)
        target = torch.tensor([float(y) for _, _, y in pairs], device=res.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            _score(model, res, cfg, [(t, d) for t, d, _ in pairs]), target
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 50 == 0 or step == cfg.steps):
            log(
                f"{cfg.fusion} seed {cfg.seed} step {step}/{cfg.steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f}"
            )
    train_cpu = time.process_time() - t0
    scores = {split: evaluate(model, res, cfg, split) for split in splits}
    gates = None
    if model.lm is not None and model.lm.gates is not None:
        gates = [float(g().detach().abs().mean()) for g in model.lm.gates]
    return {
        "config": asdict(cfg),
        "trainable_parameters": trainable_parameters(model),
        "setup_cpu_s": setup,
        "train_cpu_s": train_cpu,
        "eval_cpu_s": time.process_time() - t0 - train_cpu,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "mean_abs_gate": gates,
        "scores": scores,
    }


def compare_fusions(
    res: PillResources,
    out: str | os.PathLike,
    base: PillTrainConfig,
    fusions: Sequence[str] = FUSIONS,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every fusion × seed, writing ``out/results.json`` after each run.

    A rerun with the same settings skips the runs already in ``results.json`` (resume after an interruption).
    """
    from circuitml.fileio import atomic_write, read_json

    out = Path(out)
    path = out / "results.json"
    settings = {k: v for k, v in asdict(base).items() if k not in ("fusion", "seed")}
    results: dict[str, Any] = {"settings": settings, "runs": {}}
    if path.is_file():
        old = read_json(path, error=ConfigError, what="pill results")
        if isinstance(old, dict) and old.get("settings") == settings:
            results = old
        elif log is not None:
            log(f"{path}: other settings; starting over")
    for seed in seeds:  # seed-major: an interrupted comparison still has every fusion at the first seeds
        for fusion in fusions:
            key = f"{fusion}/{seed}"
            if key in results["runs"]:
                continue
            cfg = PillTrainConfig(**{**settings, "fusion": fusion, "seed": seed})
            results["runs"][key] = train_pill(res, cfg, log=log)
            atomic_write(path, json.dumps(results, indent=1))
            if log is not None:
                s = results["runs"][key]["scores"]
                log(f"{key}: " + "; ".join(f"{sp} match {v['match']:.3f}" for sp, v in s.items()))
    return results


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def results_table(results: dict[str, Any]) -> list[list[str]]:
    """Rows ``[fusion, params, seeds, CPU s/run, then mean ± std (sample std over seeds) per split × metric]``."""
    by_fusion: dict[str, list[dict[str, Any]]] = {}
    for key, run in results["runs"].items():
        by_fusion.setdefault(key.split("/")[0], []).append(run)
    header = ["fusion", "trainable params", "seeds", "train CPU s"]
    metrics = ("match", "choose_circuit", "choose_text")
    header += [f"{split} {m}" for split in SPLITS[1:] for m in metrics]
    rows = [header]
    for fusion in [f for f in FUSIONS if f in by_fusion]:
        runs = by_fusion[fusion]
        row = [fusion, str(runs[0]["trainable_parameters"]), str(len(runs))]
        row.append(f"{sum(r['train_cpu_s'] for r in runs) / len(runs):.0f}")
        for split in SPLITS[1:]:
            for m in metrics:
                row.append(_mean_std([r["scores"][split][m] for r in runs if split in r["scores"]]))
        rows.append(row)
    return rows
