"""Systems of the MoE seed papers, each in its own module, built on the core (block, dispatch, parallel).

* :mod:`.ring_inference` — SE-MoE ring-memory inference (slow tier + ring of K fast sections, prefetch).
* :mod:`.fssdp` — Hecate's fully sharded sparse data parallelism (sparse all-gather / reduce-scatter, re-sharding).
* :mod:`.adaptive` — Tutel's adaptive runtime (dynamic capacity, EP<->DP switch, pipelining degree).
* :mod:`.qmoe` — QMoE: GPTQ ternary (below 1 bit/param) or 2-bit experts in an entropy-coded format, decoded
  per routed expert (``circuitml moe compress`` applies it to a saved QA model or encoder).
* :mod:`.moe2` — MoE²: budgeted selection of heterogeneous experts (branch and bound), gate among the chosen.
* :mod:`.pr_moe`, :mod:`.mos` — DeepSpeed-MoE's pyramid-residual MoE and Mixture-of-Students distillation.
* :mod:`.launch` — run a function on W local processes of one gloo/NCCL group (tests, benches).
"""

from circuitml.moe.systems.adaptive import AdaptiveParallelFFN, DynamicCapacityRouter
from circuitml.moe.systems.fssdp import FSSDPExperts, allreduce_replicated_grads, balanced_placement
from circuitml.moe.systems.moe2 import BudgetedMoE, ExpertCost, measure_cost, select_experts
from circuitml.moe.systems.mos import kd_loss, mos_loss, staged_kd_weight, student_from_teacher
from circuitml.moe.systems.pr_moe import (
    PreNormMoEStack,
    ResidualMoE,
    build_pr_moe,
    build_standard_moe,
    pyramid,
)
from circuitml.moe.systems.qmoe import QMoEExperts, apply_qmoe, compress_model, load_qmoe, save_qmoe
from circuitml.moe.systems.ring_inference import RingMemory, mmap_safetensors, ring_offload

__all__ = [
    "AdaptiveParallelFFN",
    "BudgetedMoE",
    "DynamicCapacityRouter",
    "ExpertCost",
    "FSSDPExperts",
    "PreNormMoEStack",
    "QMoEExperts",
    "ResidualMoE",
    "RingMemory",
    "allreduce_replicated_grads",
    "apply_qmoe",
    "balanced_placement",
    "build_pr_moe",
    "build_standard_moe",
    "compress_model",
    "kd_loss",
    "load_qmoe",
    "measure_cost",
    "mmap_safetensors",
    "mos_loss",
    "pyramid",
    "ring_offload",
    "save_qmoe",
    "select_experts",
    "staged_kd_weight",
    "student_from_teacher",
]
