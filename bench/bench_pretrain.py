"""CPU cost of one pretraining step per objective set, on circuits drawn from a corpus (issue 11 item 4).

    python bench/bench_pretrain.py CORPUS [--config configs/pretrain_corpus.toml] [--circuits 200] [--steps 5]

Measures process CPU time (``time.process_time``, so other jobs on a shared machine do not inflate it) of
``--steps`` optimizer steps for each objective preset, on the same random sample of ``--circuits`` corpus AIGs,
after one warm-up step; prints CPU s/step, graphs and nodes per CPU-second, the ratio to the ``mgvga`` preset
measured in the same run, and the steps that fit in 60 minutes on 2 cores (two DDP processes).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from circuitml.datasets import CircuitDataset

from circuitml.encoders import EncoderConfig, build_encoder
from circuitml.pretrain.config import OBJECTIVE_PRESETS, load_config, objective_overrides
from circuitml.pretrain.data import BatchOrder, PretrainData, collate
from circuitml.pretrain.model import MGVGAModel
from circuitml.pretrain.trainer import micro_seed


def measure(cfg, dataset, steps: int) -> tuple[float, float, float]:
    from circuitml.verilog import VOCAB

    enc_cfg = EncoderConfig.from_dict(cfg.model.encoder, where="model.encoder")
    data = PretrainData(
        dataset,
        explicit_not=enc_cfg.explicit_not,
        text="builtin",
        max_tokens=cfg.data.max_tokens,
        max_nodes=cfg.data.max_nodes,
        signatures=cfg.funcrec.enabled or cfg.funcsim.enabled,
        contrast=cfg.contrast.enabled,
    )
    torch.manual_seed(0)
    model = MGVGAModel(build_encoder(enc_cfg), cfg, cfg.model.verilog_hidden, len(VOCAB))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    order = BatchOrder(len(data), cfg.data.batch_size, 0)
    cpu, graphs, nodes = 0.0, 0, 0
    for step in range(steps + 1):  # step 0 warms up
        t = time.process_time()
        idx = order.global_batch(step)
        gen = torch.Generator().manual_seed(micro_seed(0, step, 0))
        batch = collate([data.samples[i] for i in idx])
        if cfg.contrast.enabled:
            batch.contrast = data.contrast_batch(idx, gen)
        loss = model(batch, gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            cpu += time.process_time() - t
            graphs += batch.num_graphs
            nodes += batch.graph.num_nodes
    return cpu / steps, graphs / cpu, nodes / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--config", default="configs/pretrain_corpus.toml")
    parser.add_argument("--circuits", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    full = CircuitDataset(args.corpus)
    sample = sorted(random.Random(0).sample(range(len(full)), min(args.circuits, len(full))))
    dataset = full.subset(sample)
    rows = {}
    for preset in OBJECTIVE_PRESETS:
        cfg = load_config(args.config, objective_overrides(preset))
        rows[preset] = measure(cfg, dataset, args.steps)
        print(
            f"{preset:16s} {rows[preset][0]:.2f} CPU s/step  {rows[preset][1]:.1f} graphs/CPU-s  "
            f"{rows[preset][2]:.0f} nodes/CPU-s  x{rows[preset][0] / rows['mgvga'][0]:.2f} vs mgvga  "
            f"{int(2 * 3600 / rows[preset][0])} steps in 60 min on 2 cores",
            flush=True,
        )


if __name__ == "__main__":
    main()
