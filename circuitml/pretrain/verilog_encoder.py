"""Verilog encoders for Verilog-AIG alignment: token-level hidden states that VGA's decoder attends over.

Two kinds:

* :class:`BuiltinVerilogEncoder` — a small transformer encoder (Vaswani et al., 2017) over the
  pyverilog-normalized token ids of :mod:`circuitml.verilog`, trained jointly with the circuit encoder; needs
  no download.
* :class:`HFVerilogFeatures` — any Hugging Face encoder or causal LM in a LOCAL directory, frozen; its last
  hidden states per Verilog file are cached on disk as safetensors keyed by the file's sha256, so each file is
  run through the language model once across runs (MGVGA uses a frozen LLM the same way).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from circuitml.errors import ConfigError, one_line
from circuitml.fileio import atomic_write, read_json, safetensors_bytes

__all__ = ["BuiltinVerilogEncoder", "HFVerilogFeatures", "source_sha256"]


def source_sha256(source: str | bytes) -> str:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return hashlib.sha256(data).hexdigest()


class BuiltinVerilogEncoder(nn.Module):
    r"""Transformer encoder over Verilog token ids: ``h = Encoder(E_tok[x] + E_pos[t])``.

    Args:
        vocab_size: rows of the token embedding (``len(circuitml.verilog.VOCAB)``; id 0 is PAD).
        hidden: model width (default 64).
        num_layers: transformer layers (default 2).
        num_heads: attention heads (default 4).
        max_len: longest token sequence (learned positions).

    Shapes:
        ``tokens [B, T]`` long, ``mask [B, T]`` bool (True = real token) → ``[B, T, hidden]``.
    """

    def __init__(
        self, vocab_size: int, hidden: int = 64, num_layers: int = 2, num_heads: int = 4, max_len: int = 512
    ):
        super().__init__()
        self.hidden_size = hidden
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, num_heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(tokens.size(1), device=tokens.device)
        h = self.token_embedding(tokens) + self.position_embedding(positions)[None]
        h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h)


class HFVerilogFeatures:
    """Frozen Hugging Face model from a local folder, producing cached token-level hidden states.

    Args:
        path: a directory holding ``config.json``, weights and a tokenizer (nothing is downloaded:
            ``local_files_only=True``).
        cache_dir: folder of the cache; entries live in ``cache_dir/<model fingerprint>/<sha256>.safetensors``.
        max_tokens: sequences are cut to this many tokens.
        device: where the language model runs.

    Attributes:
        hidden_size: width of the returned states.
        fingerprint: sha256 of the model's config, tokenizer files and weight file sizes, so two models never
            share cache entries.
    """

    def __init__(
        self,
        path: str | Path,
        cache_dir: str | Path,
        max_tokens: int = 512,
        device: str | torch.device = "cpu",
    ):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise ConfigError(
                f"model.verilog_encoder: {self.path}: expected 'builtin' or a local Hugging Face model "
                "directory containing config.json"
            )
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.fingerprint = self._fingerprint()
        self.cache_dir = Path(cache_dir) / self.fingerprint[:16]
        self._model = None
        self._tokenizer = None
        config = read_json(self.path / "config.json", error=ConfigError, what="model config")
        if not isinstance(config, dict):
            raise ConfigError(f"{self.path / 'config.json'}: expected a JSON object")
        size = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
        if not isinstance(size, int):
            raise ConfigError(f"{self.path / 'config.json'}: expected key hidden_size (or n_embd / d_model)")
        self.hidden_size = size

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.path.iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                if f.suffix in (".json", ".txt", ".model") and f.stat().st_size < (16 << 20):
                    h.update(f.read_bytes())
                else:
                    h.update(str(f.stat().st_size).encode())
        return h.hexdigest()

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from circuitml.lm import require_safetensors

        require_safetensors(self.path, "model.verilog_encoder")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # transformers raises many types for a folder it cannot use
            raise ConfigError(
                f"model.verilog_encoder: {self.path}: cannot load model/tokenizer ({one_line(exc)})"
            ) from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self._model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def _compute(self, source: str) -> Tensor:
        if self._model is None:
            self._load()
        enc = self._tokenizer(source, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if enc["input_ids"].numel() == 0:
            return torch.zeros(1, self.hidden_size)
        out = self._model(**enc)
        return out.last_hidden_state[0].float().cpu().contiguous()

    def features(self, source: str) -> Tensor:
        """``[T, hidden_size]`` float32 hidden states of one Verilog source (from the cache when present)."""
        key = source_sha256(source)
        entry = self.cache_dir / f"{key}.safetensors"
        if entry.is_file():
            try:
                return load_file(str(entry))["hidden"]
            except (SafetensorError, OSError, KeyError):
                pass  # a damaged cache entry is recomputed and overwritten below
        hidden = self._compute(source)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, safetensors_bytes({"hidden": hidden}, {"model": str(self.path), "sha256": key}))
        return hidden

    def cached(self, source: str) -> bool:
        return (self.cache_dir / f"{source_sha256(source)}.safetensors").is_file()
