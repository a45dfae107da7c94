"""Coverage of real RTL: every design that raw Yosys turns into an AIG, circuitml converts too.

For each design (a ``.v``/``.sv`` file, or a folder of files forming one design, with ``top`` from
``--top folder=module``), runs in the same process:

Folders named in ``--top`` are one multi-file design each; other folders give one design per file.

* ``raw yosys`` — Yosys alone, reading every file as SystemVerilog (``read_verilog -sv``, which accepts plain
  Verilog too), ``hierarchy -auto-top`` (or the given top), then the AIG flow of :mod:`circuitml.verilog.synth`
  ending in ``write_aiger``;
* ``circuitml`` — :func:`circuitml.verilog.verilog_to_aig` (what ``convert`` and ``data build`` run).

Prints one row per design where the two disagree and the counts; the target is zero designs that raw Yosys
converts and circuitml does not.

    python bench/bench_rtl_coverage.py ../shared/data/ispras__hdl-benchmarks/iscas85/verilog
    python bench/bench_rtl_coverage.py ../shared/data/NYU-MLDA__OpenABC/bench_rtl/src/* \\
        --top sasc=sasc_top --top ss_pcm=pcm_slv_top
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from circuitml.errors import CircuitmlError
from circuitml.verilog import verilog_to_aig
from circuitml.yosys import run_yosys

try:
    from circuitml.verilog import SynthesisWarning
except ImportError:  # an older circuitml (to measure before/after): it issues no such warnings
    SynthesisWarning = UserWarning

FLOW = (
    "proc; flatten; memory; opt_clean; techmap; opt -fast; async2sync; dffunmap; setundef -undriven -zero; "
    "aigmap; opt_clean; write_aiger out.aig"
)


def designs(args: list[str], tops: dict[str, str]) -> list[Path]:
    """Files, and the folders named in ``--top`` as one multi-file design each."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir() and p.name in tops:
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix in (".v", ".sv")))
        else:
            out.append(p)
    return out


def raw_yosys(design: Path, top: str | None) -> str | None:
    # a folder's files side by side, so its `include "x_defines.v" lines resolve as in the original tree
    files = sorted(design.glob("*.v")) if design.is_dir() else [design]
    reads = "\n".join(f"read_verilog -sv -Isrc src/{f.name}" for f in files)
    hier = f"hierarchy -top {top}" if top else "hierarchy -auto-top"
    script = f"{reads}\n{hier}\n{FLOW}"
    res = run_yosys(
        script,
        files={f"src/{f.name}": f.read_bytes() for f in files},
        outputs=["out.aig"],
        timeout=600,
        allow_failure=True,
    )
    return res.error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--top", action="append", default=[], help="folder=module")
    args = ap.parse_args()
    tops = dict(t.split("=", 1) for t in args.top)
    both = raw_only = ours_only = neither = 0
    for design in designs(args.sources, tops):
        top = tops.get(design.name)
        raw_err = raw_yosys(design, top)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SynthesisWarning)
                verilog_to_aig(design, top=top, timeout=600)
            our_err = None
        except CircuitmlError as exc:
            our_err = str(exc)
        if raw_err is None and our_err is None:
            both += 1
        elif raw_err is None:
            raw_only += 1
            print(f"raw Yosys only: {design}: {our_err[:160]}")
        elif our_err is None:
            ours_only += 1
            print(f"circuitml only: {design}: {raw_err[:160]}")
        else:
            neither += 1
            print(f"neither: {design}: {our_err[:160]}")
    total = both + raw_only + ours_only + neither
    print(
        f"{total} designs: both convert {both}, raw Yosys only {raw_only} (target 0), circuitml only {ours_only}, "
        f"neither {neither}"
    )


if __name__ == "__main__":
    main()
