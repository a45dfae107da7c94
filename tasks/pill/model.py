"""PILL on a frozen BERT-layout language model (the shipped MiniLM-L6) with circuit tokens from a circuitml encoder.

Zhang et al., "PILL: Plug Into LLM with Adapter Expert and Attention Gate", arXiv:2311.02126, 2023. Every layer of
the frozen LM gets the core's :class:`~circuitml.moe.pill.ModalityAdapterExperts` on its FFN output (text tokens to
the text expert, circuit tokens to the circuit expert) and a :class:`~circuitml.moe.pill.ModalityAttentionGate`
(text queries see circuit keys only through the gate, closed at start). Circuit tokens: the node embeddings of a
frozen circuitml encoder, mean-pooled into ``k`` tokens by logic level (level buckets from inputs to outputs) and
projected to the LM's width.

Fusions compared (same frozen LM, adapters and head; the circuit projection where circuit tokens are used):

* ``"pill"`` — gated attention + one adapter expert per modality;
* ``"concat"`` — circuit tokens appended as ordinary tokens (one softmax over all), one shared adapter;
* ``"text"`` — the description alone (adapters, head);
* ``"circuit"`` — the circuit tokens alone (mean-pooled, projection, head).

The layer math follows BERT (Devlin et al., 2019): post-LN attention and FFN sublayers; :meth:`PILLBert.forward`
without circuit tokens reproduces the Hugging Face model, which the tests check.
"""

from __future__ import annotations

import torch
from circuitml.moe.pill import ModalityAdapterExperts, ModalityAttentionGate, gated_modality_attention
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from circuitml.encoders import EncoderConfig, build_encoder
from circuitml.errors import ConfigError

__all__ = ["FUSIONS", "PILLBert", "CircuitTokens", "TextCircuitScorer"]

FUSIONS = ("pill", "concat", "text", "circuit")


class PILLBert(nn.Module):
    """A frozen Hugging Face BERT-layout model run layer by layer, with optional tokens of a second modality.

    Args:
        bert: a ``BertModel`` (frozen here, kept in eval mode).
        fusion: ``"pill"`` (gated attention, per-modality adapters) or ``"concat"`` (plain attention, one adapter).
        bottleneck: adapter width.
    """

    def __init__(self, bert: nn.Module, fusion: str = "pill", bottleneck: int = 16) -> None:
        super().__init__()
        if fusion not in ("pill", "concat"):
            raise ConfigError(f"PILLBert: fusion: expected 'pill' or 'concat', got {fusion!r}")
        self.bert = bert.eval()
        for p in bert.parameters():
            p.requires_grad_(False)
        cfg = bert.config
        self.fusion, self.num_heads, self.d_model = fusion, cfg.num_attention_heads, cfg.hidden_size
        n_layers = cfg.num_hidden_layers
        experts = 2 if fusion == "pill" else 1
        self.adapters = nn.ModuleList(
            ModalityAdapterExperts(self.d_model, experts, bottleneck) for _ in range(n_layers)
        )
        self.gates = (
            nn.ModuleList(ModalityAttentionGate(self.num_heads) for _ in range(n_layers))
            if fusion == "pill"
            else None
        )

    def train(self, mode: bool = True) -> PILLBert:
        super().train(mode)
        self.bert.eval()  # the frozen LM never applies dropout
        return self

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """Hidden states ``[B, T (+ K), d]`` of the text tokens (then the ``extra [B, K, d]`` tokens)."""
        x = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        key_mask = attention_mask.bool()
        modality = torch.zeros_like(input_ids)
        if extra is not None:
            x = torch.cat([x, extra], dim=1)
            ones = torch.ones(extra.shape[:2], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([key_mask, ones], dim=1)
            modality = torch.cat([modality, ones.long()], dim=1)
        route = modality if self.fusion == "pill" else torch.zeros_like(modality)
        for i, layer in enumerate(self.bert.encoder.layer):
            sa = layer.attention.self
            q, k, v = self._heads(sa.query(x)), self._heads(sa.key(x)), self._heads(sa.value(x))
            if self.gates is not None:
                ctx = gated_modality_attention(q, k, v, modality, key_mask, self.gates[i]())
            else:
                ctx = nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=key_mask[:, None, None, :]
                )
            ctx = ctx.transpose(1, 2).reshape(x.shape)
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
            f = layer.output.dense(layer.intermediate(x))
            x = layer.output.LayerNorm(self.adapters[i](f, route) + x)
        return x


class CircuitTokens(nn.Module):
    """``k`` circuit tokens per graph: frozen encoder node embeddings mean-pooled by level bucket, projected."""

    def __init__(self, encoder: EncoderConfig | nn.Module, d_model: int, num_tokens: int = 8) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder) if isinstance(encoder, EncoderConfig) else encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.num_tokens = num_tokens
        self.proj = nn.Linear(self.encoder.out_dim, d_model)

    def forward(self, batch: Batch) -> Tensor:
        with torch.no_grad():
            self.encoder.eval()
            node = self.encoder(batch).node
            depth = scatter(batch.level.float(), batch.batch, reduce="max")[batch.batch] + 1
            bucket = (batch.level.float() / depth * self.num_tokens).long().clamp_max(self.num_tokens - 1)
            slot = batch.batch * self.num_tokens + bucket
            pooled = scatter(node, slot, dim=0, dim_size=batch.num_graphs * self.num_tokens, reduce="mean")
        return self.proj(pooled.view(batch.num_graphs, self.num_tokens, -1))


class TextCircuitScorer(nn.Module):
    """A matching score ``[B]`` for (description, circuit) pairs under one of :data:`FUSIONS`."""

    def __init__(
        self,
        bert: nn.Module,
        encoder: EncoderConfig | nn.Module,
        fusion: str = "pill",
        bottleneck: int = 16,
        num_tokens: int = 8,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"pill: fusion: expected one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        d = bert.config.hidden_size
        self.lm = (
            PILLBert(bert, "concat" if fusion in ("concat", "text") else "pill", bottleneck)
            if fusion != "circuit"
            else None
        )
        self.circuit = CircuitTokens(encoder, d, num_tokens) if fusion != "text" else None
        self.head = nn.Sequential(nn.Linear(d, d // 4), nn.GELU(), nn.Linear(d // 4, 1))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, graphs: Batch) -> Tensor:
        extra = self.circuit(graphs) if self.circuit is not None else None
        if self.lm is None:
            return self.head(extra.mean(dim=1)).squeeze(-1)
        h = self.lm(input_ids, attention_mask, extra)
        return self.head(h[:, 0]).squeeze(
            -1
        )  # the [CLS] token: text, so it sees the circuit only through attention
