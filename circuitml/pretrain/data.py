"""Verilog + AIG pairs for MGVGA: loading from a dataset, a deterministic sharded order, and collation.

The batch order is a pure function of ``(seed, step)``: the sample stream is the concatenation of per-epoch
permutations drawn from ``numpy.random.default_rng([seed, epoch])``; global batch ``s`` is stream positions
``[s*B, (s+1)*B)``; it is cut into ``world_size * grad_accum`` contiguous micro-batches and micro-batch
``micro * world_size + rank`` goes to process ``rank`` at accumulation step ``micro``. Resuming therefore needs
only the step number, and one process with ``grad_accum = k * world`` sees exactly the same micro-batches as
``world`` processes with ``grad_accum = k`` (which is what the DDP test checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from circuitml.errors import DatasetError

__all__ = ["PretrainSample", "PretrainBatch", "PretrainData", "ContrastBatch", "BatchOrder", "collate"]


@dataclass
class PretrainSample:
    """One circuit graph and, when it has Verilog, its token ids or cached language-model states."""

    graph: Data
    tokens: Tensor | None = None  # [L] long, built-in Verilog encoder
    text_hidden: Tensor | None = None  # [L, H] float, frozen Hugging Face encoder

    @property
    def has_text(self) -> bool:
        return self.tokens is not None or self.text_hidden is not None


@dataclass
class PretrainBatch:
    """A PyG batch of graphs plus padded Verilog inputs.

    Attributes:
        graph: ``torch_geometric.data.Batch``.
        tokens: ``[B, L]`` long (0 = PAD) or None.
        text_hidden: ``[B, L, H]`` float or None.
        text_mask: ``[B, L]`` bool, True at real tokens.
        has_text: ``[B]`` bool.
    """

    graph: Batch
    tokens: Tensor | None
    text_hidden: Tensor | None
    text_mask: Tensor
    has_text: Tensor
    contrast: ContrastBatch | None = None
    qor: Any = None  # QoRBatch (circuitml.pretrain.qor) when recipe-response pretraining is on

    @property
    def num_graphs(self) -> int:
        return int(self.graph.num_graphs)

    def to(self, device: torch.device) -> PretrainBatch:
        return PretrainBatch(
            graph=self.graph.to(device),
            tokens=None if self.tokens is None else self.tokens.to(device),
            text_hidden=None if self.text_hidden is None else self.text_hidden.to(device),
            text_mask=self.text_mask.to(device),
            has_text=self.has_text.to(device),
            contrast=None if self.contrast is None else self.contrast.to(device),
            qor=None if self.qor is None else self.qor.to(device),
        )


def collate(samples: list[PretrainSample]) -> PretrainBatch:
    """Batch graphs with PyG and right-pad the Verilog sequences."""
    graph = Batch.from_data_list([s.graph for s in samples])
    lengths = [
        0 if not s.has_text else (len(s.tokens) if s.tokens is not None else s.text_hidden.size(0))
        for s in samples
    ]
    width = max(1, max(lengths))
    text_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    has_text = torch.tensor([s.has_text for s in samples], dtype=torch.bool)
    tokens = text_hidden = None
    if any(s.tokens is not None for s in samples):
        tokens = torch.zeros(len(samples), width, dtype=torch.long)
        for i, s in enumerate(samples):
            if s.tokens is not None:
                tokens[i, : len(s.tokens)] = s.tokens
    if any(s.text_hidden is not None for s in samples):
        dim = next(s.text_hidden.size(1) for s in samples if s.text_hidden is not None)
        text_hidden = torch.zeros(len(samples), width, dim)
        for i, s in enumerate(samples):
            if s.text_hidden is not None:
                text_hidden[i, : s.text_hidden.size(0)] = s.text_hidden
    return PretrainBatch(graph, tokens, text_hidden, text_mask, has_text)


def _merge_partners(records: list[dict], seed: int) -> dict[int, int]:
    """Circuit index → another circuit of its design (records' ``design`` key), drawn per circuit from
    ``(seed, index)``; designs with one circuit have no entry."""
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.get("design"):
            groups.setdefault(str(rec["design"]), []).append(i)
    out = {}
    for members in groups.values():
        for k, i in enumerate(members):
            if len(members) > 1:
                pick = int(np.random.default_rng([seed, 11, i]).integers(len(members) - 1))
                out[i] = members[pick + (pick >= k)]
    return out


class PretrainData:
    """All samples of a dataset, held in memory (AIG graphs are small; the dataset is read once).

    Args:
        dataset: a :class:`circuitml.datasets.CircuitDataset` (anything with ``len``, ``records``, ``aig(i)``,
            ``verilog_tokens(i)`` and ``verilog_source(i)``).
        explicit_not: graph construction of the encoder being trained.
        text: ``"builtin"`` (token ids), an :class:`~circuitml.pretrain.verilog_encoder.HFVerilogFeatures`
            (cached hidden states), or None (no VGA: Verilog is not loaded).
        max_tokens: sequences are cut to this length.
        max_nodes: larger circuits are skipped.
        verilog: ``"own"`` (each circuit's Verilog), ``"shuffled"`` (another design's: a fixed derangement of
            designs) or ``"none"`` (a constant one-token text that carries no information) — the VGA ablation.
        signatures: attach ``sig`` (simulation signatures, :func:`~circuitml.pretrain.signatures.node_signatures`)
            to every graph, for the functional objectives.
        contrast: also keep one proved non-equivalent one-gate mutant per circuit and the design groups
            (records' ``design`` key; a circuit without one is its own design) for contrastive pairs.
        merge_variants: each circuit's graph holds it merged with another circuit of its design (drawn by
            ``seed``, same PI count; alone when there is none), see ``data.merge_variants``.
        seed: draws the derangement, the mutants and the merge partners.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        explicit_not: bool,
        text: Any,
        max_tokens: int,
        max_nodes: int,
        verilog: str = "own",
        signatures: bool = False,
        contrast: bool = False,
        merge_variants: bool = False,
        seed: int = 0,
    ):
        from circuitml.aig import merge_with_copy
        from circuitml.graph import aig_to_data
        from circuitml.pretrain.signatures import node_signatures, one_gate_mutant

        self.samples: list[PretrainSample] = []
        self.mutants: list[Data | None] = []
        self.skipped = 0
        kept: list[int] = []
        designs: list[str] = []
        records = getattr(dataset, "records", None)
        partner = _merge_partners(records, seed) if merge_variants and records is not None else {}
        self.merged = 0
        for i in range(len(dataset)):
            rec = records[i] if records is not None else {}
            if sum(rec.get(k, 0) for k in ("num_pis", "num_ands", "num_pos")) > max_nodes:
                self.skipped += 1  # a lower bound on the graph's nodes already exceeds the cap: skip unread
                continue
            aig = dataset.aig(i)
            if i in partner:
                other = dataset.aig(partner[i])
                if other.num_pis == aig.num_pis:
                    aig = merge_with_copy(aig, other)
                    self.merged += 1
            graph = aig_to_data(aig, explicit_not=explicit_not)
            if graph.num_nodes > max_nodes:
                self.skipped += 1
                continue
            graph.graph_id = torch.tensor([i], dtype=torch.long)
            if signatures or contrast:
                graph.sig = node_signatures(aig, graph)
            if contrast:
                mutant = one_gate_mutant(aig, np.random.default_rng([seed, i]))
                if mutant is not None:
                    mgraph = aig_to_data(mutant, explicit_not=explicit_not)
                    mgraph.sig = node_signatures(mutant, mgraph)
                    mutant = mgraph
                self.mutants.append(mutant)
            designs.append(str(rec.get("design") or rec.get("id") or i))
            kept.append(i)
            self.samples.append(PretrainSample(graph=graph))
        if not self.samples:
            raise DatasetError(
                f"{getattr(dataset, 'root', 'dataset')}: expected at least one circuit with at most {max_nodes} "
                f"graph nodes (data.max_nodes), found {len(dataset)} circuits, {self.skipped} too large"
            )
        names = sorted(set(designs))
        index = {d: k for k, d in enumerate(names)}
        self.design = torch.tensor([index[d] for d in designs], dtype=torch.long)
        self.groups: list[list[int]] = [[] for _ in names]
        for k, d in enumerate(self.design.tolist()):
            self.groups[d].append(k)
        if text is not None:
            self._load_text(dataset, kept, text, max_tokens, verilog, seed)

    def _load_text(
        self, dataset: Any, kept: list[int], text: Any, max_tokens: int, verilog: str, seed: int
    ) -> None:
        source = {k: i for k, i in enumerate(kept)}
        if verilog == "shuffled":  # each design reads the Verilog of another design (fixed derangement)
            order = np.random.default_rng([seed, 7]).permutation(len(self.groups))
            nxt = {int(order[k]): int(order[(k + 1) % len(order)]) for k in range(len(order))}
            source = {k: kept[self.groups[nxt[int(self.design[k])]][0]] for k in range(len(kept))}
        for k, sample in enumerate(self.samples):
            if verilog == "none":  # one constant token: the decoder attends to something without information
                if text == "builtin":
                    sample.tokens = torch.zeros(1, dtype=torch.long)
                else:
                    sample.text_hidden = torch.zeros(1, text.hidden_size)
            elif text == "builtin":
                ids = dataset.verilog_tokens(source[k])
                if ids:
                    sample.tokens = torch.as_tensor(ids[:max_tokens], dtype=torch.long)
            else:
                src = dataset.verilog_source(source[k])
                if src:
                    sample.text_hidden = text.features(src)[:max_tokens]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_with_text(self) -> int:
        return sum(s.has_text for s in self.samples)

    def contrast_batch(self, idx: np.ndarray, generator: torch.Generator) -> ContrastBatch:
        """Positives (a random other member of each anchor's design group, itself when alone) and mutants."""
        partners = []
        for i in idx.tolist():
            group = self.groups[int(self.design[i])]
            others = [j for j in group if j != i] or [i]
            partners.append(others[int(torch.randint(len(others), (1,), generator=generator))])
        have = [k for k, i in enumerate(idx.tolist()) if self.mutants[i] is not None]
        mutants = Batch.from_data_list([self.mutants[int(idx[k])] for k in have]) if have else None
        return ContrastBatch(
            positive=Batch.from_data_list([self.samples[j].graph for j in partners]),
            mutant=mutants,
            mutant_of=torch.tensor(have, dtype=torch.long),
            design=self.design[torch.as_tensor(idx, dtype=torch.long)],
        )


@dataclass
class ContrastBatch:
    """What the contrastive objective needs beside the anchors: positives, mutants (of ``mutant_of`` anchors)."""

    positive: Batch
    mutant: Batch | None
    mutant_of: Tensor
    design: Tensor

    def to(self, device: torch.device) -> ContrastBatch:
        return ContrastBatch(
            self.positive.to(device),
            None if self.mutant is None else self.mutant.to(device),
            self.mutant_of.to(device),
            self.design.to(device),
        )


class BatchOrder:
    """Which samples form each (global batch, micro-batch) — a pure function of ``(seed, step)``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        self.n = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_batch(self, step: int) -> np.ndarray:
        flat = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, pos = np.divmod(flat, self.n)
        return np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos, strict=False)], dtype=np.int64)

    def micro_batch(self, step: int, micro: int, rank: int, world_size: int, grad_accum: int) -> np.ndarray:
        chunks = np.array_split(self.global_batch(step), world_size * grad_accum)
        return chunks[micro * world_size + rank]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n
