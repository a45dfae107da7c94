"""PILL on a frozen BERT-layout language model (the shipped MiniLM-L6) with circuit tokens from a circuitml encoder.

Zhang et al., "PILL: Plug Into LLM with Adapter Expert and Attention Gate", arXiv:2311.02126, 2023. Every layer of
the frozen LM from ``fuse_from`` on gets the core's :class:`~circuitml.moe.pill.ModalityAdapterExperts` on its FFN
output (text tokens to the text expert, circuit tokens to the circuit expert) and a
:class:`~circuitml.moe.pill.ModalityAttentionGate` (text queries see circuit keys only through the gate, closed at
start); the layers below run the unchanged LM on the text alone. Circuit tokens: the node embeddings of a frozen
circuitml encoder, mean-pooled into ``k`` tokens by logic level (level buckets from inputs to outputs, each with the
log of its node count) and projected to the LM's width.

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

__all__ = [
    "FUSIONS",
    "PILLBert",
    "CircuitTokens",
    "TextCircuitScorer",
    "fusion_bottleneck",
    "trainable_parameters",
]

FUSIONS = ("pill", "concat", "text", "circuit")


class PILLBert(nn.Module):
    """A frozen Hugging Face BERT-layout model run layer by layer, with optional tokens of a second modality.

    Args:
        bert: a ``BertModel`` (frozen here, kept in eval mode).
        fusion: ``"pill"`` (gated attention, per-modality adapters) or ``"concat"`` (plain attention, one adapter).
        bottleneck: adapter width.
        adapter: ``"bottleneck"`` or ``"glu"`` (PILL's improved adapter, see :mod:`circuitml.moe.pill`).
        fuse_from: the first layer that gets adapters (and sees the second modality). The layers below run the
            unchanged LM on the text alone, so their output depends on nothing trainable and
            :meth:`frozen_states` can be computed once per text and cached.
    """

    def __init__(
        self,
        bert: nn.Module,
        fusion: str = "pill",
        bottleneck: int = 16,
        fuse_from: int = 0,
        adapter: str = "bottleneck",
    ) -> None:
        super().__init__()
        if fusion not in ("pill", "concat"):
            raise ConfigError(f"PILLBert: fusion: expected 'pill' or 'concat', got {fusion!r}")
        self.bert = bert.eval()
        for p in bert.parameters():
            p.requires_grad_(False)
        cfg = bert.config
        self.fusion, self.num_heads, self.d_model = fusion, cfg.num_attention_heads, cfg.hidden_size
        n_layers = cfg.num_hidden_layers
        if not 0 <= fuse_from < n_layers:
            raise ConfigError(f"PILLBert: fuse_from: expected 0..{n_layers - 1}, got {fuse_from}")
        self.fuse_from = fuse_from
        experts = 2 if fusion == "pill" else 1
        fused = n_layers - fuse_from
        self.adapters = nn.ModuleList(
            ModalityAdapterExperts(self.d_model, experts, bottleneck, adapter=adapter) for _ in range(fused)
        )
        self.gates = (
            nn.ModuleList(ModalityAttentionGate(self.num_heads) for _ in range(fused))
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

    def _layer(self, i: int, x: Tensor, key_mask: Tensor, modality: Tensor, fused: bool) -> Tensor:
        layer = self.bert.encoder.layer[i]
        sa = layer.attention.self
        q, k, v = self._heads(sa.query(x)), self._heads(sa.key(x)), self._heads(sa.value(x))
        if fused and self.gates is not None:
            ctx = gated_modality_attention(q, k, v, modality, key_mask, self.gates[i - self.fuse_from]())
        else:
            ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        ctx = ctx.transpose(1, 2).reshape(x.shape)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        f = layer.output.dense(layer.intermediate(x))
        if fused:
            route = modality if self.fusion == "pill" else torch.zeros_like(modality)
            f = self.adapters[i - self.fuse_from](f, route)
        return layer.output.LayerNorm(f + x)

    def frozen_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The text's hidden states ``[B, T, d]`` entering layer ``fuse_from`` (the unchanged LM below it)."""
        with torch.no_grad():
            x = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            key_mask = attention_mask.bool()
            text = torch.zeros_like(input_ids)
            for i in range(self.fuse_from):
                x = self._layer(i, x, key_mask, text, fused=False)
        return x

    def fuse(self, x: Tensor, attention_mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """Run layers ``fuse_from..`` on text states ``x [B, T, d]`` (and the ``extra [B, K, d]`` tokens)."""
        key_mask = attention_mask.bool()
        modality = torch.zeros(attention_mask.shape, dtype=torch.long, device=x.device)
        if extra is not None:
            x = torch.cat([x, extra], dim=1)
            ones = torch.ones(extra.shape[:2], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([key_mask, ones], dim=1)
            modality = torch.cat([modality, ones.long()], dim=1)
        for i in range(self.fuse_from, len(self.bert.encoder.layer)):
            x = self._layer(i, x, key_mask, modality, fused=True)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """Hidden states ``[B, T (+ K), d]`` of the text tokens (then the ``extra [B, K, d]`` tokens)."""
        return self.fuse(self.frozen_states(input_ids, attention_mask), attention_mask, extra)


class CircuitTokens(nn.Module):
    """``k`` circuit tokens per graph from a frozen encoder's node embeddings, projected to the LM's width.

    Nodes are bucketed by logic level (``k`` equal slices of the depth, inputs to outputs); a bucket's token is
    the mean of its node embeddings joined with ``log(1 + nodes in it)``, so the tokens carry the circuit's size
    as well as its content. :meth:`pool` is frozen and can be cached per circuit; only :attr:`proj` trains.
    """

    def __init__(self, encoder: EncoderConfig | nn.Module, d_model: int, num_tokens: int = 8) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder) if isinstance(encoder, EncoderConfig) else encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.num_tokens = num_tokens
        self.proj = nn.Linear(self.encoder.out_dim + 1, d_model)

    def pool(self, batch: Batch) -> Tensor:
        """Frozen pooled features ``[G, k, out_dim + 1]``."""
        with torch.no_grad():
            self.encoder.eval()
            node = self.encoder(batch).node
            depth = scatter(batch.level.float(), batch.batch, reduce="max")[batch.batch] + 1
            bucket = (batch.level.float() / depth * self.num_tokens).long().clamp_max(self.num_tokens - 1)
            slot = batch.batch * self.num_tokens + bucket
            size = batch.num_graphs * self.num_tokens
            pooled = scatter(node, slot, dim=0, dim_size=size, reduce="mean")
            count = scatter(torch.ones_like(slot, dtype=node.dtype), slot, dim=0, dim_size=size, reduce="sum")
            pooled = torch.cat([pooled, count.log1p()[:, None]], dim=1)
        return pooled.view(batch.num_graphs, self.num_tokens, -1)

    def forward(self, circuits: Batch | Tensor) -> Tensor:
        """Tokens ``[G, k, d_model]`` of a batch of graphs, or of features already :meth:`pool`-ed."""
        pooled = circuits if isinstance(circuits, Tensor) else self.pool(circuits)
        return self.proj(pooled)


class TextCircuitScorer(nn.Module):
    """A matching score ``[B]`` for (description, circuit) pairs under one of :data:`FUSIONS`.

    ``bottleneck`` is the adapter width of one expert; ``"concat"`` and ``"text"`` have one adapter per layer
    where ``"pill"`` has two, so :func:`fusion_bottleneck` doubles theirs to match trainable parameters.
    """

    def __init__(
        self,
        bert: nn.Module,
        encoder: EncoderConfig | nn.Module,
        fusion: str = "pill",
        bottleneck: int = 16,
        num_tokens: int = 8,
        fuse_from: int = 0,
        adapter: str = "bottleneck",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"pill: fusion: expected one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        d = bert.config.hidden_size
        self.lm = (
            PILLBert(
                bert, "concat" if fusion in ("concat", "text") else "pill", bottleneck, fuse_from, adapter
            )
            if fusion != "circuit"
            else None
        )
        self.circuit = CircuitTokens(encoder, d, num_tokens) if fusion != "text" else None
        self.head = nn.Sequential(nn.Linear(d, d // 4), nn.GELU(), nn.Linear(d // 4, 1))

    def score_states(
        self, states: Tensor | None, attention_mask: Tensor | None, circuits: Batch | Tensor | None
    ):
        """Scores from text states entering layer ``fuse_from`` (see :meth:`PILLBert.frozen_states`)."""
        extra = self.circuit(circuits) if self.circuit is not None else None
        if self.lm is None:
            return self.head(extra.mean(dim=1)).squeeze(-1)
        h = self.lm.fuse(states, attention_mask, extra)
        return self.head(h[:, 0]).squeeze(-1)  # [CLS] is text: it sees the circuit only through attention

    def forward(self, input_ids: Tensor, attention_mask: Tensor, circuits: Batch | Tensor) -> Tensor:
        states = self.lm.frozen_states(input_ids, attention_mask) if self.lm is not None else None
        return self.score_states(states, attention_mask, circuits)


def fusion_bottleneck(fusion: str, bottleneck: int) -> int:
    """Adapter width that gives ``fusion`` about the trainable parameters of PILL's two experts of ``bottleneck``."""
    return 2 * bottleneck if fusion in ("concat", "text") else bottleneck


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
