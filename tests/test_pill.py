"""PILL: gated modality attention and modality adapters, checked naively; the closed gate leaves the LM unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from circuitml.moe.pill import ModalityAdapterExperts, gated_modality_attention
from torch_geometric.data import Batch

from circuitml.encoders import EncoderConfig
from circuitml.errors import ConfigError
from circuitml.graph import aig_to_data
from tests.test_lm import needs_minilm
from tests.test_qa import tiny_bert_config
from tests.test_shift import _adder, _parity

transformers = pytest.importorskip("transformers")


def _softmax_attend(q, k, v, keys):
    """One query ``q [dh]`` attending the listed key rows of ``k, v [T, dh]`` (zero when there are none)."""
    if not keys:
        return torch.zeros_like(q)
    s = torch.stack([q @ k[j] / math.sqrt(q.shape[-1]) for j in keys])
    return (torch.softmax(s, 0)[:, None] * v[keys]).sum(0)


def _naive_attention(q, k, v, modality, key_mask, gate):
    b, h, t, _ = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        real = [j for j in range(t) if key_mask[bi, j]]
        base = [j for j in real if modality[bi, j] == 0]
        other = [j for j in real if modality[bi, j] != 0]
        for hi in range(h):
            for i in range(t):
                qi, ki, vi = q[bi, hi, i], k[bi, hi], v[bi, hi]
                if modality[bi, i] == 0:
                    out[bi, hi, i] = _softmax_attend(qi, ki, vi, base) + gate[hi] * _softmax_attend(
                        qi, ki, vi, other
                    )
                else:
                    out[bi, hi, i] = _softmax_attend(qi, ki, vi, real)
    return out


def test_gated_attention_matches_naive_reference() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    modality = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 1]])
    key_mask = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    gate = torch.tensor([0.0, 0.5, -0.3])
    got = gated_modality_attention(q, k, v, modality, key_mask, gate)
    torch.testing.assert_close(got, _naive_attention(q, k, v, modality, key_mask, gate), rtol=1e-5, atol=1e-5)


def test_modality_adapters_route_each_token_to_its_modality() -> None:
    torch.manual_seed(0)
    layer = ModalityAdapterExperts(8, num_modalities=2, bottleneck=3)
    with torch.no_grad():
        layer.experts.up.normal_()
    h, modality = torch.randn(2, 5, 8), torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 1]])
    got = layer(h, modality)
    for b in range(2):
        for t in range(5):
            torch.testing.assert_close(
                got[b, t], layer.experts.expert(int(modality[b, t]), h[b, t : t + 1])[0]
            )


def _tiny_bert():
    torch.manual_seed(0)
    return transformers.BertModel(
        tiny_bert_config(vocab_size=50, num_hidden_layers=2, num_attention_heads=4)
    ).eval()


def _graphs():
    return Batch.from_data_list([aig_to_data(_adder(3)), aig_to_data(_parity(5))])


def _scorer(bert, fusion, fuse_from=0):
    from circuitml.tasks.pill.model import TextCircuitScorer

    return TextCircuitScorer(
        bert,
        EncoderConfig(kind="gcn", hidden=16, num_layers=2),
        fusion,
        bottleneck=4,
        num_tokens=3,
        fuse_from=fuse_from,
    )


def _check_gate_closed_is_identity(bert, ids, mask, fuse_from=0) -> None:
    scorer = _scorer(bert, "pill", fuse_from)
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        extra = scorer.circuit(_graphs())
        got = scorer.lm(ids, mask, extra)
    keep = mask.bool()
    torch.testing.assert_close(got[:, : ids.shape[1]][keep], want[keep], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for g in scorer.lm.gates:
            g.alpha.fill_(1.0)  # open the gate: the text now sees the circuit
        opened = scorer.lm(ids, mask, extra)
    assert (opened[:, : ids.shape[1]][keep] - want[keep]).abs().amax() > 1e-3


@pytest.mark.parametrize("fuse_from", [0, 1])
def test_pill_gate_at_init_leaves_the_language_model_unchanged(fuse_from) -> None:
    bert = _tiny_bert()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    _check_gate_closed_is_identity(bert, ids, mask, fuse_from)


@needs_minilm
def test_pill_gate_at_init_leaves_minilm_unchanged() -> None:
    from circuitml.lm import load_lm

    bert, tok = load_lm("all-minilm-l6-v2")
    enc = tok(["a 3-bit ripple-carry adder", "an 5-input parity tree"], padding=True, return_tensors="pt")
    _check_gate_closed_is_identity(bert, enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("fusion", ["pill", "concat", "text", "circuit"])
def test_every_fusion_trains_only_its_own_parameters(fusion) -> None:
    bert = _tiny_bert()
    scorer = _scorer(bert, fusion)
    ids, mask = torch.randint(1, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    score = scorer(ids, mask, _graphs())
    assert score.shape == (2,)
    torch.nn.functional.binary_cross_entropy_with_logits(score, torch.tensor([1.0, 0.0])).backward()
    assert all(p.grad is None for p in bert.parameters())
    if scorer.circuit is not None:
        assert all(p.grad is None for p in scorer.circuit.encoder.parameters())
        assert scorer.circuit.proj.weight.grad is not None
    if fusion == "pill":
        assert all(g.alpha.grad is not None for g in scorer.lm.gates)


def test_glu_adapter_experts_equal_the_authors_glu_adapter_per_modality() -> None:
    # PILL's improved adapter (GLUAdapter in github.com/DsaltYfish/PILL): up(silu(gate(x)) * down(x)), no biases
    torch.manual_seed(0)
    layer = ModalityAdapterExperts(8, num_modalities=2, bottleneck=3, adapter="glu")
    ex = layer.experts
    with torch.no_grad():
        ex.up.normal_()  # zero at init (identity); give it values so the check can fail
    h = torch.randn(2, 5, 8)
    modality = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 1]])
    want = torch.empty_like(h)
    for m in (0, 1):
        x = h[modality == m]
        z = torch.nn.functional.silu(x @ ex.gate[m].T) * (x @ ex.down[m].T)
        want[modality == m] = x + z @ ex.up[m].T
    torch.testing.assert_close(layer(h, modality), want)
    for m in (0, 1):
        torch.testing.assert_close(ex.expert(m, h[modality == m]), want[modality == m])
    assert ex.down_bias is None and ex.act is None
    assert sum(p.numel() for p in layer.parameters()) == 3 * 2 * 3 * 8
    with pytest.raises(ConfigError, match="adapter"):
        ModalityAdapterExperts(8, adapter="lora")
