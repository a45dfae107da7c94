"""The MGVGA pretraining model: a circuit encoder from the builder, the MGM head, the VGA head and (optionally)
the built-in Verilog encoder, returning every loss of one micro-batch.

Wu et al., "Circuit Representation Learning with Masked Gate Modeling and Verilog-AIG Alignment", ICLR 2025:
:math:`\\mathcal L = w_{MGM}\\mathcal L_{MGM} + w_{VGA}\\mathcal L_{VGA}` (+ the MoE balancing losses of the
encoder, when it has MoE layers), plus, when enabled, the functional objectives
:math:`w_{FR}\\mathcal L_{FR} + w_{FS}\\mathcal L_{FS} + w_{CL}\\mathcal L_{CL} + w_{QoR}\\mathcal L_{QoR}`
(:mod:`~circuitml.pretrain.funcrec`, :mod:`~circuitml.pretrain.funcsim`, :mod:`~circuitml.pretrain.contrastive`,
:mod:`~circuitml.pretrain.qor`). The latent-space objectives (MGM,
FR, FS, CL's anchors) share one encoding of the intact graph; VGA encodes the input-masked graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from circuitml.graph import MASK_TYPE, NUM_NODE_TYPES
from circuitml.pretrain.config import PretrainConfig
from circuitml.pretrain.contrastive import ContrastiveHead
from circuitml.pretrain.data import PretrainBatch
from circuitml.pretrain.funcrec import FunctionalReconstructionHead
from circuitml.pretrain.funcsim import FunctionalSimilarityHead
from circuitml.pretrain.mgm import MGMHead, node_degrees, random_node_mask
from circuitml.pretrain.qor import QoRPretrainHead
from circuitml.pretrain.signatures import SIGNATURE_WORDS, degree_lookup_accuracy
from circuitml.pretrain.verilog_encoder import BuiltinVerilogEncoder
from circuitml.pretrain.vga import VGAHead, VGAOutput

__all__ = ["MGVGAModel", "LOSS_COLUMNS"]

#: Metrics returned by :meth:`MGVGAModel.forward`, in CSV column order. ``base_*`` columns are the scores of a
#: trivial structural predictor on the same targets (see :mod:`circuitml.pretrain.signatures`): a degree lookup
#: for gate types, a linear fit on level/fanout/type features for functional targets, structural statistics
#: for contrastive retrieval. An objective whose model score does not beat its ``base_*`` teaches nothing.
LOSS_COLUMNS = [
    "loss",
    "loss_mgm_type",
    "loss_mgm_degree",
    "loss_vga",
    "loss_funcrec",
    "loss_funcsim",
    "loss_contrast",
    "loss_aux",
    "acc_mgm",
    "base_mgm",
    "acc_vga",
    "base_vga",
    "mae_funcrec_prob",
    "base_funcrec_prob",
    "acc_funcrec_bits",
    "base_funcrec_bits",
    "mae_funcsim",
    "base_funcsim",
    "acc_contrast",
    "acc_contrast_po",
    "base_contrast",
    "loss_qor",
    "mse_qor",
    "base_qor",
]


class MGVGAModel(nn.Module):
    """Encoder + MGM head + VGA head (+ built-in Verilog transformer).

    Args:
        encoder: any :class:`circuitml.encoders.Encoder`.
        config: the pretraining config (mgm/vga/model sections are read).
        text_hidden: width of the Verilog states (the built-in encoder's width, or the HF model's).
        vocab_size: Verilog vocabulary size when the built-in Verilog encoder is used, else None.
        qor_labels: the recipe-response labels (:class:`~circuitml.pretrain.qor.QoRLabelSet`) when
            ``qor.enabled``; their recipes and design-blind baseline become buffers of the QoR head.
    """

    def __init__(
        self,
        encoder: nn.Module,
        config: PretrainConfig,
        text_hidden: int,
        vocab_size: int | None,
        qor_labels=None,
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder
        hidden = encoder.out_dim
        self.mgm = (
            MGMHead(hidden, NUM_NODE_TYPES, config.mgm.decoder_layers, config.mgm.degree_weight)
            if config.mgm.enabled
            else None
        )
        self.vga = (
            VGAHead(hidden, text_hidden, NUM_NODE_TYPES, config.vga.heads, config.vga.layers)
            if config.vga.enabled
            else None
        )
        self.funcrec = (
            FunctionalReconstructionHead(hidden, 64 * SIGNATURE_WORDS, config.funcrec.decoder_layers)
            if config.funcrec.enabled
            else None
        )
        self.funcsim = (
            FunctionalSimilarityHead(
                hidden, config.funcsim.pairs_per_node, config.funcsim.sampling, config.funcsim.window
            )
            if config.funcsim.enabled
            else None
        )
        self.contrast = (
            ContrastiveHead(hidden, config.contrast.temperature, config.contrast.po_weight)
            if config.contrast.enabled
            else None
        )
        self.qor = None
        if config.qor.enabled:
            if qor_labels is None:
                raise ValueError("qor.enabled: the model needs the QoR label set (its recipes)")
            self.qor = QoRPretrainHead(
                hidden, qor_labels.recipes, qor_labels.recipe_mean, recipe_kind=config.qor.recipe_kind
            )
        self.verilog = None
        if config.vga.enabled and vocab_size is not None:
            m = config.model
            self.verilog = BuiltinVerilogEncoder(
                vocab_size, m.verilog_hidden, m.verilog_layers, m.verilog_heads, config.data.max_tokens
            )

    def text_states(self, batch: PretrainBatch) -> Tensor:
        """Token-level Verilog states ``[B, L, H]`` of a batch."""
        if self.verilog is not None:
            if batch.tokens is None:
                return torch.zeros(
                    batch.num_graphs, 1, self.verilog.hidden_size, device=batch.text_mask.device
                )
            return self.verilog(batch.tokens, batch.text_mask | ~batch.has_text[:, None])
        if batch.text_hidden is None:
            return torch.zeros(
                batch.num_graphs, 1, self.vga.text_proj.in_features, device=batch.text_mask.device
            )
        return batch.text_hidden

    def vga_forward(self, batch: PretrainBatch, mask: Tensor) -> tuple[VGAOutput, Tensor]:
        """Encode the input-masked graph and decode it against the Verilog; returns (VGA output, aux loss)."""
        g = batch.graph
        node_type = torch.where(mask, torch.full_like(g.x, MASK_TYPE), g.x)
        out = self.encoder(g, node_type=node_type)
        aux = self.encoder.aux_loss()
        vga = self.vga(out.node, mask, g.batch, g.x, self.text_states(batch), batch.text_mask, batch.has_text)
        return vga, aux

    def forward(self, batch: PretrainBatch, generator: torch.Generator) -> dict[str, Tensor]:
        """All losses of one micro-batch; masks are drawn from ``generator`` (MGM first, then VGA)."""
        g = batch.graph
        device = g.x.device
        zero = torch.zeros((), device=device)
        metrics = {c: zero for c in LOSS_COLUMNS}
        total = zero
        aux = zero
        cfg = self.config
        out = None
        if any(h is not None for h in (self.mgm, self.funcrec, self.funcsim, self.contrast)):
            out = self.encoder(g)  # the intact graph, shared by the latent-space objectives
            aux = aux + self.encoder.aux_loss()
        if self.mgm is not None:
            mask = random_node_mask(g.num_nodes, cfg.mgm.mask_ratio, generator, device)
            mgm = self.mgm(out.node, mask, g.edge_index, g.x)
            total = total + cfg.mgm.weight * mgm.loss
            metrics.update(
                loss_mgm_type=mgm.type_loss,
                loss_mgm_degree=mgm.degree_loss,
                acc_mgm=mgm.accuracy,
                base_mgm=mgm.baseline,
            )
        if self.vga is not None:
            mask = random_node_mask(g.num_nodes, cfg.vga.mask_ratio, generator, device)
            vga, vga_aux = self.vga_forward(batch, mask)
            aux = aux + vga_aux
            total = total + cfg.vga.weight * vga.loss
            select = mask & batch.has_text[g.batch]
            indeg, outdeg = node_degrees(g.edge_index, g.num_nodes)
            base = degree_lookup_accuracy(indeg[select], outdeg[select], g.x[select])
            metrics.update(loss_vga=vga.loss, acc_vga=vga.accuracy, base_vga=base)
        if self.funcrec is not None:
            mask = random_node_mask(g.num_nodes, cfg.funcrec.mask_ratio, generator, device)
            fr = self.funcrec(out.node, mask, g)
            total = total + cfg.funcrec.weight * fr.loss
            metrics.update(
                loss_funcrec=fr.loss,
                mae_funcrec_prob=fr.prob_mae,
                base_funcrec_prob=fr.baseline_prob_mae,
                acc_funcrec_bits=fr.bit_accuracy,
                base_funcrec_bits=fr.baseline_bit_accuracy,
            )
        if self.funcsim is not None:
            fs = self.funcsim(out.node, g, generator)
            total = total + cfg.funcsim.weight * fs.loss
            metrics.update(loss_funcsim=fs.loss, mae_funcsim=fs.mae, base_funcsim=fs.baseline_mae)
        if self.contrast is not None:
            cb = batch.contrast
            pos = self.encoder(cb.positive)
            aux = aux + self.encoder.aux_loss()
            mut = None
            if cb.mutant is not None:
                m = self.encoder(cb.mutant)
                aux = aux + self.encoder.aux_loss()
                mut = (m.node, m.graph, cb.mutant)
            cl = self.contrast(
                (out.node, out.graph, g), (pos.node, pos.graph, cb.positive), mut, cb.design, cb.mutant_of
            )
            total = total + cfg.contrast.weight * cl.loss
            metrics.update(
                loss_contrast=cl.loss,
                acc_contrast=cl.graph_accuracy,
                acc_contrast_po=cl.po_accuracy,
                base_contrast=cl.baseline_accuracy,
            )
        if self.qor is not None:
            q = self.encoder(batch.qor.graph)  # the labelled designs, whole (not merged with a variant)
            aux = aux + self.encoder.aux_loss()
            qo = self.qor(q.graph, batch.qor.z)
            total = total + cfg.qor.weight * qo.loss
            metrics.update(loss_qor=qo.loss, mse_qor=qo.mse, base_qor=qo.baseline_mse)
        total = total + aux
        metrics.update(loss=total, loss_aux=aux)
        return metrics
