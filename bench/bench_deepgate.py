"""circuitml's level-wise DAG encoder against DeepGate2's own code (python-deepgate) on the same AIG.

DeepGate2 (Shi et al., "DeepGate2: Functionality-Aware Circuit Representation Learning", ICCAD 2023) is the
reference level-wise circuit encoder; its package ``deepgate`` is loaded at run time from a checkout or a bare git
snapshot (its Python files, into a temporary folder; nothing is copied into this repository) and runs as its authors
ship it, at random initialisation (timing does not depend on the weights). Both sides read the same ``.bench`` file
written from a random AIG (``bench_encoders.random_aig``):

* **graph preparation**: file -> the graph the encoder consumes. DeepGate2: ``BenchParser().read_bench`` (parse,
  explicit NOT nodes, forward and backward levels). circuitml: ``read_bench`` -> ``aig_to_data`` ->
  ``level_schedule`` (the per-level node/edge groups its sweeps use).
* **graph building** alone, from what each parser produced (our AIG; DeepGate2's gate list and edge list):
  ``aig_to_data`` + ``level_schedule`` against ``parse_pyg_mlpgate``.
* **one forward sweep, no gradients**, hidden 128 on both sides: DeepGate2 ``Model(num_rounds=1)`` (structural and
  functional GRU states, the AND/NOT aggregators) against ``dag`` with one iteration and no reverse sweep; and
  circuitml's default ``dag`` (its configured iterations, forward + reverse) as a second row.

Times are process CPU time, best of ``--reps`` (the peer's forward is one run at the default size: ~2-3 minutes),
so a loaded machine does not distort the ratio. DeepGate2's forward is O(levels x edges): every level re-filters
the whole edge list (``subgraph``), which is where its time goes at this size.

    python bench/bench_deepgate.py                         # 125k ANDs, the default snapshot path
    python bench/bench_deepgate.py --ands 20000 --reps 3   # smaller, quicker
    python bench/bench_deepgate.py --prepare-only          # the two graph-preparation rows only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoders import random_aig  # noqa: E402

from circuitml.encoders import build_encoder  # noqa: E402
from circuitml.formats.bench import read_bench, write_bench  # noqa: E402
from circuitml.graph import aig_to_data, level_schedule  # noqa: E402

SCATTER_SHIM = """from torch_geometric.utils import scatter


def scatter_add(src, index, dim=-1, out=None, dim_size=None):
    if out is not None:
        return out.index_add_(dim, index, src)
    return scatter(src, index, dim=dim, dim_size=dim_size, reduce="sum")
"""
DEEPGATE_SNAPSHOT = Path("/work/.mirror/zshi0616+python-deepgate/repo")


def load_deepgate(source: Path, into: Path):
    """Import DeepGate2's ``deepgate`` package from a checkout or a bare git snapshot (extracted into ``into``)."""
    if (source / "deepgate" / "__init__.py").is_file():
        root = source
    else:  # a bare snapshot: its Python files only (its pickled weights may be absent and are not needed)
        git = ["git", "--git-dir", str(source)]
        names = subprocess.run(
            [*git, "ls-tree", "-r", "--name-only", "HEAD", "deepgate"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for name in (n for n in names if n.endswith(".py")):
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(
                subprocess.run([*git, "show", f"HEAD:{name}"], check=True, capture_output=True).stdout
            )
        root = into
    sys.path.insert(0, str(root))
    try:
        import torch_scatter  # noqa: F401
    except ImportError:  # its gcn_conv imports scatter_add; PyG's built-in scatter stands in (same reduction)
        (into / "torch_scatter.py").write_text(SCATTER_SHIM)
        sys.path.insert(0, str(into))
    # Its package __init__ also imports the trainer (``progress``) and SAT utilities we do not time; load the
    # package without running it and import only the model and the parsers (their utils import py-aiger).
    import importlib
    import types

    pkg = types.ModuleType("deepgate")
    pkg.__path__ = [str(root / "deepgate")]
    sys.modules["deepgate"] = pkg
    model = importlib.import_module("deepgate.model")
    parser = importlib.import_module("deepgate.parser")
    return types.SimpleNamespace(
        Model=model.Model,
        BenchParser=parser.BenchParser,
        parse_gates=parser.read_file,  # BenchParser.read_bench's steps, to time parsing and graph building apart
        add_node_index=parser.add_node_index,
        connect=parser.feature_gen_connect,
        build_graph=parser.parse_pyg_mlpgate,
    )


def cpu_best(fn, reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ands", type=int, default=125_000, help="AND gates of the random AIG")
    ap.add_argument(
        "--hidden", type=int, default=128, help="hidden width, both encoders (DeepGate2's default)"
    )
    ap.add_argument("--reps", type=int, default=3, help="best of N for circuitml and the peer's parser")
    ap.add_argument("--peer-reps", type=int, default=1, help="best of N for the peer's forward (slow)")
    ap.add_argument("--deepgate", type=Path, default=DEEPGATE_SNAPSHOT, help="checkout or bare git snapshot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prepare-only", action="store_true", help="only the two graph-preparation rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="bench_deepgate_") as tmp:
        deepgate = load_deepgate(args.deepgate, Path(tmp))
        path = Path(tmp) / f"random{args.ands}.bench"
        write_bench(random_aig(args.ands, seed=0), path)

        def ours_prepare():
            data = aig_to_data(read_bench(path))
            level_schedule(data)
            return data

        t_ours_prep, data = cpu_best(ours_prepare, args.reps)
        t_peer_prep, graph = cpu_best(lambda: deepgate.BenchParser().read_bench(str(path)), args.reps)

        # the graph alone, from what each side's parser produced: our AIG; DeepGate2's gate list and edges
        aig = read_bench(path)
        t_ours_graph, _ = cpu_best(lambda: level_schedule(aig_to_data(aig)), args.reps)
        gates, _, _ = deepgate.add_node_index(deepgate.parse_gates(str(path)))
        x_data, edges = deepgate.connect(gates, {"PI": 0, "AND": 1, "NOT": 2})
        x_data = np.array([[k, int(row[1])] for k, row in enumerate(x_data)])

        def peer_graph():
            return deepgate.build_graph(x_data, np.array(edges), [], [], [0] * len(x_data), [], [])

        t_peer_graph, _ = cpu_best(peer_graph, args.reps)
        levels = int(data.level.max()) + 1
        print(
            f"random AIG: {args.ands} ANDs; circuitml graph {data.num_nodes} nodes / {data.edge_index.shape[1]} "
            f"edges / {levels} levels; DeepGate2 graph {len(graph.gate)} nodes / {graph.edge_index.shape[1]} edges; "
            f"{args.threads} thread(s), CPU time"
        )

        sweep = build_encoder(
            {"kind": "dag", "hidden": args.hidden, "num_layers": 1, "options": {"reverse": False}}
        )
        default = build_encoder({"kind": "dag", "hidden": args.hidden})
        peer = deepgate.Model(num_rounds=1, dim_hidden=args.hidden)
        for m in (sweep, default, peer):
            m.eval()

        def forward(model, g):
            def run():
                with torch.no_grad():
                    return model(g)

            return run

        if args.prepare_only:
            t_sweep = t_default = t_peer = float("nan")
        else:
            forward(sweep, data)()  # the schedule and sweep plans are cached on the graph by the first call
            t_sweep, _ = cpu_best(forward(sweep, data), args.reps)
            t_default, _ = cpu_best(forward(default, data), args.reps)
            t_peer, _ = cpu_best(forward(peer, graph), args.peer_reps)

    rows = [
        ("graph preparation (.bench file -> encoder input)", t_ours_prep, t_peer_prep),
        ("graph building from the parsed circuit (levels included)", t_ours_graph, t_peer_graph),
        ("one forward sweep, no grad", t_sweep, t_peer),
        (f"circuitml default dag ({default.config.num_layers} iterations fwd+rev) vs DeepGate2 1 round", t_default,
         t_peer),
    ]  # fmt: skip
    print("| row | circuitml s | DeepGate2 s | speed-up |\n|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
