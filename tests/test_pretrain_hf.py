"""Frozen Hugging Face Verilog encoders from a LOCAL folder: tiny random BERT / GPT-2 built in the test."""

from __future__ import annotations

import pytest
import torch

from circuitml.errors import ConfigError
from circuitml.pretrain.verilog_encoder import HFVerilogFeatures, source_sha256
from circuitml.pretrain.vga import VGAHead

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "module endmodule input output wire assign a b y & | ^ ~ ( ) ; ,".split()
VERILOG = "module m ( a , b , y ) ; input a , b ; output y ; assign y = a & ~ b ; endmodule"
OTHER = "module m ( a , b , y ) ; input a , b ; output y ; assign y = a ^ b ; endmodule"


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS, "="])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"), len(vocab)


def _save_model(kind: str, path) -> None:
    torch.manual_seed(0)
    tok, vocab = _tokenizer()
    if kind == "bert":
        cfg = transformers.BertConfig(
            vocab_size=vocab, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=24, n_layer=1, n_head=2, n_positions=128)
        model = transformers.GPT2LMHeadModel(cfg)  # a causal LM: AutoModel loads its base
    model.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_local_hf_encoder_states_are_cached_by_sha256(tmp_path, kind):
    _save_model(kind, tmp_path / "lm")
    feats = HFVerilogFeatures(tmp_path / "lm", tmp_path / "cache", max_tokens=64)
    assert feats.hidden_size == 24
    h = feats.features(VERILOG)
    assert h.shape == (len(VERILOG.split()), 24)
    entry = feats.cache_dir / f"{source_sha256(VERILOG)}.safetensors"
    assert entry.is_file()
    # a second instance reads the cache: the language model is never loaded
    again = HFVerilogFeatures(tmp_path / "lm", tmp_path / "cache", max_tokens=64)
    assert torch.equal(again.features(VERILOG), h)
    assert again._model is None
    # a damaged entry is recomputed, not trusted
    entry.write_bytes(b"garbage")
    assert torch.allclose(again.features(VERILOG), h, atol=1e-6)
    # different Verilog, different states; the VGA decoder sees them token by token
    h2 = feats.features(OTHER)
    assert h2.shape == (len(OTHER.split()), 24)
    assert not torch.allclose(h[-6:], h2[-6:])
    head = VGAHead(16, 24, 5)
    n = 12
    batch = torch.zeros(n, dtype=torch.long)
    mask = torch.arange(n) % 2 == 0
    latent, types = torch.randn(n, 16), torch.randint(0, 5, (n,))
    has = torch.ones(1, dtype=torch.bool)
    a = head(latent, mask, batch, types, h[None], torch.ones(1, h.size(0), dtype=torch.bool), has)
    b = head(latent, mask, batch, types, h2[None], torch.ones(1, h2.size(0), dtype=torch.bool), has)
    assert a.attention[0].std(dim=-1).min() > 1e-5
    assert abs(a.loss.item() - b.loss.item()) > 1e-6


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        HFVerilogFeatures(tmp_path, tmp_path / "cache")


def test_pretrain_with_a_local_hf_verilog_encoder(tmp_path):
    from circuitml.datasets import generate

    from circuitml.pretrain.config import load_config
    from circuitml.pretrain.trainer import train

    generate(tmp_path / "ds", 3, families=["mux", "parity", "decoder"], widths=[2], progress=False)
    _save_model("bert", tmp_path / "lm")
    sets = [
        f"data.root={tmp_path / 'ds'}",
        f"model.verilog_encoder={tmp_path / 'lm'}",
        f"model.hf_cache_dir={tmp_path / 'cache'}",
        "model.encoder={kind: gcn, hidden: 16, num_layers: 2}",
        "data.batch_size=3",
        "schedule.steps=4",
        "schedule.warmup_steps=1",
        "run.tensorboard=false",
        "run.plot=false",
        "run.progress=false",
        "run.threads=1",
    ]
    before = torch.get_num_threads()
    try:
        result = train(load_config(None, sets), tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    assert result.last["loss_vga"] > 0 and result.encoder_dir is not None
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3  # one cached state file per design
