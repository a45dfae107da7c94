"""Every third-party circuit in ../shared/data parses with the counts its header or gate list implies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circuitml.formats import aiger_bytes, bench_text, parse_aiger, parse_bench, read_circuit
from tests.conftest import shared_files

AIG_FILES = shared_files("lsils__benchmarks/*/*.aig") + shared_files(
    "lsils__mockturtle/experiments/benchmarks/*.aig"
)
OPENABC_BENCH = shared_files("NYU-MLDA__OpenABC/bench_openabcd/*.bench")
ISCAS85_BENCH = shared_files("ispras__hdl-benchmarks/iscas85/bench/*.bench")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", AIG_FILES, ids=_ids(AIG_FILES))
def test_aiger_header_counts_and_exact_round_trip(path: Path) -> None:
    data = path.read_bytes()
    m, i, l, o, a = map(int, data[: data.index(b"\n")].split()[1:6])
    aig = read_circuit(path)
    aig.validate()
    assert (aig.num_inputs, aig.num_latches, aig.num_outputs, aig.num_ands) == (i, l, o, a)
    assert aig.num_nodes == m + 1
    assert aiger_bytes(aig) == data  # byte-identical: deltas, symbols and comments all kept
    ascii_back = parse_aiger(aiger_bytes(aig, binary=False))
    assert ascii_back.same_structure(aig) and ascii_back.pi_names == aig.pi_names


def _bench_counts(text: str) -> tuple[int, int, dict[str, int], int]:
    inputs = len(re.findall(r"^\s*INPUT\s*\(", text, re.M | re.I))
    outputs = len(re.findall(r"^\s*OUTPUT\s*\(", text, re.M | re.I))
    kinds: dict[str, int] = {}
    implied = 0
    for gate, args in re.findall(r"=\s*([A-Za-z]+)\s*\(([^)]*)\)", text):
        gate = gate.upper()
        kinds[gate] = kinds.get(gate, 0) + 1
        n = len(args.split(","))
        implied += {
            "AND": n - 1,
            "NAND": n - 1,
            "OR": n - 1,
            "NOR": n - 1,
            "XOR": 3 * (n - 1),
            "XNOR": 3 * (n - 1),
        }.get(gate, 0)
    return inputs, outputs, kinds, implied


@pytest.mark.parametrize("path", OPENABC_BENCH, ids=_ids(OPENABC_BENCH))
def test_openabc_bench_counts(path: Path) -> None:
    inputs, outputs, kinds, _ = _bench_counts(path.read_text())
    assert set(kinds) <= {"AND", "NOT", "BUFF"}  # ABC writes AIGs as AND/NOT netlists
    aig = read_circuit(path)
    assert (aig.num_pis, aig.num_pos) == (inputs, outputs)
    assert aig.num_ands == kinds["AND"]  # one AIG node per AND gate: nothing merged, nothing lost


@pytest.mark.parametrize("path", ISCAS85_BENCH, ids=_ids(ISCAS85_BENCH))
def test_iscas85_bench_counts(path: Path) -> None:
    inputs, outputs, kinds, implied = _bench_counts(path.read_text())
    aig = read_circuit(path)
    assert (aig.num_pis, aig.num_pos, aig.num_latches) == (inputs, outputs, 0)
    # every multi-input gate becomes (fanins - 1) ANDs, XORs 3 per pair; strashing can only merge
    assert 0 < aig.num_ands <= implied
    back = parse_bench(bench_text(aig))
    assert (back.num_pis, back.num_pos, back.num_ands) == (aig.num_pis, aig.num_pos, aig.num_ands)


def test_iscas89_sequential_bench_cuts_flops(shared_data: Path) -> None:
    path = shared_data / "ispras__hdl-benchmarks/iscas89/bench/s27.bench"
    inputs, outputs, kinds, _ = _bench_counts(path.read_text())
    aig = read_circuit(path)
    assert aig.num_latches == kinds["DFF"] == 3
    assert (aig.num_inputs, aig.num_outputs) == (inputs, outputs)
