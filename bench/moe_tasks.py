"""The two small trained-model tasks the MoE-systems benches share (QMoE, PR-MoE/MoS, MoE²).

* **text** — character-level next-character prediction on the SQuAD 2.0 sample contexts in
  ``../shared/data`` (first 90% of the text to train, last 10% to test); metric: bits per character.
  Model: character embedding, a causal convolution over the last ``CONTEXT`` characters, an MoE stack, a
  linear read-out.
* **circuit** — DeepGate's signal-probability regression on the ISCAS'85 AIGs in ``../shared/data``
  (whole circuits held out); metric: mean absolute error over AND/NOT nodes. Model: node-type embedding plus
  normalized levels, then per layer a SAGE message-passing step and an MoE layer.

Both models wrap a :class:`~circuitml.moe.systems.pr_moe.PreNormMoEStack`, so a standard MoE, a PR-MoE and a
Mixture-of-Students student plug into either.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from circuitml.moe.systems.pr_moe import PreNormMoEStack
from circuitml.tasks.probability import _gate_mask as gate_mask  # AND/NOT nodes: the task's own metric mask
from torch import Tensor, nn

SHARED = Path(
    os.environ.get("CIRCUITML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SQUAD = SHARED / "deepset-ai__haystack/test/samples/squad/small.json"
ISCAS = SHARED / "lsils__mockturtle/experiments/benchmarks"
CONTEXT = 16


# ----------------------------------------------------------------------------------------------------- text
def text_data() -> tuple[Tensor, Tensor, int]:
    """``(train ids, test ids, vocab size)`` of the SQuAD sample's contexts, one id per character."""
    data = json.loads(SQUAD.read_text())
    text = "\n".join(p["context"] for a in data["data"] for p in a["paragraphs"])
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(vocab)


class CharLM(nn.Module):
    def __init__(self, stack: PreNormMoEStack, vocab: int, d_model: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.conv = nn.Conv1d(d_model, d_model, CONTEXT)
        self.stack = stack
        self.out = nn.Linear(d_model, vocab)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``ids [B, T]`` -> logits ``[B, T - CONTEXT + 1, V]`` for the character after each window, aux loss."""
        h = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        y, aux = self.stack(h)
        return self.out(y), aux


def text_batch(ids: Tensor, batch: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    start = torch.randint(0, len(ids) - length - 1, (batch,), generator=g)
    window = ids[start[:, None] + torch.arange(length + 1)]
    return window[:, :-1], window[:, CONTEXT:]


def text_eval(model: CharLM, ids: Tensor, length: int = 512) -> float:
    """Bits per character on ``ids`` (non-overlapping windows)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - length - 1, length - CONTEXT + 1):
            window = ids[s : s + length + 1]
            logits, _ = model(window[None, :-1])
            target = window[None, CONTEXT:]
            total += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            )
            count += target.numel()
    model.train()
    return total / count / float(torch.log(torch.tensor(2.0)))


# -------------------------------------------------------------------------------------------------- circuit
def circuit_data(test_names: Sequence[str] = ("c1908", "c3540", "c880")):
    """``(train graphs, test graphs)`` of ISCAS'85 with signal-probability labels (4096 patterns)."""
    from circuitml.tasks.probability import build_probability_graphs

    from circuitml.formats import read_circuit

    files = sorted(ISCAS.glob("c*.aig"))
    graphs = build_probability_graphs([read_circuit(f) for f in files])
    train = [g for g, f in zip(graphs, files, strict=True) if f.stem not in test_names]
    test = [g for g, f in zip(graphs, files, strict=True) if f.stem in test_names]
    return train, test


class CircuitNet(nn.Module):
    def __init__(self, stack: PreNormMoEStack, d_model: int, num_types: int = 8) -> None:
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.embed = nn.Embedding(num_types, d_model)
        self.levels = nn.Linear(2, d_model)
        self.convs = nn.ModuleList(SAGEConv(d_model, d_model) for _ in stack.layers)
        self.stack = stack
        self.head = nn.Linear(d_model, 1)

    def forward(self, data) -> tuple[Tensor, Tensor]:
        lv = torch.stack([data.level.float(), data.rev_level.float()], -1)
        x = self.embed(data.x) + self.levels(lv / lv.max().clamp_min(1))
        aux = x.new_zeros(())
        for conv, norm, layer in zip(self.convs, self.stack.norms, self.stack.layers, strict=True):
            x = x + conv(x, data.edge_index)
            out = layer(norm(x))
            x, aux = x + out.out, aux + out.aux_loss
        return torch.sigmoid(self.head(self.stack.final_norm(x))).squeeze(-1), aux

    def keep_layers(self, keep: Sequence[int], stack: PreNormMoEStack) -> CircuitNet:
        """A copy using ``stack`` (a student of this model's stack) and the convolutions of layers ``keep``."""
        net = copy.deepcopy(self)
        net.stack = stack
        net.convs = nn.ModuleList(copy.deepcopy(self.convs[i]) for i in keep)
        return net


def circuit_eval(model: CircuitNet, graphs) -> float:
    """Mean absolute error of the predicted signal probability over AND/NOT nodes of ``graphs``."""
    from torch_geometric.data import Batch

    model.eval()
    with torch.no_grad():
        b = Batch.from_data_list(list(graphs))
        pred, _ = model(b)
        mask = gate_mask(b)
        err = float((pred[mask] - b.prob[mask]).abs().mean())
    model.train()
    return err


# ----------------------------------------------------------------------------------------------- training
def train(
    model: nn.Module,
    loss_fn: Callable[[int], Tensor],
    steps: int,
    lr: float = 3e-3,
    log: Callable[[str], None] | None = None,
) -> None:
    """Adam for ``steps`` steps on ``loss_fn(step)`` (which includes the aux loss), cosine-decayed ``lr``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss = loss_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log(f"  step {step + 1}/{steps} loss {float(loss):.4f}")


def text_loss(model: CharLM, ids: Tensor, g: torch.Generator, batch: int = 16, length: int = 128):
    def loss(step: int) -> Tensor:
        x, y = text_batch(ids, batch, length, g)
        logits, aux = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux

    return loss


def circuit_loss(model: CircuitNet, graphs, g: torch.Generator, per_step: int = 2):
    from torch_geometric.data import Batch

    def loss(step: int) -> Tensor:
        pick = torch.randperm(len(graphs), generator=g)[:per_step].tolist()
        b = Batch.from_data_list([graphs[i] for i in pick])
        pred, aux = model(b)
        mask = gate_mask(b)
        return (pred[mask] - b.prob[mask]).abs().mean() + aux

    return loss


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
