"""MoE block interchange with transformers (issue 14, item 8): Mixtral, Qwen2-MoE and DeepSeek-V3 models built from
small configs (no hub), saved locally, loaded into circuitml blocks with equal outputs, exported back."""

from __future__ import annotations

import json

import pytest
import torch
from circuitml.moe.hf_interchange import export_hf_moe_blocks, load_hf_moe_blocks

from circuitml.errors import CheckpointError

transformers = pytest.importorskip("transformers")

SMALL = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def _model(kind: str):
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(
            **SMALL, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2
        )
        return transformers.MixtralForCausalLM(cfg), "mlp"  # saved as block_sparse_moe
    if kind == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            **SMALL,
            intermediate_size=24,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=12,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
        )
        return transformers.Qwen2MoeForCausalLM(cfg), "mlp"
    cfg = transformers.DeepseekV3Config(
        **SMALL,
        intermediate_size=24,
        moe_intermediate_size=8,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        n_shared_experts=2,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        q_lora_rank=None,
        kv_lora_rank=8,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=4,
    )
    return transformers.DeepseekV3ForCausalLM(cfg), "mlp"


def _hf_out(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = block(x[None])
    return (out[0] if isinstance(out, tuple) else out)[0]


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_blocks_load_equal_and_export_back(kind: str, tmp_path) -> None:
    torch.manual_seed(0)
    model, attr = _model(kind)
    with torch.no_grad():  # non-zero routing biases so DeepSeek's selection bias is exercised
        for layer in model.model.layers:
            gate = getattr(getattr(layer, attr), "gate", None)
            if hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.normal_(0, 0.05)
    model.eval().save_pretrained(tmp_path / "hf")
    blocks = load_hf_moe_blocks(tmp_path / "hf")
    want_layers = [1] if kind == "deepseek_v3" else [0, 1]  # DeepSeek's first layer is dense
    assert sorted(blocks) == want_layers
    x = torch.randn(12, 16)
    for i, block in blocks.items():
        hf_block = getattr(model.model.layers[i], attr)
        with torch.no_grad():
            torch.testing.assert_close(block.eval()(x).out, _hf_out(hf_block, x), rtol=1e-5, atol=1e-6)

    # Export changed blocks back: transformers loads them and computes what the circuitml blocks compute.
    with torch.no_grad():
        for block in blocks.values():
            block.experts.down_proj.mul_(1.5)
            block.router.gate.weight.add_(0.1)
    export_hf_moe_blocks(blocks, tmp_path / "hf", tmp_path / "out")
    reloaded = type(model).from_pretrained(tmp_path / "out").eval()
    for i, block in blocks.items():
        with torch.no_grad():
            torch.testing.assert_close(
                block(x).out, _hf_out(getattr(reloaded.model.layers[i], attr), x), rtol=1e-5, atol=1e-6
            )


def test_unsupported_checkpoints_are_named(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_hf_moe_blocks(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "hidden_act": "silu"}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_moe_blocks(tmp_path)
