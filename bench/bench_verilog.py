"""Verilog → AIG throughput: one Yosys process per design against batches of designs per process.

Writes ``--designs`` small parametrized RTL modules (adders, comparators, parity trees, registered
counters) into a temporary folder and measures, in the same run:

* ``single`` — :func:`circuitml.verilog.verilog_to_aig` once per design (one Yosys process each);
* ``batched`` — :func:`circuitml.verilog.verilog_to_aig_many` (``--batch`` designs per Yosys process);
* ``empty`` — a Yosys process that runs only ``help`` (the fixed start-up cost);
* the token stream (:func:`tokenize_verilog` + :func:`encode_tokens`) per design;
* with ``../shared/data`` present, pyverilog's :func:`parse_verilog` and :func:`verilog_to_aig` on the
  largest EPFL netlist (voter.v, 610 KB).

It checks that both paths give identical AIGs before printing seconds per design and the ratio.

    python bench/bench_verilog.py                 # 40 designs, batches of 20
    python bench/bench_verilog.py --designs 8     # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from circuitml.verilog import (
    encode_tokens,
    parse_verilog,
    tokenize_verilog,
    verilog_to_aig,
    verilog_to_aig_many,
)
from circuitml.yosys import run_yosys

TEMPLATES = {
    "adder": "module adder_w{w}(input [{m}:0] a, input [{m}:0] b, input cin, output [{m}:0] s, output cout);\n"
    "  assign {{cout, s}} = a + b + cin;\nendmodule\n",
    "cmp": "module cmp_w{w}(input [{m}:0] a, input [{m}:0] b, output lt, output eq, output gt);\n"
    "  assign lt = a < b;\n  assign eq = a == b;\n  assign gt = a > b;\nendmodule\n",
    "parity": "module parity_w{w}(input [{m}:0] d, output p, output [{m}:0] g);\n"
    "  assign p = ^d;\n  assign g = d ^ (d >> 1);\nendmodule\n",
    "counter": "module counter_w{w}(input clk, input rst, input en, output reg [{m}:0] q, output wrap);\n"
    "  always @(posedge clk) if (rst) q <= 0; else if (en) q <= q + 1'b1;\n"
    "  assign wrap = en & (&q);\nendmodule\n",
}


def write_designs(folder: Path, count: int) -> list[Path]:
    paths = []
    kinds = sorted(TEMPLATES)
    for k in range(count):
        kind = kinds[k % len(kinds)]
        width = 2 + (k // len(kinds)) % 15
        path = folder / f"{kind}_w{width}_{k}.v"
        path.write_text(TEMPLATES[kind].format(w=width, m=width - 1))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_designs(Path(tmp), args.designs)
        run_yosys("help")  # warm the WebAssembly cache

        empty = []
        for _ in range(5):
            t = time.perf_counter()
            run_yosys("help")
            empty.append(time.perf_counter() - t)

        t = time.perf_counter()
        single = [verilog_to_aig(p) for p in paths]
        t_single = time.perf_counter() - t

        t = time.perf_counter()
        batched = verilog_to_aig_many(paths, batch_size=args.batch)
        t_batched = time.perf_counter() - t

        for p, a, b in zip(paths, single, batched, strict=True):
            if not (a.same_structure(b) and a.pi_names == b.pi_names and a.po_names == b.po_names):
                raise SystemExit(f"batched and single results differ on {p.name}")

        tok = []
        for p in paths:
            text = p.read_text()
            t = time.perf_counter()
            encode_tokens(tokenize_verilog(text))
            tok.append(time.perf_counter() - t)

    n = len(paths)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n} designs, load average {load:.1f}")
    print(f"empty Yosys run      {statistics.median(empty):.3f} s (median of 5)")
    print(f"single               {t_single / n:.3f} s/design")
    print(
        f"batched ({args.batch:>3}/proc)   {t_batched / n:.3f} s/design   speed-up x{t_single / t_batched:.2f}"
    )
    print(f"token stream         {statistics.median(tok) * 1e3:.3f} ms/design (median)")

    voter = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lsils__benchmarks"
    voter = voter / "random_control" / "voter.v"
    if voter.is_file():
        t = time.perf_counter()
        parse_verilog(voter)
        t_parse = time.perf_counter() - t
        t = time.perf_counter()
        verilog_to_aig(voter)
        t_synth = time.perf_counter() - t
        print(f"voter.v (610 KB)     pyverilog parse {t_parse:.2f} s, Yosys -> AIG {t_synth:.2f} s")


if __name__ == "__main__":
    main()
