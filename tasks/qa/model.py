"""Extractive QA transformers whose middle FFN layers are Switch MoE layers from :mod:`circuitml.moe`.

The setting of "Build a Robust QA System with Transformer-based Mixture of Experts" (Zhou and Tan, Stanford CS224N
2021): a DistilBERT-style encoder whose feed-forward sublayers are replaced by Switch Transformer FFNs (Fedus et al.,
"Switch Transformers", JMLR 2022), with a span head predicting answer start and end.

Two backbones share one contract, ``forward(input_ids, attention_mask) -> QAOutput``:

* :class:`SwitchTransformerQA` — randomly initialized, built from :class:`SwitchQAConfig`;
* :class:`UpcycledHFQA` — a DistilBERT or BERT checkpoint loaded from a *local* directory with transformers, each
  chosen FFN replaced by an MoE layer whose experts all start as copies of the dense FFN ("sparse upcycling",
  Komatsuzaki et al., ICLR 2023); with a top-k (k >= 2) router and ``normalize_weights`` the upcycled model
  computes exactly the dense model at initialization (a top-1 Switch router scales each token's FFN output by its
  router probability, which is what gives the router a gradient).

The MoE layers are the core's :class:`~circuitml.moe.MoEBlock` used as-is; padding tokens are not routed. Their
routers form a :class:`~circuitml.moe.stack.MoEStack` (RMoE's state goes from one MoE layer to the next; Read-ME
plans every MoE layer once, from the token embeddings of the scratch model).

With ``uoe`` set (scratch backbone), every attention is a Union-of-Experts selective multi-head attention and
every dense FFN a union of MLP experts (:mod:`circuitml.moe.uoe`, Yang et al. 2025); :func:`decompose_to_uoe`
turns a trained dense model into it exactly (all experts selected = the dense model) before routing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.block import MoEBlock
from circuitml.moe.experts.ffn import FFNExperts
from circuitml.moe.router import Router
from circuitml.moe.stack import MoEStack, StackRun, build_router_stack
from circuitml.moe.uoe import SelectiveMultiHeadAttention, UnionOfMLPExperts
from torch import Tensor, nn

from circuitml.errors import CheckpointError, ConfigError, one_line

__all__ = [
    "SwitchQAConfig",
    "QAOutput",
    "MoEFFN",
    "SwitchTransformerQA",
    "UpcycledHFQA",
    "build_qa_model",
    "decompose_to_uoe",
    "parse_uoe",
]

# Union-of-Experts options (``SwitchQAConfig.uoe``) and their defaults: every expert selected.
UOE_DEFAULTS = {
    "attn_experts": 4,
    "attn_top_k": 4,
    "mlp_experts": 8,
    "mlp_top_k": 8,
    "mlp_groups": 1,
    "mlp_top_groups": 1,
}


@dataclass
class SwitchQAConfig:
    """Configuration of the QA model (both backbones).

    Args:
        vocab_size: tokenizer vocabulary size (scratch backbone).
        max_position: longest sequence (scratch backbone).
        d_model, num_layers, num_heads, d_ff, dropout: transformer shape (scratch backbone).
        moe_layers: indices of the layers whose FFN is an MoE layer; ``None`` = the middle layers (all but the
            first and the last), as in the CS224N robust-QA setting.
        num_experts: experts per MoE layer.
        router: registered router name (``"switch"`` = top-1 Switch routing).
        top_k: experts per token.
        capacity_factor: expert capacity factor, ``None`` for dropless.
        balance_loss_weight, z_loss_weight: router auxiliary loss weights.
        normalize_weights: renormalize kept router weights to 1 (exact upcycling with top-k, k >= 2; with top-1
            it makes every weight 1, so the router gets no gradient from the task).
        unit_weight: top-1 routing: combine with ``p / stopgrad(p)`` instead of ``p`` — the value 1 (an
            upcycled model is the dense one at init) with the gradient of ``log p`` (the router still learns).
        init_from: local directory of a DistilBERT/BERT checkpoint to upcycle, or ``None`` for the scratch model.
        span_head: ``"linear"`` (BERT's: ``start_i = w_s·h_i + b_s``) or ``"bilinear"``, which adds DrQA's
            question-conditioned term ``h_i^T W_s q`` with ``q`` the mean of the question's token states (Chen et
            al., "Reading Wikipedia to Answer Open-Domain Questions", ACL 2017); ``W`` starts at zero, so the
            head starts as the linear one. Upcycled checkpoints only.
        sentence_prior: add a learned map of :mod:`~circuitml.tasks.qa.sentence_prior` features (the frozen
            checkpoint's question–sentence similarity) to the span logits, starting as ``log p(sentence |
            question)`` added to each span's score; upcycled checkpoints only.
        independent_span: weight of Read + Verify's independent span loss (Hu et al., "Read + Verify: Machine
            Reading Comprehension with Unanswerable Questions", AAAI 2019): a second span head, trained on the
            answers and on the *plausible* answers of unanswerable questions with the no-answer option masked
            out, so the shared encoder learns extraction from every question; 0 = off. Upcycled checkpoints only.
        uoe: Union-of-Experts layers (scratch backbone), ``None`` for dense ones: a dict of :data:`UOE_DEFAULTS`'
            keys — head-group experts of every attention and how many a token keeps (``attn_experts``,
            ``attn_top_k``), hidden-unit experts of every dense FFN, kept per token, in ``mlp_top_groups`` of
            ``mlp_groups`` groups. With ``uoe`` and no ``moe_layers`` no layer is a Switch layer.
    """

    vocab_size: int = 8000
    max_position: int = 384
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    moe_layers: list[int] | None = None
    num_experts: int = 4
    router: str = "switch"
    top_k: int = 1
    capacity_factor: float | None = 1.25
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    normalize_weights: bool = False
    unit_weight: bool = False
    init_from: str | None = None
    span_head: str = "linear"
    sentence_prior: bool = False
    independent_span: float = 0.0
    uoe: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SwitchQAConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"qa model config: unknown key {unknown[0]!r} (expected one of {sorted(names)})"
            )
        return cls(**values)

    def resolved_moe_layers(self, num_layers: int) -> list[int]:
        if self.moe_layers is not None:
            bad = [i for i in self.moe_layers if not 0 <= i < num_layers]
            if bad:
                raise ConfigError(
                    f"qa model config: moe_layers: expected indices in 0..{num_layers - 1}, got {bad}"
                )
            return sorted(set(self.moe_layers))
        if self.uoe is not None:
            return []
        return list(range(1, num_layers - 1)) if num_layers > 2 else list(range(num_layers))

    def resolved_uoe(self) -> dict[str, int] | None:
        """The UoE options with defaults filled in (``None`` without UoE)."""
        if self.uoe is None:
            return None
        unknown = sorted(set(self.uoe) - set(UOE_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"qa model config: uoe: unknown key {unknown[0]!r} (expected one of {sorted(UOE_DEFAULTS)})"
            )
        if self.init_from:
            raise ConfigError("qa model config: uoe: applies to the scratch backbone only, not init_from")
        return {**UOE_DEFAULTS, **{k: int(v) for k, v in self.uoe.items()}}


def parse_uoe(spec: str) -> dict[str, int]:
    """``"attn=2/4,mlp=4/8,groups=1/2"`` → UoE options: attention keeps 2 of 4 head groups, the MLP 4 of 8
    experts in 1 of 2 expert groups (each part optional)."""
    names = {"attn": ("attn_top_k", "attn_experts"), "mlp": ("mlp_top_k", "mlp_experts")}
    names["groups"] = ("mlp_top_groups", "mlp_groups")
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        kept, _, total = value.partition("/")
        if key not in names or not kept.isdigit() or not total.isdigit():
            raise ConfigError(
                f"--uoe: {part!r}: expected attn=K/E, mlp=K/E or groups=K/G (e.g. 'attn=2/4,mlp=4/8')"
            )
        out.update(zip(names[key], (int(kept), int(total)), strict=True))
    return out


@dataclass
class QAOutput:
    start_logits: Tensor  # [B, T]
    end_logits: Tensor  # [B, T]
    aux_loss: Tensor  # scalar, sum of the MoE layers' weighted router losses
    tokens_per_expert: list[Tensor] = field(default_factory=list)
    hidden: Tensor | None = None  # [B, T, d] last hidden states (features for domain-shift methods)


def _routers(cfg: SwitchQAConfig, d_model: int, num_layers: int) -> list[Router]:
    if cfg.unit_weight and cfg.top_k != 1:
        raise ConfigError(
            f"qa model config: unit_weight: expected top_k 1 (it scales one expert), got {cfg.top_k}"
        )
    options: dict[str, Any] = {
        "capacity_factor": cfg.capacity_factor,
        "balance_loss_weight": cfg.balance_loss_weight,
        "z_loss_weight": cfg.z_loss_weight,
        "normalize_weights": cfg.normalize_weights,
    }
    return build_router_stack(
        cfg.router, num_layers, d_model=d_model, num_experts=cfg.num_experts, top_k=cfg.top_k, **options
    )


class MoEFFN(nn.Module):
    """A transformer FFN sublayer replaced by an MoE block: ``[B, T, d] -> [B, T, d]``.

    Only the real (non-padding) tokens are routed, so padding neither occupies expert capacity nor skews the
    balancing loss. The block's auxiliary loss and per-expert counts of the last call are kept on the module.
    """

    def __init__(self, block: MoEBlock, dropout: float = 0.0, unit_weight: bool = False) -> None:
        super().__init__()
        self.block = block
        self.unit_weight = unit_weight
        self.dropout = nn.Dropout(dropout)
        self.mask: Tensor | None = None  # set by the owning model before each forward
        self.last_aux: Tensor | None = None
        self.last_counts: Tensor | None = None
        self.run: StackRun | None = None  # the model's router stack for this forward, and this layer's place
        self.index = 0

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.run.ctx(self.index) if self.run is not None else {}
        if self.mask is None:
            flat = x.reshape(-1, x.shape[-1])
            out = self.block(flat, **ctx)
            y = self._unit(out).reshape(x.shape)
        else:
            keep = self.mask.reshape(-1).bool()
            flat = x.reshape(-1, x.shape[-1])
            out = self.block(flat[keep], **ctx)
            res = self._unit(out)
            y = torch.zeros_like(flat).index_put((keep.nonzero().squeeze(1),), res).reshape(x.shape)
        if self.run is not None:
            self.run.record(self.index, out.routing)
        self.last_aux = out.aux_loss
        self.last_counts = out.stats.tokens_per_expert if out.stats is not None else None
        return self.dropout(y)

    def _unit(self, out: Any) -> Tensor:
        """``w f(x)`` → ``(w / stopgrad(w)) f(x)`` for top-1 (dropped tokens, w = 0, stay 0)."""
        if not self.unit_weight or out.routing is None:
            return out.out
        w = out.routing.weights.sum(dim=-1, keepdim=True).detach()
        return out.out / torch.where(w > 0, w, torch.ones_like(w))


class _DenseFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.lin1 = nn.Linear(d_model, d_ff)
        self.lin2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.lin2(F.gelu(self.lin1(x))))


class _UoEFFN(nn.Module):
    """A dense FFN decomposed into routed hidden-unit experts; only the real tokens are routed."""

    def __init__(self, uoe: UnionOfMLPExperts, dropout: float) -> None:
        super().__init__()
        self.uoe = uoe
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attention_mask: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if attention_mask is None:
            return self.dropout(self.uoe(flat).view(x.shape))
        keep = attention_mask.reshape(-1).bool().nonzero().squeeze(1)
        y = torch.zeros_like(flat).index_put((keep,), self.uoe(flat[keep]))
        return self.dropout(y.view(x.shape))


class _Layer(nn.Module):
    """Post-LN transformer layer (BERT/DistilBERT order): attention, add & norm, FFN, add & norm."""

    def __init__(self, cfg: SwitchQAConfig, router: Router | None) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        uoe = cfg.resolved_uoe()
        if uoe is None:
            self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
            self.out = nn.Linear(cfg.d_model, cfg.d_model)
        else:
            self.attn = SelectiveMultiHeadAttention(
                cfg.d_model, cfg.num_heads, uoe["attn_experts"], uoe["attn_top_k"], dropout=cfg.dropout
            )
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout
        if router is not None:
            experts = FFNExperts(cfg.num_experts, cfg.d_model, cfg.d_ff, activation="gelu", bias=True)
            self.ffn: nn.Module = MoEFFN(MoEBlock(router, experts), cfg.dropout, cfg.unit_weight)
        elif uoe is not None:
            mlp = UnionOfMLPExperts(
                cfg.d_model,
                cfg.d_ff,
                uoe["mlp_experts"],
                uoe["mlp_top_k"],
                uoe["mlp_groups"],
                uoe["mlp_top_groups"],
            )
            self.ffn = _UoEFFN(mlp, cfg.dropout)
        else:
            self.ffn = _DenseFFN(cfg.d_model, cfg.d_ff, cfg.dropout)

    def forward(self, x: Tensor, attn_bias: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        if hasattr(self, "attn"):
            a = self.attn(x, attention_mask)
        else:
            q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.attn_dropout if self.training else 0.0
            )
            a = self.out(a.transpose(1, 2).reshape(b, t, d))
        x = self.norm1(x + self.dropout(a))
        f = self.ffn(x, attention_mask) if isinstance(self.ffn, _UoEFFN) else self.ffn(x)
        return self.norm2(x + f)

    def flops_per_token(self, seq_len: int) -> int:
        """Multiply-adds per token of the attention and FFN sublayers (routers included)."""
        d = self.norm1.normalized_shape[0]
        if hasattr(self, "attn"):
            attn = self.attn.flops_per_token(seq_len)
        else:
            attn = 4 * d * d + 2 * seq_len * d  # q, k, v and output projections; scores and mixing
        if isinstance(self.ffn, _UoEFFN):
            ffn = self.ffn.uoe.flops_per_token()
        elif isinstance(self.ffn, MoEFFN):
            experts = self.ffn.block.experts
            ffn = self.ffn.block.router.top_k * 2 * d * experts.d_hidden + d * experts.num_experts
        else:
            ffn = 2 * d * self.ffn.lin1.out_features
        return attn + ffn


class _QABase(nn.Module):
    # A LookaheadExpertCache (moe.stack) over the MoE layers' experts: with one set, read_me routing and no
    # autograd, the Switch layers compute with the weights the cache serves.
    expert_cache = None

    def moe_layers(self) -> list[MoEFFN]:
        return [m for m in self.modules() if isinstance(m, MoEFFN)]

    def _set_mask(self, attention_mask: Tensor | None, embeddings: Tensor | None = None) -> None:
        """Set the padding mask and start the router stack (Read-ME plans from the real tokens' embeddings)."""
        layers = self.moe_layers()
        router_input = None
        if embeddings is not None:
            router_input = embeddings.reshape(-1, embeddings.shape[-1])
            if attention_mask is not None:
                router_input = router_input[attention_mask.reshape(-1).bool()]
        stack = MoEStack([m.block.router for m in layers])
        run = stack.start(router_input=router_input, cache=self.expert_cache)
        for i, m in enumerate(layers):
            m.mask, m.run, m.index = attention_mask, run, i

    def _collect(self, start: Tensor, end: Tensor, attention_mask: Tensor | None, hidden: Tensor) -> QAOutput:
        layers = self.moe_layers()
        aux = sum((m.last_aux for m in layers if m.last_aux is not None), start.new_zeros(()))
        counts = [m.last_counts.detach() for m in layers if m.last_counts is not None]
        for m in layers:  # drop per-call tensors so the model stays deep-copyable and holds no graph
            m.last_aux = m.last_counts = m.mask = m.run = None
        if attention_mask is not None:
            neg = torch.finfo(start.dtype).min
            start = start.masked_fill(attention_mask == 0, neg)
            end = end.masked_fill(attention_mask == 0, neg)
        return QAOutput(start, end, aux, counts, hidden)


class SwitchTransformerQA(_QABase):
    """A randomly initialized transformer encoder with Switch FFN layers and a span head."""

    def __init__(self, config: SwitchQAConfig) -> None:
        super().__init__()
        if config.d_model % config.num_heads:
            raise ConfigError("qa model config: d_model must be a multiple of num_heads")
        if config.span_head != "linear" or config.sentence_prior or config.independent_span:
            raise ConfigError(
                "qa model config: span_head 'bilinear', sentence_prior and independent_span need a pretrained "
                "checkpoint (init_from)"
            )
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_position, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        moe = config.resolved_moe_layers(config.num_layers)
        routers = dict(zip(moe, _routers(config, config.d_model, len(moe)), strict=True))
        self.layers = nn.ModuleList(_Layer(config, routers.get(i)) for i in range(config.num_layers))
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> QAOutput:
        b, t = input_ids.shape
        if t > self.config.max_position:
            raise ValueError(f"sequence of {t} tokens exceeds max_position={self.config.max_position}")
        pos = torch.arange(t, device=input_ids.device)
        x = self.dropout(self.norm(self.tok(input_ids) + self.pos(pos)[None]))
        bias = None
        if attention_mask is not None:
            bias = torch.zeros(b, 1, 1, t, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(attention_mask[:, None, None, :] == 0, -math.inf)
        self._set_mask(attention_mask, x)
        for layer in self.layers:
            x = layer(x, bias, attention_mask)
        start, end = self.qa_outputs(x).unbind(-1)
        return self._collect(start, end, attention_mask, x)

    def flops_per_token(self, seq_len: int) -> int:
        """Multiply-adds per real token of the transformer layers and the span head, at ``seq_len`` tokens."""
        return sum(layer.flops_per_token(seq_len) for layer in self.layers) + 2 * self.config.d_model


class UpcycledHFQA(_QABase):
    """A local DistilBERT/BERT checkpoint with chosen FFN sublayers upcycled into MoE layers.

    DistilBERT: ``layer.ffn`` (lin1 → GELU → lin2 → dropout) becomes :class:`MoEFFN`. BERT: ``intermediate``
    becomes the identity and ``output.dense`` the MoE layer, so ``output`` still adds the residual and normalizes.
    """

    def __init__(self, config: SwitchQAConfig, backbone_config: Any = None) -> None:
        """Load ``config.init_from`` and upcycle it; with ``backbone_config`` (a transformers config, as saved
        next to a trained QA model) build the same architecture empty, to receive saved weights."""
        super().__init__()
        try:
            from transformers import AutoModel
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise ConfigError(
                "upcycling a checkpoint needs transformers: pip install 'circuitml[qa]'"
            ) from exc
        if backbone_config is not None:
            self.backbone = AutoModel.from_config(backbone_config)
        else:
            if config.init_from is None:
                raise ConfigError("qa model config: init_from: expected a local checkpoint directory")
            from circuitml.lm import require_safetensors

            require_safetensors(config.init_from, "--init-from", CheckpointError)
            try:
                self.backbone = AutoModel.from_pretrained(config.init_from, local_files_only=True)
            except Exception as exc:  # transformers raises many types for a folder it cannot use
                raise CheckpointError(
                    f"{config.init_from}: expected a local DistilBERT/BERT checkpoint ({one_line(exc)})"
                ) from None
        self.config = config
        hf = self.backbone.config
        layers = self._layers()
        moe = config.resolved_moe_layers(len(layers))
        routers = _routers(config, hf.hidden_size, len(moe))
        for i, router in zip(moe, routers, strict=True):
            self._upcycle(layers[i], hf, router)
        self.qa_outputs = nn.Linear(hf.hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=0.02)
        nn.init.zeros_(self.qa_outputs.bias)
        if config.span_head not in ("linear", "bilinear"):
            raise ConfigError(
                f"qa model config: span_head: expected 'linear' or 'bilinear', got {config.span_head!r}"
            )
        # the bilinear term starts at zero: the head starts as BERT's linear one
        self.qa_bilinear = None
        if config.span_head == "bilinear":
            self.qa_bilinear = nn.Linear(hf.hidden_size, 2 * hf.hidden_size, bias=False)
            nn.init.zeros_(self.qa_bilinear.weight)
        self.qa_independent = None
        if config.independent_span < 0:
            raise ConfigError(
                f"qa model config: independent_span: expected a weight >= 0, got {config.independent_span}"
            )
        if config.independent_span:
            self.qa_independent = nn.Linear(hf.hidden_size, 2)
            nn.init.normal_(self.qa_independent.weight, std=0.02)
            nn.init.zeros_(self.qa_independent.bias)
        self.qa_prior = None
        if config.sentence_prior:
            # start and end each get half the sentence log-probability; the [CLS] feature starts unused
            self.qa_prior = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.qa_prior.weight.copy_(torch.tensor([[0.5, 0.0], [0.5, 0.0]]))

    def _layers(self) -> list[nn.Module]:
        bb = self.backbone
        if hasattr(bb, "transformer") and hasattr(bb.transformer, "layer"):  # DistilBERT
            return list(bb.transformer.layer)
        if hasattr(bb, "encoder") and hasattr(bb.encoder, "layer"):  # BERT-like
            return list(bb.encoder.layer)
        raise CheckpointError(f"{self.config.init_from}: expected a DistilBERT or BERT encoder")

    def _make_moe(
        self, lin1: nn.Linear, lin2: nn.Linear, activation: str, dropout: float, router: Router
    ) -> MoEFFN:
        cfg = self.config
        if activation not in ("gelu", "relu"):
            raise CheckpointError(f"{cfg.init_from}: FFN activation {activation!r}: expected gelu or relu")
        d, h = lin1.in_features, lin1.out_features
        experts = FFNExperts(cfg.num_experts, d, h, activation=activation, bias=True)
        with torch.no_grad():
            experts.gate_up_proj.copy_(lin1.weight.expand(cfg.num_experts, h, d))
            experts.gate_up_bias.copy_(lin1.bias.expand(cfg.num_experts, h))
            experts.down_proj.copy_(lin2.weight.expand(cfg.num_experts, d, h))
            experts.down_bias.copy_(lin2.bias.expand(cfg.num_experts, d))
        return MoEFFN(MoEBlock(router, experts), dropout, cfg.unit_weight)

    def _upcycle(self, layer: nn.Module, hf: Any, router: Router) -> None:
        act = getattr(hf, "activation", None) or getattr(hf, "hidden_act", "gelu")
        if hasattr(layer, "ffn"):  # DistilBERT TransformerBlock
            ffn = layer.ffn
            dropout = float(getattr(hf, "dropout", 0.0))
            layer.ffn = self._make_moe(ffn.lin1, ffn.lin2, str(act), dropout, router)
        elif hasattr(layer, "intermediate") and hasattr(layer, "output"):  # BertLayer
            moe = self._make_moe(layer.intermediate.dense, layer.output.dense, str(act), 0.0, router)
            layer.intermediate = _Identity()
            layer.output.dense = moe
        else:
            raise CheckpointError(
                f"{self.config.init_from}: unrecognized transformer layer {type(layer).__name__}"
            )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        question_mask: Tensor | None = None,
        prior: Tensor | None = None,
    ) -> QAOutput:
        """Span logits; ``question_mask`` ``[B, T]`` (the question's tokens) is needed by the bilinear head and
        ``prior`` ``[B, T, 2]`` by the sentence prior."""
        self._set_mask(attention_mask)
        # segment ids for BERT-like backbones (DistilBERT has no segment embeddings)
        segments = token_type_ids is not None and getattr(self.backbone.config, "type_vocab_size", 0) > 1
        extra = {"token_type_ids": token_type_ids} if segments else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.qa_outputs(hidden)
        if self.qa_bilinear is not None:
            if question_mask is None:
                raise ConfigError("qa: the bilinear span head needs the question mask of each window")
            qm = question_mask.to(hidden.dtype)[..., None]
            q = (hidden * qm).sum(1) / qm.sum(1).clamp(min=1)
            u = self.qa_bilinear(q).view(q.shape[0], 2, -1)  # W_s q and W_e q
            logits = logits + torch.einsum("bth,bkh->btk", hidden, u)
        if self.qa_prior is not None:
            if prior is None:
                raise ConfigError("qa: the model was trained with the sentence prior; pass its features")
            logits = logits + self.qa_prior(prior.to(hidden.dtype))
        start, end = logits.unbind(-1)
        return self._collect(start, end, attention_mask, hidden)


class _Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def build_qa_model(config: SwitchQAConfig) -> _QABase:
    """The scratch model, or the upcycled checkpoint when ``config.init_from`` is set."""
    return UpcycledHFQA(config) if config.init_from else SwitchTransformerQA(config)


def decompose_to_uoe(model: SwitchTransformerQA, **uoe: int) -> SwitchTransformerQA:
    """The Union-of-Experts model with ``model``'s weights: every attention split into head-group experts and
    every dense FFN into hidden-unit experts, exactly (routers start at zero, so with every expert selected it
    computes ``model``'s function); its Switch layers and everything else are copied as they are."""
    if not isinstance(model, SwitchTransformerQA) or model.config.uoe is not None:
        raise ConfigError("decompose_to_uoe: expected a dense scratch QA model (SwitchTransformerQA, no uoe)")
    config = dataclasses.replace(
        model.config, uoe=dict(uoe), moe_layers=model.config.resolved_moe_layers(model.config.num_layers)
    )
    new = SwitchTransformerQA(config)
    new.load_state_dict(model.state_dict(), strict=False)  # embeddings, norms, Switch layers, span head
    opts = config.resolved_uoe()
    for dense, layer in zip(model.layers, new.layers, strict=True):
        attn = SelectiveMultiHeadAttention.from_qkv(
            dense.qkv, dense.out, config.num_heads, opts["attn_experts"], opts["attn_top_k"]
        )
        layer.attn.load_state_dict(attn.state_dict())
        if isinstance(layer.ffn, _UoEFFN):
            mlp = UnionOfMLPExperts.from_linear(
                dense.ffn.lin1,
                dense.ffn.lin2,
                opts["mlp_experts"],
                opts["mlp_top_k"],
                num_groups=opts["mlp_groups"],
                top_groups=opts["mlp_top_groups"],
            )
            layer.ffn.uoe.load_state_dict(mlp.state_dict())
    return new
