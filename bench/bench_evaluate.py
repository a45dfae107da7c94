"""CPU time of ``evaluate qor`` training: steps over designs (one encoding per design per step, today's path)
against the former steps over shuffled rows (each step re-encodes every design its rows touch), measured in the
same run on the same labels, encoder and seed; then the projected CPU time of the full target run
(``--compare scratch --seeds 3``, default epochs).

    python bench/bench_evaluate.py --labels LABELS --encoder DIR [--epochs 2] [--threads 1]
    python bench/bench_evaluate.py --circuits DATASET --encoder DIR      # probability and equivalence

Prints CPU seconds per epoch (``time.process_time``, best of ``--repeat``) of both paths and their ratio; with
``--circuits``, the data preparation and per-epoch CPU time of probability and gate equivalence (fine-tuned, the
dearest mode) and the projected total of ``--compare scratch --seeds 3`` at the default 30 epochs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def rows_path_epoch(labels, graphs, encoder, head, opt, train_rows, z, recipes, batch_size: int, rng) -> None:
    """The former QoR step: shuffled batches of rows; the designs of each batch are encoded at every step."""
    from circuitml.tasks.common import GraphEncoding

    enc = GraphEncoding(encoder, graphs, trainable=True)
    for s in range(0, len(train_rows), batch_size):
        rows = train_rows[rng.permutation(len(train_rows))[s : s + batch_size]]
        designs, inverse = np.unique(labels.design[rows], return_inverse=True)
        _, g, _, _ = enc(designs)
        loss = torch.mean((head(g[torch.from_numpy(inverse)], recipes[labels.recipe[rows]]) - z[rows]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()


def circuit_tasks(circuits: str, encoder: str) -> None:
    from circuitml.tasks.common import TrainConfig
    from circuitml.tasks.runner import Variant, prepare_task, run_variants

    for task in ("probability", "equivalence"):
        t = time.process_time()
        data = prepare_task(task, circuits)
        prep = time.process_time() - t
        per = []
        for epochs in (1, 3):
            t = time.process_time()
            run_variants(data, [Variant("pretrained", encoder, "finetune")], [0], TrainConfig(epochs=epochs))
            per.append(time.process_time() - t)
        epoch = (per[1] - per[0]) / 2
        total = prep + 6 * (per[0] + 29 * epoch)
        print(
            f"{task}: {len(data.circuits)} circuits; preparation {prep:.1f} CPU s, {epoch:.2f} CPU s/epoch; "
            f"projected --compare scratch --seeds 3 --epochs 30: {total / 60:.1f} CPU min"
        )


def main() -> None:
    from circuitml.datasets.qor import load_qor_labels
    from circuitml.tasks.common import TrainConfig, configure_runtime, make_encoder
    from circuitml.tasks.qor import QoRHead, run_qor, split_rows

    from circuitml.graph import aig_to_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels")
    ap.add_argument("--circuits", help="dataset for the probability / equivalence timing")
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed per path")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    configure_runtime(args.threads)
    if args.circuits:
        circuit_tasks(args.circuits, args.encoder)
    if not args.labels:
        return
    labels = load_qor_labels(args.labels)
    graphs = [aig_to_data(labels.aig(d)) for d in range(len(labels.design_ids))]
    cfg = TrainConfig(epochs=args.epochs, seed=0)
    train_rows, _ = split_rows(labels, "designs", cfg.test_fraction, cfg.seed)
    n_nodes = sum(graphs[d].num_nodes for d in np.unique(labels.design[train_rows]))
    print(
        f"{len(labels.design_ids)} designs, {len(labels)} rows; training designs hold {n_nodes} graph nodes"
    )

    def designs_path() -> float:
        t = time.process_time()
        run_qor(labels, args.encoder, "finetune", cfg, graphs=graphs)
        return time.process_time() - t

    def rows_path() -> float:
        encoder, _ = make_encoder(args.encoder, "finetune", seed=0)
        torch.manual_seed(0)
        head = QoRHead(encoder.out_dim)
        opt = torch.optim.AdamW([*head.parameters(), *encoder.parameters()], lr=cfg.lr)
        z = torch.from_numpy(labels.targets("ands"))
        recipes = torch.from_numpy(labels.recipes.astype(np.int64))
        rng = np.random.default_rng(0)
        t = time.process_time()
        for _ in range(args.epochs):
            rows_path_epoch(labels, graphs, encoder, head, opt, train_rows, z, recipes, cfg.batch_size, rng)
        return time.process_time() - t

    new = min(designs_path() for _ in range(args.repeat)) / args.epochs  # includes the final test pass
    old = min(rows_path() for _ in range(args.repeat)) / args.epochs
    print(
        f"CPU s/epoch: steps over designs {new:.2f}  |  former steps over rows {old:.2f}  |  ratio {old / new:.1f}x"
    )
    runs = 3 * 2  # --seeds 3 --compare scratch
    print(
        f"projected CPU time of --compare scratch --seeds 3 --epochs 30: {runs * 30 * new / 60:.1f} min "
        f"(former path {runs * 30 * old / 60:.1f} min); on 2 idle cores about half of that in wall time"
    )


if __name__ == "__main__":
    main()
