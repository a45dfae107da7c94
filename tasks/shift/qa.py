"""The QA transformer under the domain-shift contract: rows are the real tokens of a batch of windows.

``forward(batch)`` returns the last hidden states of the non-padding tokens as features and their (start, end)
logits as predictions ``[N, 2]``; the loss is the span cross-entropy over each window; the label-free loss is
masked-token prediction on the context (BERT's MLM, Devlin et al. 2019) through a small LM head; MixDA wraps the
FFN sublayers of the dense (non-MoE) layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from circuitml.tasks.qa.data import QAFeatures
from circuitml.tasks.qa.model import SwitchQAConfig, SwitchTransformerQA, _DenseFFN
from circuitml.tasks.shift.base import ShiftOutput
from torch import Tensor, nn

__all__ = ["QAShiftModel", "QAShiftTask", "qa_batches"]

MASK_TOKEN_ID = 4  # [MASK] in the tokenizers trained by circuitml.tasks.qa.data


def qa_batches(feats: QAFeatures, batch_size: int) -> list[dict[str, Tensor]]:
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
    return out


class QAShiftModel(nn.Module):
    def __init__(self, config: SwitchQAConfig) -> None:
        super().__init__()
        self.qa = SwitchTransformerQA(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)

    def run(self, batch: dict[str, Tensor], input_ids: Tensor | None = None):
        ids = batch["input_ids"] if input_ids is None else input_ids
        return self.qa(ids, batch["attention_mask"])

    def forward(self, batch: dict[str, Tensor]) -> ShiftOutput:
        out = self.run(batch)
        keep = batch["attention_mask"].reshape(-1).bool()
        feats = out.hidden.reshape(-1, out.hidden.shape[-1])[keep]
        preds = torch.stack([out.start_logits, out.end_logits], dim=-1).reshape(-1, 2)[keep]
        return ShiftOutput(features=feats, preds=preds)


class QAShiftTask:
    def __init__(self, config: SwitchQAConfig, seed: int = 0, mask_rate: float = 0.15) -> None:
        self.config = config
        self.gen = torch.Generator().manual_seed(seed)
        self.mask_rate = mask_rate

    def make_model(self) -> QAShiftModel:
        return QAShiftModel(self.config)

    def _window_logits(self, preds: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mask = batch["attention_mask"].bool()
        full = torch.full((*mask.shape, 2), torch.finfo(preds.dtype).min, dtype=preds.dtype)
        full[mask] = preds
        return full[..., 0], full[..., 1]

    def loss(self, out: ShiftOutput, batch: dict[str, Tensor]) -> Tensor:
        start, end = self._window_logits(out.preds, batch)
        return (F.cross_entropy(start, batch["start"]) + F.cross_entropy(end, batch["end"])) / 2

    def metric(self, preds: Tensor, batch: dict[str, Tensor]) -> float:
        """Span error rate: 1 - exact token-span match per window (a proxy for EM without re-decoding text)."""
        start, end = self._window_logits(preds, batch)
        hit = (start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])
        return float(1.0 - hit.float().mean())

    def unsup_loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        ctx = batch["context_mask"]
        masked = ctx & (torch.rand(ctx.shape, generator=self.gen) < self.mask_rate)
        if not masked.any():
            masked = ctx & (torch.cumsum(ctx.long(), dim=1) == 1)
        ids = batch["input_ids"].masked_fill(masked, MASK_TOKEN_ID)
        hidden = model.run(batch, input_ids=ids).hidden
        return F.cross_entropy(model.lm_head(hidden[masked]), batch["input_ids"][masked])

    def unsup_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    def ffn_names(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, _DenseFFN)]
