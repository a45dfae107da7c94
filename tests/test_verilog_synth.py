"""Verilog → AIG through Yosys: semantics against hand-built references, port order and names, latches,
errors, and equivalence with the third-party EPFL / ISCAS85 circuits (ports matched by order or name)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import CircuitFormatError, SynthesisError
from circuitml.formats import read_circuit
from circuitml.sim import equivalent
from circuitml.verilog import (
    VerilogFallbackWarning,
    parse_verilog,
    verilog_text_to_aig,
    verilog_to_aig,
    verilog_to_aig_many,
)
from tests.conftest import OPENABC_TOPS, SHARED_DATA, shared_files

MIXED = """
module mixed(input [3:0] a, input [8:5] b, input [0:1] s, output [4:0] sum, output [0:1] sel, output eq, output k);
  assign sum = a + b;
  assign sel = s ^ {a[0], b[5]};
  assign eq = (a == b);
  assign k = 1'b1;
endmodule
"""


def _bits(b: AIGBuilder, name: str, width: int) -> list[int]:
    return [b.add_pi(f"{name}[{k}]") for k in range(width)]


def _mixed_reference() -> AIG:
    b = AIGBuilder("mixed")
    a = _bits(b, "a", 4)
    bb = [b.add_pi(f"b[{5 + k}]") for k in range(4)]
    s1, s0 = b.add_pi("s[1]"), b.add_pi("s[0]")  # s[0:1]: bit 0 of the vector (its LSB) is s[1]
    carry, total = 0, []
    for x, y in zip(a, bb, strict=True):
        total.append(b.xor_many([x, y, carry]))
        carry = b.or_(b.and_(x, y), b.and_(carry, b.xor_(x, y)))
    for k, lit in enumerate(total + [carry]):
        b.add_po(lit, f"sum[{k}]")
    # {a[0], b[5]}: b[5] is the LSB, lands on sel's LSB which is sel[1]
    b.add_po(b.xor_(s1, bb[0]), "sel[1]")
    b.add_po(b.xor_(s0, a[0]), "sel[0]")
    b.add_po(b.and_many([b.xor_(x, y) ^ 1 for x, y in zip(a, bb, strict=True)]), "eq")
    b.add_po(1, "k")
    return b.build()


def test_combinational_semantics_port_order_and_names(tmp_path: Path) -> None:
    path = tmp_path / "mixed.v"
    path.write_text(MIXED)
    aig = verilog_to_aig(path)
    ref = _mixed_reference()
    assert aig.name == "mixed" and aig.num_latches == 0
    assert aig.pi_names == ref.pi_names
    assert aig.po_names == ref.po_names
    assert equivalent(aig, ref, method="exhaustive").equal


COUNTER = """
module counter(input clk, input rst, input en, output [2:0] q, output wrap);
  reg [2:0] c = 3'd5;
  always @(posedge clk) begin
    if (rst) c <= 3'd0;
    else if (en) c <= c + 3'd1;
  end
  assign q = c;
  assign wrap = en & (c == 3'd7);
endmodule
"""


def _counter_reference() -> AIG:
    b = AIGBuilder("counter")
    clk, rst, en = b.add_pi("clk"), b.add_pi("rst"), b.add_pi("en")
    del clk  # the clock is implicit in AIGER; it stays an (unused) input port
    c = [b.add_pi(f"c[{k}]") for k in range(3)]
    for k in range(3):
        b.add_po(c[k], f"q[{k}]")
    b.add_po(b.and_(en, b.and_many(c)), "wrap")
    inc, carry = [], en
    for k in range(3):
        inc.append(b.xor_(c[k], carry))
        carry = b.and_(carry, c[k])
    for k in range(3):
        b.add_po(b.and_(rst ^ 1, inc[k]), f"c[{k}]$next")
    return b.build(num_latches=3)


def test_sequential_latches_are_cut_with_their_reset_values(tmp_path: Path) -> None:
    path = tmp_path / "counter.v"
    path.write_text(COUNTER)
    aig = verilog_to_aig(path)
    assert aig.num_latches == 3 and aig.num_inputs == 3 and aig.num_outputs == 4
    assert aig.pi_names[:3] == ["clk", "rst", "en"]
    assert aig.po_names[:4] == ["q[0]", "q[1]", "q[2]", "wrap"]
    # latches come out in Yosys' order: match them to the reference by their initial values 5 = 0b101
    assert sorted(aig.latch_init.tolist()) == [0, 1, 1]
    ref = _counter_reference()
    order = _latch_order(aig)
    assert equivalent(_permute_latches(aig, order), ref, method="exhaustive").equal


def _latch_order(aig: AIG) -> list[int]:
    """Which latch of ``aig`` is counter bit k: the one whose next state depends on exactly k+1 latches."""
    from circuitml.sim import truth_tables

    tt = truth_tables(aig)
    n_in, n_out, n_lat = aig.num_inputs, aig.num_outputs, aig.num_latches
    support = []
    for j in range(n_lat):
        row = tt[n_out + j]
        deps = 0
        for v in range(n_in, n_in + n_lat):
            bits = np.unpackbits(row.view(np.uint8), bitorder="little")[: 1 << aig.num_pis]
            idx = np.arange(1 << aig.num_pis)
            if (bits[idx] != bits[idx ^ (1 << v)]).any():
                deps += 1
        support.append(deps)
    return list(np.argsort(support, kind="stable"))


def _permute(aig: AIG, pi_perm: np.ndarray, po_perm: np.ndarray) -> AIG:
    """Same circuit with PI k = old PI pi_perm[k] and PO k = old PO po_perm[k]."""
    new_of_old = np.arange(aig.num_nodes, dtype=np.int64)
    new_of_old[1 + np.asarray(pi_perm)] = 1 + np.arange(aig.num_pis)
    inv = np.empty(aig.num_pis, dtype=np.int64)
    inv[np.asarray(pi_perm)] = np.arange(aig.num_pis)

    def relabel(lits: np.ndarray) -> np.ndarray:
        return 2 * new_of_old[lits >> 1] + (lits & 1)

    # AND rows keep their order; fanins only refer to earlier nodes, so topological order is kept
    return AIG(
        num_pis=aig.num_pis,
        ands=relabel(aig.ands),
        pos=relabel(aig.pos[np.asarray(po_perm)]),
        num_latches=aig.num_latches,
        latch_init=aig.latch_init,
        name=aig.name,
    )


def _permute_latches(aig: AIG, order: list[int]) -> AIG:
    n_in, n_out = aig.num_inputs, aig.num_outputs
    pi_perm = np.concatenate([np.arange(n_in), n_in + np.asarray(order)])
    po_perm = np.concatenate([np.arange(n_out), n_out + np.asarray(order)])
    return _permute(aig, pi_perm, po_perm)


def test_text_entry_point_and_uninitialized_latches() -> None:
    src = "module d(input clk, input x, output reg y);\n always @(posedge clk) y <= ~x;\nendmodule\n"
    aig = verilog_text_to_aig(src, filename="d.v")
    assert aig.name == "d" and aig.num_latches == 1
    assert aig.latch_init.tolist() == [-1]
    assert aig.pi_names == ["clk", "x", "y"] and aig.po_names == ["y", "y$next"]
    assert aig.pos.tolist() == [6, 5]  # y is the latch output, its next state is ~x


def test_syntax_error_is_one_line_with_the_users_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.v"
    path.write_text("module bad(input a, output y);\n  assign y = a &;\nendmodule\n")
    with pytest.raises(SynthesisError) as err:
        verilog_to_aig(path, top="bad")
    msg = str(err.value)
    assert "\n" not in msg and f"{path}:2" in msg


def test_missing_file_top_and_inout(tmp_path: Path) -> None:
    with pytest.raises(CircuitFormatError, match="no such file"):
        verilog_to_aig(tmp_path / "nope.v")
    two = tmp_path / "two.v"
    two.write_text(
        "module a(input x, output y); assign y = x; endmodule\nmodule b(input x, output y); endmodule\n"
    )
    with pytest.raises(CircuitFormatError, match="candidates a, b"):
        verilog_to_aig(two)
    with pytest.raises(SynthesisError, match="not found|nope"):
        verilog_to_aig(two, top="nope")
    tri = tmp_path / "tri.v"
    tri.write_text("module t(inout p, input e, input d); assign p = e ? d : 1'bz; endmodule\n")
    with pytest.raises(SynthesisError, match="inout port 'p'"):
        verilog_to_aig(tri)


def test_outputs_wired_straight_to_inputs_keep_their_names() -> None:
    src = (
        "module alias(input a, input [1:0] b, output y, output [1:0] z, output w);\n"
        "  assign y = a;\n  assign z = b;\n  assign w = a & b[0];\nendmodule\n"
    )
    aig = verilog_text_to_aig(src)
    assert aig.pi_names == ["a", "b[0]", "b[1]"] and aig.po_names == ["y", "z[0]", "z[1]", "w"]
    assert aig.pos.tolist() == [2, 4, 6, 8]


def test_batches_match_single_runs_and_isolate_failures(tmp_path: Path) -> None:
    (tmp_path / "mixed.v").write_text(MIXED)
    (tmp_path / "counter.v").write_text(COUNTER)
    (tmp_path / "bad.v").write_text("module bad(input a, output y);\n  assign y = a &;\nendmodule\n")
    (tmp_path / "defs.v").write_text(
        "`define W 3\nmodule w(input [`W:0] a, output y); assign y = ^a; endmodule\n"
    )
    # the second copy of w must not see the first one's `define (defines are reset between designs)
    (tmp_path / "w2.v").write_text(
        "`ifdef W\nmodule w; endmodule\n`else\nmodule w(input a, output y);\n"
        "assign y = ~a; endmodule\n`endif\n"
    )
    items = ["mixed.v", "bad.v", ("counter.v", "counter"), "defs.v", "w2.v", "missing.v"]
    got = verilog_to_aig_many(
        [(tmp_path / i[0], i[1]) if isinstance(i, tuple) else tmp_path / i for i in items]
    )
    assert isinstance(got[1], SynthesisError) and f"{tmp_path / 'bad.v'}:2" in str(got[1])
    assert isinstance(got[5], CircuitFormatError)
    for k in (0, 2, 3, 4):
        single = verilog_to_aig(tmp_path / (items[k][0] if isinstance(items[k], tuple) else items[k]))
        assert got[k].same_structure(single)
        assert got[k].pi_names == single.pi_names and got[k].po_names == single.po_names
    assert got[4].num_pis == 1 and got[4].pos.tolist() == [3]


def test_output_is_strashed_and_canonical() -> None:
    # the same gate written twice, and x & x: Yosys' aigmap keeps both, the AIG must not
    src = "module s(input a, input b, output y, output z, output w);\n  assign y = a & b;\n  assign z = b & a;\n  assign w = (a & a) | 1'b0;\nendmodule\n"
    aig = verilog_text_to_aig(src)
    assert aig.num_ands == 1 and aig.pos.tolist() == [6, 6, 2]
    aig = verilog_text_to_aig(COUNTER)
    assert len(np.unique(aig.ands, axis=0)) == aig.num_ands


# ------------------------------------------------------------------------------------------ mutations

_SEED_SOURCE = COUNTER


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_verilog_raises_only_our_errors(data: st.DataObject) -> None:
    text = _SEED_SOURCE
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["delete", "insert", "truncate", "duplicate"]))
        pos = data.draw(st.integers(0, len(text)))
        if op == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 12)) :]
        elif op == "insert":
            text = (
                text[:pos] + data.draw(st.text(alphabet="();[]{}'`\"=+-&|^~ab01\n", max_size=6)) + text[pos:]
            )
        elif op == "truncate":
            text = text[:pos]
        else:
            text = text[:pos] + text[max(0, pos - 20) : pos] + text[pos:]
    try:
        aig = verilog_text_to_aig(text, filename="mutant.v", timeout=60)
    except (CircuitFormatError, SynthesisError) as exc:
        assert "\n" not in str(exc)
    else:
        aig.validate()


# ------------------------------------------------------------------------------------------ third-party

_SLOW = {"voter", "arbiter", "sin", "max", "bar", "c6288", "c7552", "c5315", "c3540"}


def _params(paths: list[Path]) -> list:
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in _SLOW else []) for p in paths]


@pytest.mark.parametrize("verilog", _params(shared_files("lsils__benchmarks/*/*.v")))
def test_epfl_verilog_equals_its_aig(verilog: Path) -> None:
    ours = verilog_to_aig(verilog)
    ref = read_circuit(verilog.with_suffix(".aig"))
    assert (ours.num_pis, ours.num_pos) == (ref.num_pis, ref.num_pos)
    if ref.pi_names and ref.po_names:  # EPFL .aig files carry the same port names: match them exactly
        assert ours.pi_names == ref.pi_names and ours.po_names == ref.po_names
    assert equivalent(ours, ref).equal


def _by_name(ours: AIG, ref: AIG) -> AIG:
    """``ref`` with PIs/POs reordered to ours, names compared without the Verilog's ``N`` prefix."""

    def key(name: str) -> str:
        # c2670/c7552 name a signal that is both input and output N143_I / N143_O in the Verilog
        return re.sub(r"^N|_[IO]$", "", name)

    pi_index = {key(n): k for k, n in enumerate(ref.pi_names)}
    po_index = {key(n): k for k, n in enumerate(ref.po_names)}
    pi_perm = np.array([pi_index[key(n)] for n in ours.pi_names])
    po_perm = np.array([po_index[key(n)] for n in ours.po_names])
    return _permute(ref, pi_perm, po_perm)


@pytest.mark.parametrize("verilog", _params(shared_files("ispras__hdl-benchmarks/iscas85/verilog/*.v")))
def test_iscas85_verilog_equals_its_bench(verilog: Path) -> None:
    ours = verilog_to_aig(verilog)
    bench = SHARED_DATA / "ispras__hdl-benchmarks" / "iscas85" / "bench" / f"{verilog.stem}.bench"
    ref = read_circuit(bench)
    assert (ours.num_pis, ours.num_pos) == (ref.num_pis, ref.num_pos)
    assert equivalent(ours, _by_name(ours, ref)).equal


@pytest.mark.parametrize("design", sorted(OPENABC_TOPS))
def test_openabc_rtl_synthesizes_sequentially(shared_data: Path, design: str) -> None:
    folder = shared_data / "NYU-MLDA__OpenABC" / "bench_rtl" / "src" / design
    top = OPENABC_TOPS[design]
    aig = verilog_to_aig(folder, top=top)
    aig.validate()
    assert aig.name == top and aig.num_latches > 0 and aig.num_ands > 0
    # two independent readings of the ports agree: pyverilog's declarations and Yosys' netlist
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerilogFallbackWarning)
        mod = parse_verilog(folder, top=top).top_module
    assert aig.num_inputs == sum(p.width for p in mod.inputs)
    assert aig.num_outputs == sum(p.width for p in mod.outputs)
    assert [n.split("[")[0] for n in aig.pi_names[: aig.num_inputs]] == [
        p.name for p in mod.inputs for _ in range(p.width)
    ]
