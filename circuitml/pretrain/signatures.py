"""Simulation signatures of graph nodes, one-gate mutants, and the trivial structural predictors every objective
is compared with.

A node's *signature* is its value under a fixed set of random input patterns (64 patterns per ``uint64`` word,
bit-parallel simulation by :mod:`circuitml.sim`); two nodes with equal signatures are probably equivalent, and the
normalized Hamming distance of two signatures estimates how often the two functions differ (DeepGate2's
functional-similarity target). The patterns depend only on the seed and the PI count, so the recipe variants of
one design get identical signatures at their POs.

The *trivial predictors* exist so a degenerate target shows in ``metrics.csv``: if a lookup from (in-degree,
out-degree) to gate type, or a linear fit on level/fanout features, scores as well as the decoder, the objective
teaches the encoder nothing a user needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from circuitml.aig import AIG
from circuitml.graph import NOT, NUM_NODE_TYPES, PO

__all__ = [
    "SIGNATURE_WORDS",
    "node_signatures",
    "signature_bits",
    "one_gate_mutant",
    "degree_lookup_accuracy",
    "structural_features",
    "linear_fit",
]

#: 64-bit words of random patterns per signature (128 patterns).
SIGNATURE_WORDS = 2
_M1 = 0xFFFFFFFFFFFFFFFF


def node_signatures(aig: AIG, graph: Data, num_words: int = SIGNATURE_WORDS, seed: int = 0) -> Tensor:
    """``int64 [N, num_words]`` (bit patterns of ``uint64``) signature of every graph node of ``aig_to_data(aig)``:
    its AIG node's values, complemented at NOT nodes; PO nodes (the last ``num_pos`` nodes) carry their output
    literal's value."""
    from circuitml.sim import random_pi_words, simulate_words

    words = simulate_words(aig, random_pi_words(aig.num_pis, 64 * num_words, seed))
    node = graph.aig_node.numpy()
    kind = graph.x.numpy()
    sig = np.zeros((node.size, num_words), dtype=np.uint64)
    inner = node >= 0
    sig[inner] = words[node[inner]]
    sig[kind == NOT] ^= np.uint64(_M1)
    if aig.num_pos:
        lits = aig.pos
        po_sig = words[lits >> 1] ^ np.where((lits & 1)[:, None] == 1, np.uint64(_M1), np.uint64(0))
        po_nodes = np.flatnonzero(kind == PO)
        sig[po_nodes[-aig.num_pos :]] = po_sig
    return torch.from_numpy(sig.view(np.int64))


def signature_bits(sig: Tensor) -> Tensor:
    """``float [N, 64 * W]`` 0/1 bits of ``int64 [N, W]`` signatures."""
    shifts = torch.arange(64, device=sig.device)
    bits = (sig[:, :, None] >> shifts) & 1
    return bits.reshape(sig.size(0), -1).float()


def one_gate_mutant(aig: AIG, rng: np.random.Generator, tries: int = 8, num_words: int = 2) -> AIG | None:
    """``aig`` with one AND fanin complemented, *proved* non-equivalent by a simulation counterexample (a
    pattern on which some output differs); None when ``tries`` random gates gave none (e.g. redundant logic)."""
    from circuitml.sim import random_pi_words, simulate_outputs

    if aig.num_ands == 0 or aig.num_pos == 0:
        return None
    words = random_pi_words(aig.num_pis, 64 * num_words, int(rng.integers(1 << 31)))
    ref = simulate_outputs(aig, words)
    for _ in range(tries):
        mutant = aig.copy()
        gate, side = int(rng.integers(aig.num_ands)), int(rng.integers(2))
        mutant.ands[gate, side] ^= 1
        if not np.array_equal(simulate_outputs(mutant, words), ref):
            return mutant
    return None


def degree_lookup_accuracy(indeg: Tensor, outdeg: Tensor, target: Tensor) -> Tensor:
    """Accuracy of the best lookup table (in-degree, out-degree) → class, fit on the same nodes (an upper bound
    for a degree-counting decoder)."""
    if target.numel() == 0:
        return torch.zeros((), device=target.device)
    key = indeg.long().clamp(max=63) * 64 + outdeg.long().clamp(max=63)
    pair = key * NUM_NODE_TYPES + target.long()
    counts = torch.bincount(pair, minlength=64 * 64 * NUM_NODE_TYPES).view(64 * 64, NUM_NODE_TYPES)
    return counts.max(1).values.sum().float() / target.numel()


def structural_features(graph: Data) -> Tensor:
    """``[N, 4 + NUM_NODE_TYPES]`` features of a (batched) graph a trivial predictor may use: bias, normalized
    level and reverse level, log fanin and fanout counts, node-type one-hot."""
    n = graph.num_nodes
    ones = torch.ones(graph.edge_index.size(1), device=graph.x.device)
    indeg = torch.zeros(n, device=graph.x.device).index_add_(0, graph.edge_index[1], ones)
    outdeg = torch.zeros(n, device=graph.x.device).index_add_(0, graph.edge_index[0], ones)
    depth = (graph.level + graph.rev_level).float().clamp(min=1)
    return torch.cat(
        [
            torch.ones(n, 1, device=graph.x.device),
            (graph.level.float() / depth)[:, None],
            (graph.rev_level.float() / depth)[:, None],
            torch.log1p(indeg)[:, None],
            torch.log1p(outdeg)[:, None],
            torch.nn.functional.one_hot(graph.x.clamp(max=NUM_NODE_TYPES - 1), NUM_NODE_TYPES).float(),
        ],
        dim=1,
    )


def linear_fit(features: Tensor, target: Tensor) -> Tensor:
    """Least-squares prediction of ``target [n]`` (or ``[n, k]``) from ``features [n, f]``, fit on the same rows."""
    if features.size(0) == 0:
        return target.clone()
    x, y = features.double(), target.double()
    squeeze = y.dim() == 1
    y = y[:, None] if squeeze else y
    ridge = 1e-6 * torch.eye(x.size(1), dtype=x.dtype, device=x.device)
    coef = torch.linalg.solve(x.T @ x + ridge, x.T @ y)
    pred = (x @ coef).to(target.dtype)
    return pred[:, 0] if squeeze else pred
