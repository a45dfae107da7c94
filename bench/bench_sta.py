"""Static timing of mapped netlists: circuitml.sta.analyze (level-vectorized numpy) vs a per-net Python STA.

    python bench/bench_sta.py [--liberty LIB] [--repeat 3] [DESIGN ...]

Each design is mapped once by ABC (``strash; dch; map -B 0.9; topo``) to the library (default: the synthetic test
library ``tests/data/circuitml_nldm_test.lib``); then both timers run on the same netlist and must give the same
area and delay. The reference walks the netlist net by net with memoized recursion and scalar table lookups — what
a straightforward Python STA does. Times are best-of-``repeat`` process CPU time. When a system ABC is on PATH,
its ``stime`` (C) on the same netlist is timed as a second reference (whole process, including reading the
library and the netlist) and its printed delay is shown.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from circuitml.datasets.qor import abc_backend, run_recipes

from circuitml.formats import read_circuit
from circuitml.liberty import read_liberty
from circuitml.sta import analyze

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_graph import best_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT = [
    SHARED / "ispras__hdl-benchmarks/iscas85/bench/c880.bench",
    SHARED / "ispras__hdl-benchmarks/iscas85/bench/c6288.bench",
    SHARED / "ispras__hdl-benchmarks/iscas85/bench/c7552.bench",
    SHARED / "NYU-MLDA__OpenABC/bench_openabcd/spi_orig.bench",
    SHARED / "lsils__benchmarks/arithmetic/sin.aig",
]


def naive_sta(
    net, lib, input_slew: float = 0.0, output_load: float = 0.0, wire_load: bool = True
) -> tuple[float, float]:
    """Area and delay (ps) by memoized recursion over nets with scalar table lookups (the tests' reference too)."""

    def root(n: str) -> str:
        while n in net.buffers:
            n = net.buffers[n]
        return n

    drivers, load, fanout = {}, {}, {}
    for cname, pins in net.gates:
        cell = lib.cells[cname]
        for p, n in pins.items():
            n = root(n)
            if p in cell.outputs:
                drivers[n] = (cell, pins, p)
            else:
                rise, fall = cell.input_rise_fall[p]
                old = load.get(n, (0.0, 0.0))
                load[n] = (old[0] + rise, old[1] + fall)
                fanout[n] = fanout.get(n, 0) + 1
    for n in map(root, net.outputs):
        old = load.get(n, (0.0, 0.0))
        load[n] = (old[0] + output_load, old[1] + output_load)
        fanout[n] = fanout.get(n, 0) + 1
    area = sum(lib.cells[c].area for c, _ in net.gates)
    model = lib.wire_load_for(area) if wire_load else None
    if model is not None:
        caps = model.caps(max(fanout.values(), default=0))
        for n in set(drivers) | set(net.inputs):
            w = caps[min(fanout.get(n, 0), len(caps) - 1)]
            old = load.get(n, (0.0, 0.0))
            load[n] = (old[0] + w, old[1] + w)
    memo: dict[str, tuple[float, float, float, float]] = {}
    sys.setrecursionlimit(max(10000, 4 * len(net.gates)))

    def at(n: str):
        n = root(n)
        if n in memo:
            return memo[n]
        if n in net.inputs:
            memo[n] = (0.0, 0.0, input_slew, input_slew)
            return memo[n]
        if n in net.constants:
            memo[n] = (0.0, 0.0, 0.0, 0.0)
            return memo[n]
        cell, pins, out = drivers[n]
        cap_r, cap_f = load.get(n, (0.0, 0.0))
        ar = af = sr = sf = -np.inf
        for arc in cell.arcs[out]:
            ir, if_, isr, isf = at(pins[arc.related_pin])
            pairs = []  # (arrival, slew) of the input edges that make the output rise, then fall
            if arc.sense != "negative_unate":
                pairs.append((ir, isr, if_, isf))
            if arc.sense != "positive_unate":
                pairs.append((if_, isf, ir, isr))
            for a_r, s_r, a_f, s_f in pairs:
                ar = max(ar, a_r + float(arc.cell_rise.lookup(s_r, cap_r)[0]))
                sr = max(sr, float(arc.rise_transition.lookup(s_r, cap_r)[0]))
                af = max(af, a_f + float(arc.cell_fall.lookup(s_f, cap_f)[0]))
                sf = max(sf, float(arc.fall_transition.lookup(s_f, cap_f)[0]))
        memo[n] = (ar, af, sr, sf)
        return memo[n]

    delay = max(max(at(n)[:2]) for n in net.outputs) * lib.time_unit_ps
    return area, delay


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("designs", nargs="*", type=Path)
    ap.add_argument("--liberty", type=Path, default=ROOT / "tests/data/circuitml_nldm_test.lib")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    designs = args.designs or [p for p in DEFAULT if p.is_file()]
    lib = read_liberty(args.liberty)
    system_abc = next((shutil.which(n) for n in ("berkeley-abc", "yosys-abc") if shutil.which(n)), None)
    print(
        f"library {lib.name}; ABC for mapping: {abc_backend()[0]}; system ABC stime: {system_abc or 'none'}"
    )
    head = f"{'design':<14}{'gates':>7}{'ours ms':>9}{'naive ms':>10}{'ratio':>7}"
    print(head + (f"{'abc stime ms':>14}{'abc delay':>11}" if system_abc else "") + f"{'delay ps':>11}")
    tot_ours = tot_naive = 0.0
    for path in designs:
        aig = read_circuit(path)
        with tempfile.TemporaryDirectory() as tmp:
            (o,) = run_recipes(
                aig,
                np.zeros((1, 0), dtype=np.int8),
                liberty=lib,
                keep_aigs=True,
                map_script="dch; map -B 0.9; topo",
            )
            net = o.netlist
            t_ours, rep = best_cpu(lambda net=net: analyze(net, lib), args.repeat)
            t_naive, (area, delay) = best_cpu(lambda net=net: naive_sta(net, lib), args.repeat)
            assert abs(area - rep.area) < 1e-6 * max(1.0, area) and abs(delay - rep.delay) < 1e-6 * max(
                1.0, delay
            )
            row = f"{path.stem:<14}{rep.gates:>7}{1e3 * t_ours:>9.1f}{1e3 * t_naive:>10.1f}{t_naive / t_ours:>7.1f}"
            tot_ours, tot_naive = tot_ours + t_ours, tot_naive + t_naive
            if system_abc:
                blif = Path(tmp) / "m.blif"
                lines = [
                    f".gate {c} " + " ".join(f"{p}={n}" for p, n in pins.items()) for c, pins in net.gates
                ]
                cover = [f".names {s} {d}\n1 1" for d, s in net.buffers.items()]
                cover += [f".names {n}\n{v}" if v else f".names {n}" for n, v in net.constants.items()]
                blif.write_text(
                    f".model m\n.inputs {' '.join(net.inputs)}\n.outputs {' '.join(net.outputs)}\n"
                    + "\n".join(lines + cover)
                    + "\n.end\n"
                )
                shutil.copyfile(args.liberty, Path(tmp) / "cells.lib")
                cmd = [system_abc, "-c", "read_lib -w cells.lib; read m.blif; stime"]
                best, text = float("inf"), ""
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    text = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True).stdout
                    best = min(best, time.perf_counter() - t)
                m = re.search(r"Delay\s*=\s*(?:\x1b\[[0-9;]*m)?\s*([0-9.]+)\s*ps", text)
                row += f"{1e3 * best:>14.1f}{float(m.group(1)) if m else float('nan'):>11.2f}"
            print(row + f"{rep.delay:>11.2f}")
    print(f"{'total':<14}{'':>7}{1e3 * tot_ours:>9.1f}{1e3 * tot_naive:>10.1f}{tot_naive / tot_ours:>7.1f}")


if __name__ == "__main__":
    main()
