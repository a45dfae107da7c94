"""Encoder throughput: forward+backward nodes/s of every encoder, on the shared circuits and on generated AIGs
from 1k to 1M nodes, against this machine's dense matmul rate and memory copy bandwidth measured in the same run.

For each encoder and graph it prints nodes/s, the analytic FLOPs and bytes moved per node (from the layer shapes;
see ``cost_model``), the achieved FLOP/s and B/s, and the fraction of the roofline bound
``max(FLOPs / peak FLOP/s, bytes / peak B/s)`` that the measured time reaches (1.0 = at the bound; the target
is >= 0.5, i.e. within 2x, on batches of >= 100k nodes). The fitted exponent of time vs nodes over the generated
series shows whether cost grows linearly (1.0).

    python bench/bench_encoders.py --quick              # smoke run (small sizes, few encoders)
    python bench/bench_encoders.py                      # 1k .. 1M nodes, every encoder
    python bench/bench_encoders.py --device cuda --amp  # on a GPU, bf16 autocast
    python bench/bench_encoders.py --compile            # also torch.compile(dynamic=True) rows ("+compile")
    python bench/bench_encoders.py --encoders deepgcn,mgvga --mgvga /path/to/MGVGA   # the MGVGA peer row

``mgvga`` is MGVGA's own encoder (Wu et al., ICLR 2025; ``aigmae/modeling_vgmae.py`` of its repository, loaded
from a checkout or a bare git snapshot at run time, never copied here): 7 DeepGCNLayer(GENConv) res+ blocks on the
same union graph, timed with its type embedding. Its ``configuration_vgmae.py`` does not parse (``freeze: false``
in a signature), so a minimal config class stands in for it, and ``ModelOutput`` is re-exported where the
transformers version it was written for had it. CPU rows are process CPU time (best of ``--reps``);
``faults`` is page faults per timed step (after two warm-up steps, so heap growth to the peak is not counted
except on huge graphs, which get no warm-up unless ``--warmup-huge``). ``fwd s`` is one no-grad eval forward in process CPU time (all
threads), ``fwd wall`` the same forward in wall time (meaningful only on an otherwise idle machine). glibc's allocator is tuned as the ``circuitml`` CLI does
(:func:`circuitml.memory.tune_malloc`) unless ``--malloc default``.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

from circuitml.aig import AIG  # noqa: E402
from circuitml.encoders import build_encoder  # noqa: E402
from circuitml.graph import aig_to_data, level_schedule  # noqa: E402
from circuitml.memory import page_faults, tune_malloc  # noqa: E402

# name -> (kind, overrides); the DAG encoder runs one forward+reverse iteration (its cost is per iteration).
ENCODERS: dict[str, tuple[str, dict]] = {
    "deepgcn": ("deepgcn", {}),
    # one recompute mode over the whole series: "auto" switches to checkpointing at 2x ckpt_min_edges
    "deepgcn(ckpt)": ("deepgcn", {"options": {"ckpt_grad": True}}),
    "deepgcn(no ckpt)": ("deepgcn", {"options": {"ckpt_grad": False}}),
    "dag(1 iter)": ("dag", {"num_layers": 1, "options": {"checkpoint": True}}),
    "dag(1 sweep)": ("dag", {"num_layers": 1, "options": {"checkpoint": True, "reverse": False}}),
    "gcn": ("gcn", {}),
    "sage": ("sage", {}),
    "gin": ("gin", {}),
    "gat": ("gat", {"options": {"heads": 4}}),
    "moe_gnn(conv)": ("moe_gnn", {"options": {"num_experts": 4, "top_k": 2}}),
    "moe_gnn(ffn)": ("moe_gnn", {"options": {"expert": "ffn", "num_experts": 4, "top_k": 2}}),
    "dgl_gcn": ("dgl_gcn", {}),
    "dgl_sage": ("dgl_sage", {}),
}
QUICK = ["deepgcn", "dag(1 iter)", "gcn", "moe_gnn(conv)"]
MGVGA_SNAPSHOT = Path("/work/.mirror/wuhy68+MGVGA/repo")


# ----------------------------------------------------------------------------------------------- MGVGA peer
def load_mgvga(source: Path, hidden: int, layers: int = 7) -> torch.nn.Module:
    """MGVGA's encoder (type embedding + AIGMAEEncoder) from its own source, wrapped to take a PyG graph."""
    import subprocess
    import types

    file = source / "aigmae" / "modeling_vgmae.py"
    if file.is_file():
        code = file.read_text()
    else:  # a bare git snapshot
        code = subprocess.run(
            ["git", "--git-dir", str(source), "show", "HEAD:aigmae/modeling_vgmae.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    import transformers.modeling_utils as hf_modeling
    from transformers import PretrainedConfig
    from transformers.utils import ModelOutput

    # MGVGA imports ModelOutput from transformers.modeling_utils, where transformers 4.x kept it.
    if not hasattr(hf_modeling, "ModelOutput"):
        hf_modeling.ModelOutput = ModelOutput

    class AIGMAEConfig(
        PretrainedConfig
    ):  # stands in for MGVGA's configuration_vgmae.py, which does not parse
        model_type = "AIGMAE"

        def __init__(self, hidden_size=64, num_encoder_layers=7, num_classes=4, **kwargs):
            self.hidden_size, self.num_encoder_layers, self.num_classes = (
                hidden_size,
                num_encoder_layers,
                num_classes,
            )
            self.cross_hidden_size, self.cross_num_heads, self.num_cross_decoder_layers = hidden_size, 8, 2
            super().__init__(**kwargs)

    pkg = types.ModuleType("aigmae")
    cfg_mod = types.ModuleType("aigmae.configuration_vgmae")
    cfg_mod.AIGMAEConfig = AIGMAEConfig
    sys.modules.update({"aigmae": pkg, "aigmae.configuration_vgmae": cfg_mod})
    mod = types.ModuleType("aigmae.modeling_vgmae")
    sys.modules["aigmae.modeling_vgmae"] = mod  # its dataclasses look their module up
    exec(compile(code, str(file), "exec"), mod.__dict__)  # noqa: S102 - the peer's code, run as its authors ship it
    cfg = AIGMAEConfig(hidden_size=hidden, num_encoder_layers=layers, num_classes=5)

    class MGVGAEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feature = mod.AIGMAEFeature(cfg)
            self.encoder = mod.AIGMAEEncoder(cfg)

        def forward(self, data):  # returns what time_fwd_bwd's loss reads
            h = self.feature((data.x + 1).unsqueeze(0))  # MGVGA reserves type 0 for padding
            node = self.encoder(h, data.edge_index.unsqueeze(0))[0]
            return types.SimpleNamespace(node=node, graph=node.mean(0, keepdim=True))

        def aux_loss(self):
            return torch.zeros(())

    return MGVGAEncoder()


# ----------------------------------------------------------------------------------------------- machine peaks
def peak_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_copy_bandwidth(device: torch.device, mib: int = 256, reps: int = 5) -> float:
    """Bytes read + written per second by a large contiguous copy."""
    src = torch.empty(mib * 2**20 // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- graphs
def random_aig(num_ands: int, seed: int = 0) -> AIG:
    """A random AIG with realistic depth, built vectorized: ANDs are split into ``D = 10 log2(num_ands)`` layers;
    each AND takes one fanin from the previous layer (so depth is exactly ``D``) and one from anywhere earlier
    (reconvergence), with random complements; POs are the last layer plus 1% random taps."""
    rng = np.random.default_rng(seed)
    num_pis = max(8, int(math.sqrt(num_ands)))
    depth = max(2, int(10 * math.log2(max(num_ands, 2))))
    layer = np.sort(rng.integers(0, depth, num_ands))
    layer[: min(depth, num_ands)] = np.arange(min(depth, num_ands))  # every layer non-empty
    layer = np.sort(layer)
    first = num_pis + 1
    node = first + np.arange(num_ands)
    starts = np.searchsorted(layer, np.arange(depth + 1))  # AND index where each layer starts
    prev_lo = np.where(layer == 0, 1, first + starts[np.maximum(layer - 1, 0)])
    prev_hi = np.where(layer == 0, first, first + starts[layer])  # exclusive
    f0 = prev_lo + (rng.random(num_ands) * (prev_hi - prev_lo)).astype(np.int64)
    f1 = 1 + (rng.random(num_ands) * (prev_hi - 1)).astype(np.int64)
    f1 = np.minimum(f1, node - 1)
    ands = np.stack([2 * f0 + rng.integers(0, 2, num_ands), 2 * f1 + rng.integers(0, 2, num_ands)], axis=1)
    last = node[layer == layer.max()]
    taps = rng.choice(node, size=max(1, num_ands // 100), replace=False)
    pos = 2 * np.concatenate([last, taps]) + rng.integers(0, 2, last.size + taps.size)
    return AIG(num_pis=num_pis, ands=ands, pos=pos, name=f"random{num_ands}")


def shared_batch(quick: bool) -> Batch | None:
    from circuitml.formats import read_circuit

    paths = sorted((SHARED / "lsils__benchmarks").glob("*/*.aig"))
    paths += sorted((SHARED / "ispras__hdl-benchmarks" / "iscas85" / "bench").glob("*.bench"))
    if quick:
        paths = paths[:4]
    if not paths:
        return None
    return Batch.from_data_list([aig_to_data(read_circuit(p)) for p in paths])


# ----------------------------------------------------------------------------------------------- cost model
def cost_model(name: str, kind: str, enc, n: int, e: int) -> tuple[float, float]:
    """Analytic (FLOPs, bytes) of one forward+backward pass on ``n`` nodes and ``e`` edges.

    Counted from layer shapes: a dense ``[rows, a] x [a, b]`` matmul is ``2 rows a b`` FLOPs and moves
    ``4 rows (a + b)`` bytes (fp32; weights stay in cache); a gather or scatter of ``d``-wide rows over ``e``
    edges moves ``8 e d`` bytes (read + write); elementwise work is counted in bytes only. Backward is taken as
    2x the forward (grad of inputs + grad of weights); the checkpointed DAG sweep recomputes its forward once
    more (3x + 1x).
    """
    h = enc.config.hidden
    L = enc.config.num_layers

    def mm(rows, a, b):
        return 2.0 * rows * a * b, 4.0 * rows * (a + b)

    def add(*parts):
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    gather = (0.0, 8.0 * e * h)  # one d=h gather or scatter over the edges
    elem = (0.0, 8.0 * n * h)  # one elementwise op on node states
    if kind in ("gcn", "dgl_gcn"):
        layer = add(mm(n, h, h), gather, gather, elem, elem)
    elif kind in ("sage", "dgl_sage"):
        layer = add(mm(n, h, h), mm(n, h, h), gather, gather, elem, elem, elem)
    elif kind == "gin":
        layer = add(mm(n, h, h), mm(n, h, h), gather, gather, elem, elem, elem, elem)
    elif kind == "gat":
        layer = add(mm(n, h, h), gather, gather, gather, gather, elem, elem, elem, elem)
    elif kind == "deepgcn":
        # GENConv: message relu(x_j)+eps, softmax aggregation (exp, segment max/sum, mul), MLP h->2h->h with
        # norm; block: norm, relu, residual.
        layer = add(mm(n, h, 2 * h), mm(n, 2 * h, h), *[gather] * 6, *[elem] * 10)
    elif kind == "moe_gnn":
        k = enc.opt("top_k")
        ne = enc.opt("num_experts")
        router = mm(n, h, ne)
        if enc.opt("expert") == "conv":
            expert = add(mm(k * n, h, h), mm(k * n, h, h), gather, gather, (0.0, 8.0 * k * n * h * 3))
            layer = add(router, expert, *[elem] * 6)
        else:
            f = enc.opt("ffn_hidden") or 2 * h
            conv = add(mm(n, h, h), *[gather] * 6, *[elem] * 6)
            ffn = add(mm(k * n, h, 2 * f), mm(k * n, f, h), (0.0, 8.0 * k * n * (2 * f + 2 * h)))
            layer = add(router, conv, ffn, *[elem] * 6)
    elif kind == "dag":
        # Per sweep: scores [E, 2h] x [2h, 2] and [N, 2h] x [2h, 2] (attention folded into the weights), the
        # aggregated inputs times the keys' weights per target ([N, 2h] x [2h, h] and [N, h] x [h, h]), two GRU
        # cells (input 2h, hidden h), two-head segment softmax and sum, state gathers/writes.
        gru = add(mm(n, 2 * h, 3 * h), mm(n, h, 3 * h), (0.0, 4.0 * n * 3 * h * 6))
        sweep = add(
            mm(e, 2 * h, 2),
            mm(n, 2 * h, 2),
            mm(n, 2 * h, h),
            mm(n, h, h),
            gru,
            gru,
            (0.0, 8.0 * e * 2 * h * 4),
            (0.0, 8.0 * n * 2 * h * 3),
        )
        init_out = add(mm(n, h, 2 * h), mm(n, 2 * h, h))
        sweeps = 2 if enc.reverse_cell is not None else 1
        fwd = add(*[sweep] * sweeps)
        flops = 4 * fwd[0] + 3 * init_out[0]
        return flops * L, (4 * fwd[1] + 3 * init_out[1]) * L
    else:
        raise ValueError(kind)
    return 3 * layer[0] * L, 3 * layer[1] * L


# ----------------------------------------------------------------------------------------------- timing
def time_fwd_bwd(enc, data, device, amp: bool, reps: int, warmup: bool = True) -> float:
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = enc(data)
            loss = out.node.float().square().mean() + out.graph.float().mean() + enc.aux_loss()
        loss.backward()
        enc.zero_grad(set_to_none=True)

    if warmup:  # also builds and caches the level schedule; skipped on huge graphs where one pass is minutes
        # Two steps: the tuned heap settles into its steady layout only after the second (a 100k-AND deepgcn
        # step faulted 250k pages after one warm-up step and 1 page after two).
        for _ in range(2):
            step()
            sync(device)
    f0 = page_faults()
    best = best_time(step, device, reps)
    return best, (page_faults() - f0) / reps


def best_time(fn, device: torch.device, reps: int) -> float:
    """Best of ``reps``: process CPU time on CPU (fair on a shared machine), wall time on a GPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best = math.inf
    for _ in range(reps):
        t = clock()
        fn()
        sync(device)
        best = min(best, clock() - t)
    return best


def time_forward(enc, data, device, amp: bool) -> float:
    """One eval-mode forward without autograd (what embedding a large AIG costs)."""
    was = enc.training
    enc.eval()

    def fwd():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            enc(data)

    try:
        wall = time.perf_counter()
        cpu = best_time(fwd, device, 1)
        return cpu, time.perf_counter() - wall
    finally:
        enc.train(was)


def print_profile(enc, data, device, amp: bool, forward_only: bool, top: int) -> None:
    """Top ``top`` ops by self CPU time of one pass, with their share of the pass (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    was = enc.training
    if forward_only:
        enc.eval()
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            if forward_only:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    enc(data)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = enc(data)
                    loss = out.node.float().square().mean() + out.graph.float().mean()
                loss.backward()
                enc.zero_grad(set_to_none=True)
    finally:
        enc.train(was)
    events = sorted(prof.key_averages(), key=lambda ev: ev.self_cpu_time_total, reverse=True)
    total = sum(ev.self_cpu_time_total for ev in events) or 1.0
    tops = ", ".join(f"{ev.key} {100 * ev.self_cpu_time_total / total:.0f}%" for ev in events[:top])
    print(f"#   profile ({'no-grad forward' if forward_only else 'fwd+bwd'}): {tops}", flush=True)


def print_fit(name: str, series: list[tuple[int, float]]) -> None:
    """Least-squares exponent of time vs nodes (log-log), over the whole series and over >= 50k nodes."""
    if len(series) < 3:
        return
    xs = np.log([s[0] for s in series])
    ys = np.log([s[1] for s in series])
    big = [i for i, s in enumerate(series) if s[0] >= 50_000]
    slope = np.polyfit(xs, ys, 1)[0]
    tail = np.polyfit(xs[big], ys[big], 1)[0] if len(big) >= 2 else float("nan")
    print(f"{name:<14} time ~ nodes^{slope:.2f} over the series (^{tail:.2f} for >= 50k nodes)", flush=True)


def reference_series(graphs: list[tuple[str, Batch]], device: torch.device, hidden: int, reps: int) -> None:
    """Two plain torch passes per graph, fitted like the encoders: what the machine's memory hierarchy alone makes
    of the growth from 10k to 1M nodes.

    ``gather+scatter`` is one message pass of width ``hidden`` (``out.index_add_(0, dst, x[src])``), the access
    pattern every encoder's aggregation has; ``matmul`` is ``x @ W`` with ``W`` [hidden, hidden], streamed and
    cache-friendly. When even the gather's exponent is above 1, an encoder's exponent above 1 is the fanin rows
    falling out of cache (L2 → L3 → DRAM), not work that grows faster than the graph."""
    rows = {"gather+scatter": [], "matmul": []}
    w = torch.randn(hidden, hidden, device=device)
    for gname, data in graphs:
        data = data.to(device)
        n = int(data.num_nodes)
        src, dst = data.edge_index
        x = torch.randn(n, hidden, device=device)
        out = torch.empty_like(x)

        def gather_scatter(x=x, out=out, src=src, dst=dst):
            out.zero_()
            out.index_add_(0, dst, x.index_select(0, src))

        def matmul(x=x, out=out):
            torch.mm(x, w, out=out)

        for label, fn in (("gather+scatter", gather_scatter), ("matmul", matmul)):
            fn()  # warm-up: the output's pages are faulted in once, as in an encoder's steady state
            t = best_time(fn, device, max(reps, 3))
            rows[label].append((n, t))
            print(
                f"{'ref ' + label:<18} {gname:<22} {n:>9} {t * 1e3:>9.2f} ms {t / n * 1e9:>8.2f} ns/node",
                flush=True,
            )
    for label, series in rows.items():
        print_fit("ref " + label, series)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, four encoders")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--encoders", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--sizes", default=None, help="comma-separated AND counts of the generated series")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-shared", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time each encoder under torch.compile(dynamic=True): a '+compile' row after each eager row",
    )
    ap.add_argument("--mgvga", type=Path, default=MGVGA_SNAPSHOT, help="MGVGA checkout or bare git snapshot")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--forward", action="store_true", help="also time one no-grad forward per graph")
    ap.add_argument(
        "--warmup-huge",
        action="store_true",
        help="give graphs over 300k nodes a warm-up step too (steady-state time and faults, one more step)",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also time a plain gather + scatter-add pass and a dense matmul over each generated graph (the "
        "memory hierarchy's own growth with size, fitted like the encoders)",
    )
    ap.add_argument(
        "--forward-only-from",
        type=int,
        default=None,
        help="from this many nodes up, time only the no-grad forward (fwd+bwd column shows nan)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after each row, print the N ops with the most self CPU time (torch.profiler) of one more pass: the "
        "no-grad forward for forward-only rows, else a fwd+bwd step (compiled passes show under their labels)",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    tuned = tune_malloc() if args.malloc == "tuned" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.encoders.split(",") if args.encoders else (QUICK if args.quick else list(ENCODERS))
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([1_000, 4_000, 16_000] if args.quick else [1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000])
    )
    dtype = torch.bfloat16 if args.amp else torch.float32
    flops_peak = peak_matmul_flops(device, dtype)
    bw_peak = peak_copy_bandwidth(device)
    print(
        f"# device {device} threads {torch.get_num_threads()} hidden {args.hidden} amp {args.amp} "
        f"malloc {'tuned' if tuned else 'default'}"
    )
    print(
        f"# reference: dense matmul {flops_peak / 1e9:.1f} GFLOP/s ({dtype}), copy {bw_peak / 1e9:.1f} GB/s"
    )

    graphs: list[tuple[str, Batch]] = []
    if not args.no_shared:
        b = shared_batch(args.quick)
        if b is not None:
            graphs.append((f"shared({b.num_graphs} circuits)", b))
    for s in sizes:
        graphs.append((f"random{s}", Batch.from_data_list([aig_to_data(random_aig(s, seed=s))])))

    header = (
        f"{'encoder':<14} {'graph':<22} {'nodes':>9} {'edges':>9} {'levels':>6} {'time s':>8} {'nodes/s':>10} "
        f"{'FLOP/node':>10} {'B/node':>9} {'GFLOP/s':>8} {'GB/s':>7} {'bound':>7} {'of bound':>8} {'RSS GiB':>7} "
        f"{'faults':>9} {'fwd s':>7} {'fwd wall':>8}"
    )
    print(header, flush=True)
    times: dict[tuple[str, str], float] = {}
    for name in names:
        kind, over = ENCODERS[name] if name != "mgvga" else ("deepgcn", {"options": {"fused": False}})
        try:
            if name == "mgvga":
                enc = load_mgvga(args.mgvga, args.hidden).to(device)
                enc.config = build_encoder("deepgcn", hidden=args.hidden).config  # for the cost model
            else:
                enc = build_encoder(kind, hidden=args.hidden, **over).to(device)
        except Exception as exc:  # an optional backend (dgl) or the peer's snapshot missing: say so, go on
            print(f"{name:<14} skipped: {exc}")
            continue
        series: list[tuple[int, float]] = []
        compiled = torch.compile(enc, dynamic=True) if args.compile else None
        for gname, data in graphs:
            data = data.to(device)
            n, e = int(data.num_nodes), int(data.edge_index.size(1))
            levels = level_schedule(data).num_levels
            huge = n > 300_000
            flops, nbytes = cost_model(name, kind, enc, n, e)
            t_flops, t_bytes = flops / flops_peak, nbytes / bw_peak
            bound = "compute" if t_flops >= t_bytes else "memory"
            variants = [(name, enc)] + ([(f"{name}+compile", compiled)] if compiled is not None else [])
            for label, model in variants:
                # the warm-up call also absorbs compilation, so compiled rows time steady-state steps only
                reps = 1 if huge else args.reps
                fwd_only = args.forward_only_from is not None and n >= args.forward_only_from
                f0 = page_faults()
                if fwd_only:
                    t, faults = float("nan"), float("nan")
                else:
                    t, faults = time_fwd_bwd(
                        model, data, device, args.amp, reps, warmup=args.warmup_huge or not huge
                    )
                t_fwd, wall_fwd = (
                    time_forward(model, data, device, args.amp)
                    if args.forward or fwd_only
                    else (float("nan"), float("nan"))
                )
                if fwd_only:
                    faults = page_faults() - f0
                times[(label, gname)] = t
                print(
                    f"{label:<14} {gname:<22} {n:>9} {e:>9} {levels:>6} {t:>8.3f} {n / t:>10.3g} "
                    f"{flops / n:>10.3g} {nbytes / n:>9.3g} {flops / t / 1e9:>8.2f} {nbytes / t / 1e9:>7.2f} "
                    f"{bound:>7} {max(t_flops, t_bytes) / t:>8.2f} {peak_rss_gib():>7.2f} {faults:>9.3g} {t_fwd:>7.2f} {wall_fwd:>8.2f}",
                    flush=True,
                )
                if args.profile:
                    print_profile(model, data, device, args.amp, fwd_only, args.profile)
                if gname.startswith("random") and model is enc and not fwd_only:
                    series.append((n, t))
        print_fit(name, series)
        del enc
    if args.reference:
        reference_series(
            [(g, d) for g, d in graphs if g.startswith("random")], device, args.hidden, args.reps
        )
    for label, _ in ENCODERS.items():
        for gname, _ in graphs:
            if label != "mgvga" and (label, gname) in times and ("mgvga", gname) in times:
                ratio = times[("mgvga", gname)] / times[(label, gname)]
                print(f"# {label} vs MGVGA's encoder on {gname}: {ratio:.2f}x faster (fwd+bwd, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
