"""DeepSpeed-MoE's PR-MoE and Mixture-of-Students against a standard MoE, on a text and a circuit task.

Models (same width, same training budget, measured in this run):

* ``standard``   — ``--layers`` MoE layers, ``--experts`` top-2 experts each;
* ``pr-moe``     — pyramid ``[experts/2, experts]`` of top-1 residual experts (dense MLP + one expert,
  mixed by a learned coefficient);
* ``mos``        — a ``--layers/2``-layer student of the PR-MoE (every other teacher layer, initialized from
  it), trained with staged KD (KD weight 0.5 for the first half, then the task loss alone);
* ``student-nokd`` — the same student trained on the task loss alone (the ablation).

Text: bits per character on held-out SQuAD contexts (lower is better). Circuit: signal-probability MAE on
held-out ISCAS'85 circuits (lower is better). Parameters are counted over the whole model.

    python bench/bench_moe_pr_moe.py                  # both tasks
    python bench/bench_moe_pr_moe.py --quick
    python bench/bench_moe_pr_moe.py --device cuda    # untested here: no GPU on this machine
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from circuitml.moe.systems.mos import mos_loss, student_from_teacher
from circuitml.moe.systems.pr_moe import build_pr_moe, build_standard_moe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import moe_tasks as T  # noqa: E402


def _stacks(args):
    std = build_standard_moe(args.d_model, args.layers, args.experts, args.hidden, top_k=2)
    pr = build_pr_moe(args.d_model, args.layers, [args.experts // 2, args.experts], args.hidden)
    return std, pr


def run_text(args) -> list[tuple[str, int, float]]:
    train_ids, test_ids, vocab = T.text_data()
    rows = []
    std, pr = _stacks(args)
    models = {}
    for name, stack in (("standard", std), ("pr-moe", pr)):
        torch.manual_seed(args.seed)
        m = T.CharLM(stack, vocab, args.d_model)
        T.train(m, T.text_loss(m, train_ids, torch.Generator().manual_seed(args.seed)), args.steps)
        models[name] = m
        rows.append((name, T.num_params(m), T.text_eval(m, test_ids)))
    keep = list(range(0, args.layers, 2))
    teacher = models["pr-moe"].eval()
    for name, use_kd in (("mos", True), ("student-nokd", False)):
        torch.manual_seed(args.seed)
        student = copy.deepcopy(teacher)
        student.stack = student_from_teacher(teacher.stack, keep)
        student.train()
        g = torch.Generator().manual_seed(args.seed)

        def loss(step: int, student=student, g=g, use_kd=use_kd) -> torch.Tensor:
            x, y = T.text_batch(train_ids, 16, 128, g)
            logits, aux = student(x)
            task = (
                torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux
            )
            if not use_kd:
                return task
            with torch.no_grad():
                t_logits, _ = teacher(x)
            return mos_loss(task, logits, t_logits, step, args.steps, weight=0.5, stop_fraction=0.5)

        T.train(student, loss, args.steps)
        rows.append((name, T.num_params(student), T.text_eval(student, test_ids)))
    return rows


def run_circuit(args) -> list[tuple[str, int, float]]:
    train_g, test_g = T.circuit_data()
    rows = []
    std, pr = _stacks(args)
    models = {}
    for name, stack in (("standard", std), ("pr-moe", pr)):
        torch.manual_seed(args.seed)
        m = T.CircuitNet(stack, args.d_model)
        T.train(m, T.circuit_loss(m, train_g, torch.Generator().manual_seed(args.seed)), args.steps)
        models[name] = m
        rows.append((name, T.num_params(m), T.circuit_eval(m, test_g)))
    keep = list(range(0, args.layers, 2))
    teacher = models["pr-moe"].eval()
    from torch_geometric.data import Batch

    for name, use_kd in (("mos", True), ("student-nokd", False)):
        torch.manual_seed(args.seed)
        student = teacher.keep_layers(keep, student_from_teacher(teacher.stack, keep))
        student.train()
        g = torch.Generator().manual_seed(args.seed)

        def loss(step: int, student=student, g=g, use_kd=use_kd) -> torch.Tensor:
            pick = torch.randperm(len(train_g), generator=g)[:2].tolist()
            b = Batch.from_data_list([train_g[i] for i in pick])
            pred, aux = student(b)
            mask = T.gate_mask(b)
            task = (pred[mask] - b.prob[mask]).abs().mean() + aux
            if not use_kd:
                return task
            with torch.no_grad():
                t_pred, _ = teacher(b)
            return mos_loss(task, pred[mask], t_pred[mask], step, args.steps, kind="mse")

        T.train(student, loss, args.steps)
        rows.append((name, T.num_params(student), T.circuit_eval(student, test_g)))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["text", "circuit", "both"], default="both")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="only cpu is implemented in this bench's loops")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("bench_moe_pr_moe: --device: only cpu is implemented for these training loops")
    if args.quick:
        args.steps = 30
    torch.set_num_threads(args.threads)
    for task in ("text", "circuit") if args.task == "both" else (args.task,):
        t0 = time.perf_counter()
        rows = run_text(args) if task == "text" else run_circuit(args)
        metric = "bits/char" if task == "text" else "MAE"
        print(
            f"{task}: layers={args.layers} experts={args.experts} d={args.d_model} h={args.hidden} "
            f"steps={args.steps} seed={args.seed} ({time.perf_counter() - t0:.0f} s)"
        )
        print(f"  {'model':<13} {'params':>9} {metric:>10}")
        for name, n, q in rows:
            print(f"  {name:<13} {n:>9,} {q:>10.4f}")


if __name__ == "__main__":
    main()
