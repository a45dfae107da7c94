"""Every encoder kind of the builder can be pretrained with MGVGA (losses, gradients, MoE aux loss) and exported."""

from __future__ import annotations

import pytest
import torch

from circuitml.aig import AIGBuilder
from circuitml.encoders import available_encoders, build_encoder, load_encoder
from circuitml.graph import aig_to_data
from circuitml.pretrain.config import PretrainConfig
from circuitml.pretrain.data import PretrainSample, collate
from circuitml.pretrain.model import MGVGAModel


def _adder(n: int):
    b = AIGBuilder(f"add{n}")
    xs, ys = [b.add_pi() for _ in range(n)], [b.add_pi() for _ in range(n)]
    carry = 0
    for x, y in zip(xs, ys, strict=True):
        s = b.xor_(x, y)
        b.add_po(b.xor_(s, carry))
        carry = b.or_(b.and_(x, y), b.and_(carry, s))
    b.add_po(carry)
    return b.build()


@pytest.mark.parametrize("kind", list(available_encoders()))
def test_any_builder_encoder_is_pretrainable_and_exportable(kind, tmp_path):
    try:
        encoder = build_encoder(kind, hidden=16, num_layers=2)
    except ImportError as exc:  # optional backends (dgl) may be absent
        pytest.skip(f"{kind}: {exc}")
    explicit = encoder.config.explicit_not
    samples = [
        PretrainSample(aig_to_data(_adder(n), explicit_not=explicit), tokens=torch.randint(2, 60, (10 + n,)))
        for n in (2, 3, 4)
    ]
    samples[1].tokens = None  # a circuit without Verilog: MGM only
    batch = collate(samples)
    cfg = PretrainConfig()
    cfg.model.verilog_hidden, cfg.model.verilog_heads, cfg.vga.heads = 16, 2, 2
    model = MGVGAModel(encoder, cfg, 16, 64)
    metrics = model(batch, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in metrics.values())
    m = metrics
    recipe = m["loss_mgm_type"] + 0.1 * m["loss_mgm_degree"] + m["loss_vga"] + m["loss_aux"]
    assert torch.allclose(m["loss"], recipe)
    if "moe" in kind:  # the encoder's balancing losses reach the objective
        assert m["loss_aux"] > 0
    metrics["loss"].backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.verilog.token_embedding.weight.grad.abs().sum() > 0
    encoder.save_pretrained(tmp_path / "enc", card={"steps": 1})
    loaded = load_encoder(tmp_path / "enc")
    ref = encoder.embed(samples[0].graph)
    got = loaded.embed(samples[0].graph)
    assert torch.equal(ref.node, got.node) and torch.equal(ref.graph, got.graph)
