"""Liberty reading, NLDM lookup, mapped-netlist timing, and QoR labels with area and delay after mapping."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from circuitml.datasets.qor import generate_qor_labels, generate_recipes, load_qor_labels, run_recipes
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import CircuitFormatError, DatasetError
from circuitml.formats import write_aiger
from circuitml.liberty import Table, liberty_function, parse_liberty, read_liberty
from circuitml.sim import random_pi_words, simulate_outputs
from circuitml.sta import analyze, parse_mapped_blif, simulate_mapped

from .test_qor_labels import adder

LIB = Path(__file__).parent / "data" / "circuitml_nldm_test.lib"
SYSTEM_ABCS = [n for n in ("berkeley-abc", "yosys-abc") if shutil.which(n)]
BACKENDS = ["yowasp", *SYSTEM_ABCS[:1]]
# stime prints two decimals (rounding up to 0.005) of float32 sums (seen: 0.0002 ps more at ~3 ns)
STIME_TOL = 0.006


@pytest.fixture(scope="module")
def lib():
    return read_liberty(LIB)


WIRE_LOAD = """  default_wire_load : "wl_small" ;
  wire_load ("wl_small") {
    capacitance : 0.0002 ;
    resistance : 0.001 ;
    slope : 5.0 ;
    fanout_length (1, 2.5) ;
    fanout_length (2, 4.0) ;
    fanout_length (4, 9.0) ;
  }
"""


@pytest.fixture(scope="module")
def wl_lib_file(tmp_path_factory):
    """The test library plus a wire-load model and separate rise/fall input capacitances on two cells."""
    text = LIB.read_text().replace(
        "  lu_table_template (nldm_4x4)", WIRE_LOAD + "  lu_table_template (nldm_4x4)", 1
    )
    for cell, cap in (("INV_X1", "0.0016"), ("NAND2_X1", "0.0015")):
        head = text.index(f"cell ({cell})")
        at = text.index(f"capacitance : {cap};", head) + len(f"capacitance : {cap};")
        text = text[:at] + "\n      rise_capacitance : 0.0019;\n      fall_capacitance : 0.0011;" + text[at:]
    path = tmp_path_factory.mktemp("wl") / "wl.lib"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- liberty
def test_reads_the_cells_units_pins_and_arcs(lib) -> None:
    assert lib.name == "circuitml_nldm_test" and len(lib.cells) == 15 and lib.skipped == []
    assert lib.time_unit_ps == 1000.0 and lib.cap_unit_ff == 1000.0
    nand = lib.cells["NAND2_X1"]
    assert nand.area == pytest.approx(0.798)
    assert nand.inputs == {"A1": 0.0015, "A2": 0.0016} and nand.outputs == {"ZN": "!(A1 & A2)"}
    assert [(a.related_pin, a.sense) for a in nand.arcs["ZN"]] == [
        ("A1", "negative_unate"),
        ("A2", "negative_unate"),
    ]
    mux = lib.cells["MUX2_X1"]
    assert {a.related_pin: a.sense for a in mux.arcs["Z"]}["S"] == "non_unate"


def _naive_lookup(t: Table, s: float, c: float) -> float:
    """Bilinear interpolation written out per corner, extrapolating from the edge segment."""

    def seg(idx, x):
        if len(idx) == 1:
            return 0, 0, 0.0
        i = 0
        while i < len(idx) - 2 and x >= idx[i + 1]:
            i += 1
        return i, i + 1, (x - idx[i]) / (idx[i + 1] - idx[i])

    i0, i1, fs = seg(list(t.slew), s)
    j0, j1, fc = seg(list(t.load), c)
    v = t.values
    return (
        (1 - fs) * (1 - fc) * v[i0, j0]
        + (1 - fs) * fc * v[i0, j1]
        + fs * (1 - fc) * v[i1, j0]
        + fs * fc * v[i1, j1]
    )


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1.2), st.floats(0.0, 0.15))
def test_lookup_matches_a_naive_bilinear_reference(s: float, c: float) -> None:
    t = read_liberty(LIB).cells["AOI21_X1"].arcs["ZN"][1].cell_rise
    assert float(t.lookup(s, c)[0]) == pytest.approx(_naive_lookup(t, s, c), rel=1e-12, abs=1e-15)


def test_lookup_hits_grid_points_and_extrapolates_linearly(lib) -> None:
    t = lib.cells["INV_X1"].arcs["ZN"][0].cell_fall
    for i, s in enumerate(t.slew):
        for j, c in enumerate(t.load):
            assert float(t.lookup(s, c)[0]) == pytest.approx(t.values[i, j])
    # beyond the last load index the table continues along its last segment
    c2, c3 = t.load[-2], t.load[-1]
    beyond = c3 + (c3 - c2)
    expected = t.values[0, -1] + (t.values[0, -1] - t.values[0, -2])
    assert float(t.lookup(t.slew[0], beyond)[0]) == pytest.approx(expected)


TEMPLATE_LIB = """library (t) {
  time_unit : "1ps" ;
  capacitive_load_unit (1, ff) ;
  lu_table_template (load_first) {
    variable_1 : total_output_net_capacitance ;
    variable_2 : input_net_transition ;
    index_1 ("1, 2") ;
    index_2 ("10, 20, 30") ;
  }
  lu_table_template (load_only) { variable_1 : total_output_net_capacitance ; index_1 ("1, 3") ; }
  cell (B) {
    area : 2 ;
    pin (A) { direction : input ; capacitance : 1.5 ; }
    pin (Y) { direction : output ; function : "A" ;
      timing () { related_pin : "A" ; timing_sense : positive_unate ;
        cell_rise (load_first) { values ("1, 2, 3", "4, 5, 6") ; }
        cell_fall (load_only) { values ("7, 9") ; }
        rise_transition (scalar) { values ("0.5") ; }
      }
    }
  }
  cell (DFF) { area : 5 ; ff (IQ, IQN) { next_state : "D" ; clocked_on : "CK" ; }
    pin (D) { direction : input ; } pin (CK) { direction : input ; }
    pin (Q) { direction : output ; function : "IQ" ; } }
}
"""


def test_table_variables_in_either_order_and_one_dimensional_tables(tmp_path) -> None:
    (tmp_path / "t.lib").write_text(TEMPLATE_LIB)
    lib = read_liberty(tmp_path / "t.lib")
    assert lib.time_unit_ps == 1.0 and lib.cap_unit_ff == 1.0 and lib.skipped == ["DFF"]
    arc = lib.cells["B"].arcs["Y"][0]
    # stored as [slew, load]: the load-first template is transposed
    assert arc.cell_rise.slew.tolist() == [10, 20, 30] and arc.cell_rise.load.tolist() == [1, 2]
    assert float(arc.cell_rise.lookup(20, 2)[0]) == 5.0
    assert float(arc.cell_fall.lookup(123.0, 2)[0]) == pytest.approx(8.0)  # slew does not matter
    assert float(arc.rise_transition.lookup(5, 5)[0]) == 0.5 and arc.fall_transition is None


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("cell (X) { }", 1, "library"),
        ("library (l) {\n cell (X) {\n area : 1 ;\n", 3, "'}' closing cell (X) from line 2"),
        ("library (l) {\n cell (X) {\n area : ;\n }\n}", 3, "a value for area"),
        ("library (l) {\n cell (X) {\n pin (A\n", 3, "')' closing pin"),
        ('library (l) {\n comment : "never closed ;\n}', 2, "closing '\"'"),
        ("library (l) {\n }\n }", 3, "end of file"),
    ],
)
def test_malformed_liberty_names_the_line_and_what_was_expected(text: str, line: int, expected: str) -> None:
    with pytest.raises(CircuitFormatError) as err:
        parse_liberty(text, file="bad.lib")
    assert f"bad.lib:{line}" in str(err.value) and expected in str(err.value)


def test_bad_tables_are_reported_with_their_line(tmp_path) -> None:
    bad_rows = TEMPLATE_LIB.replace('values ("1, 2, 3", "4, 5, 6")', 'values ("1, 2, 3")')
    (tmp_path / "a.lib").write_text(bad_rows)
    with pytest.raises(CircuitFormatError, match=r"a.lib:\d+: expected 2 rows of 3 values"):
        read_liberty(tmp_path / "a.lib")
    bad_num = TEMPLATE_LIB.replace('values ("7, 9")', 'values ("7, x9")')
    (tmp_path / "b.lib").write_text(bad_num)
    with pytest.raises(CircuitFormatError, match=r"b.lib:\d+: expected numbers in values"):
        read_liberty(tmp_path / "b.lib")
    (tmp_path / "c.lib").write_text(TEMPLATE_LIB.replace("(load_only) { values", "(nope) { values"))
    with pytest.raises(CircuitFormatError, match="lu_table_template named 'nope'"):
        read_liberty(tmp_path / "c.lib")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_truncated_or_corrupted_liberty_raises_only_format_errors(data) -> None:
    text = LIB.read_text()
    cut = data.draw(st.integers(0, len(text)))
    pos = data.draw(st.integers(0, max(0, cut - 1)))
    junk = data.draw(st.sampled_from(["", "{", "}", "(", ";", '"', ":", "@@"]))
    broken = text[:pos] + junk + text[pos:cut]
    try:
        parse_liberty(broken, file="cut.lib")
    except CircuitFormatError as err:
        assert str(err).startswith("cut.lib")


FUNCTIONS = {
    "!A": lambda a, b, c: ~a,
    "A'": lambda a, b, c: ~a,
    "!(A & B)": lambda a, b, c: ~(a & b),
    "A B + C": lambda a, b, c: (a & b) | c,
    "A * B | !C": lambda a, b, c: (a & b) | ~c,
    "A ^ B & C": lambda a, b, c: (a ^ b) & c,  # XOR binds tighter than AND in Liberty
    "A & B ^ C": lambda a, b, c: a & (b ^ c),
    "!A ^ B": lambda a, b, c: (~a) ^ b,
    "(A + B)' C": lambda a, b, c: ~(a | b) & c,
    "1 & A | 0": lambda a, b, c: a,
}


@pytest.mark.parametrize("text", list(FUNCTIONS))
def test_liberty_functions_follow_liberty_precedence(text: str) -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 2**63, size=4, dtype=np.uint64) for _ in range(3))
    got = liberty_function(text, {"A": a, "B": b, "C": c})
    assert np.array_equal(got, FUNCTIONS[text](a, b, c))


def test_a_bad_function_names_where_it_is() -> None:
    with pytest.raises(ValueError, match=r"cell X pin Y: expected an input pin, got 'Q'"):
        liberty_function("A & Q", {"A": np.zeros(1, np.uint64)}, where="cell X pin Y")


# ----------------------------------------------------------------------------------------------- timing
@functools.cache
def _load_bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_sta.py"
    spec = importlib.util.spec_from_file_location("bench_sta", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_netlist(lib, seed: int, gates: int = 60):
    rng = np.random.default_rng(seed)
    names = sorted(lib.cells)
    nets = [f"i{k}" for k in range(6)]
    lines = [".model r", ".inputs " + " ".join(nets)]
    for g in range(gates):
        cell = lib.cells[names[rng.integers(len(names))]]
        pins = " ".join(f"{p}={nets[rng.integers(len(nets))]}" for p in cell.inputs)
        out = next(iter(cell.outputs))
        lines.append(f".gate {cell.name} {pins} {out}=n{g}")
        nets.append(f"n{g}")
    outs = [f"n{g}" for g in range(gates - 5, gates)] + ["i0"]
    lines.insert(2, ".outputs " + " ".join(outs))
    return parse_mapped_blif("\n".join(lines) + "\n.end\n", file="r.blif")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("slew", "load"), [(0.0, 0.0), (0.03, 0.01)])
def test_vectorized_sta_equals_the_reference_with_wire_loads_and_rise_fall_caps(
    wl_lib_file, seed: int, slew: float, load: float
) -> None:
    wl = read_liberty(wl_lib_file)
    net = _random_netlist(wl, seed)
    for wired in (True, False):
        rep = analyze(net, wl, input_slew=slew, output_load=load, wire_load=wired)
        area, delay = _load_bench().naive_sta(net, wl, slew, load, wire_load=wired)
        assert rep.area == pytest.approx(area) and rep.delay == pytest.approx(delay, rel=1e-12)
        assert rep.wire_load == ("wl_small" if wired else None)
    assert analyze(net, wl).delay > analyze(net, wl, wire_load=False).delay


def test_wire_load_caps_interpolate_and_extrapolate_like_abc(wl_lib_file) -> None:
    wl = read_liberty(wl_lib_file)
    assert wl.default_wire_load == "wl_small" and wl.cells["INV_X1"].input_rise_fall["A"] == (0.0019, 0.0011)
    assert wl.cells["NOR2_X1"].input_rise_fall["A1"] == (0.0017, 0.0017)  # defaults to capacitance
    caps = wl.wire_loads["wl_small"].caps(7)
    # lengths 2.5, 4, (interpolated 6.5), 9, then +5 per fanout, times 0.0002 per unit length
    assert caps == pytest.approx([0, 0.0005, 0.0008, 0.0013, 0.0018, 0.0028, 0.0038, 0.0048])
    # area selection: below 10 units the small model, above the big one
    sel = LIB.read_text().replace(
        "  lu_table_template (nldm_4x4)",
        WIRE_LOAD.replace("default_wire_load", "default_wire_load_selection").replace(
            '"wl_small" ;', '"by_area" ;', 1
        )
        + '  wire_load ("wl_big") { capacitance : 0.001 ; fanout_length (1, 3) ; }\n'
        + '  wire_load_selection (by_area) { wire_load_from_area (0, 10, "wl_small") ;'
        + ' wire_load_from_area (10, 1000, "wl_big") ; }\n  lu_table_template (nldm_4x4)',
        1,
    )
    path = wl_lib_file.parent / "sel.lib"
    path.write_text(sel)
    lib_sel = read_liberty(path)
    assert lib_sel.wire_load_for(5.0).name == "wl_small" and lib_sel.wire_load_for(50.0).name == "wl_big"
    assert lib_sel.wire_load_for(5000.0).name == "wl_big"  # past the table: the last row


@pytest.mark.skipif(not SYSTEM_ABCS, reason="needs a system ABC (apt install berkeley-abc)")
def test_wire_loads_and_rise_fall_caps_equal_abc_stime(monkeypatch, shared_data, wl_lib_file) -> None:
    from circuitml.formats import read_circuit

    monkeypatch.setenv("CIRCUITML_ABC", SYSTEM_ABCS[0])
    wl = read_liberty(wl_lib_file)
    aig = read_circuit(shared_data / "ispras__hdl-benchmarks" / "iscas85" / "bench" / "c880.bench")
    for o in run_recipes(aig, generate_recipes(2, seed=0), liberty=wl, timeout=300, keep_aigs=True):
        assert abs(o.abc_area - o.area) <= STIME_TOL and abs(o.abc_delay - o.delay) <= STIME_TOL, o
        assert o.delay > analyze(o.netlist, wl, wire_load=False).delay + 1.0  # the wire load mattered


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("slew", "load"), [(0.0, 0.0), (0.03, 0.01)])
def test_vectorized_sta_equals_the_naive_recursive_reference(
    lib, seed: int, slew: float, load: float
) -> None:
    net = _random_netlist(lib, seed)
    rep = analyze(net, lib, input_slew=slew, output_load=load)
    # the reference: memoized recursion over nets with scalar lookups (bench_sta times it against analyze)
    area, delay = _load_bench().naive_sta(net, lib, slew, load)
    assert rep.area == pytest.approx(area) and rep.delay == pytest.approx(delay, rel=1e-12)
    assert rep.gates == 60 and rep.output_arrival[-1] == 0.0  # i0 is an output with no gate in between


def test_inverter_chain_by_hand(lib) -> None:
    net = parse_mapped_blif(".model c\n.inputs a\n.outputs y\n.gate INV_X1 A=a ZN=m\n.gate INV_X2 A=m ZN=y\n")
    inv1, inv2 = lib.cells["INV_X1"], lib.cells["INV_X2"]
    a1, a2 = inv1.arcs["ZN"][0], inv2.arcs["ZN"][0]
    cap = inv2.inputs["A"]
    # output rises after the input of the last inverter falls, which follows the input rising, and vice versa
    rise = float(a1.cell_fall.lookup(0, cap)[0]) + float(
        a2.cell_rise.lookup(float(a1.fall_transition.lookup(0, cap)[0]), 0)[0]
    )
    fall = float(a1.cell_rise.lookup(0, cap)[0]) + float(
        a2.cell_fall.lookup(float(a1.rise_transition.lookup(0, cap)[0]), 0)[0]
    )
    rep = analyze(net, lib)
    assert rep.delay == pytest.approx(1000 * max(rise, fall)) and rep.levels == 2
    assert rep.area == pytest.approx(inv1.area + inv2.area)


@pytest.mark.parametrize(
    ("blif", "expected"),
    [
        (".inputs a\n.outputs y\n.gate NAND9 A=a ZN=y\n", r"x.blif:3: expected a cell of library"),
        (".inputs a\n.outputs y\n.gate INV_X1 Q=a ZN=y\n", r"x.blif:3: expected a pin of cell INV_X1"),
        (".inputs a\n.outputs y\n.gate INV_X1 A=b ZN=y\n", r"x.blif: expected every net driven"),
        (".inputs a\n.outputs y\n.latch a y 0\n", r"x.blif:3: expected a combinational mapped netlist"),
        (".inputs a\n.outputs y\n.names a y\n01 1\n", r"x.blif:3: expected a mapped netlist"),
        (".inputs a\n.outputs y\n.gate INV_X1 A ZN=y\n", r"x.blif:3: expected pin=net"),
        (
            ".inputs a\n.outputs y\n.gate NAND2_X1 A1=a A2=y ZN=m\n.gate INV_X1 A=m ZN=y\n",
            "expected a netlist without combinational loops",
        ),
    ],
)
def test_bad_mapped_netlists_name_the_file_and_line(lib, blif: str, expected: str) -> None:
    with pytest.raises(CircuitFormatError, match=expected):
        analyze(parse_mapped_blif(blif, file="x.blif"), lib)


def test_constants_and_wires_time_as_zero(lib) -> None:
    net = parse_mapped_blif(
        ".inputs a\n.outputs y z w v\n.names z\n1\n.names a w\n1 1\n.gate INV_X1 A=w ZN=y\n"
        ".gate _const0_ z=v\n",  # ABC's genlib constant
        file="k.blif",
    )
    rep = analyze(net, lib)
    assert rep.output_arrival[1] == 0.0 and rep.output_arrival[2] == 0.0 and rep.delay > 0
    out = simulate_mapped(net, lib, np.array([[0b1010]], dtype=np.uint64))
    assert out[:, 0].tolist() == [~np.uint64(0b1010), np.uint64(2**64 - 1), np.uint64(0b1010), 0]
    assert rep.gates == 1 and rep.output_arrival[3] == 0.0


# ----------------------------------------------------------------------------------------------- QoR labels
@pytest.mark.parametrize("backend", BACKENDS)
def test_mapped_recipe_results_are_equivalent_and_timed(monkeypatch, lib, backend: str) -> None:
    monkeypatch.setenv("CIRCUITML_ABC", backend)
    aig = adder(6)
    outcomes = run_recipes(aig, generate_recipes(3, seed=5), keep_aigs=True, liberty=lib, timeout=120)
    words = random_pi_words(aig.num_pis, 4096, seed=1)
    for o in outcomes:
        assert o.netlist is not None and o.area > 0 and o.delay > 0
        # the mapped netlist computes the design's function (12 inputs: 4096 patterns cover all of them)
        assert np.array_equal(simulate_mapped(o.netlist, lib, words), simulate_outputs(aig, words))
        rep = analyze(o.netlist, lib)
        assert (round(rep.area, 6), round(rep.delay, 4)) == (o.area, o.delay)
        assert (o.abc_area is not None) == (backend != "yowasp")  # only a system ABC prints back
        if o.abc_area is not None:  # a system ABC printed stime: ours must agree to its two decimals
            assert abs(o.abc_area - o.area) <= STIME_TOL and abs(o.abc_delay - o.delay) <= STIME_TOL


@pytest.mark.skipif(not SYSTEM_ABCS, reason="needs a system ABC (apt install berkeley-abc)")
def test_area_and_delay_equal_abc_stime_on_iscas(monkeypatch, shared_data, lib) -> None:
    from circuitml.formats import read_circuit

    monkeypatch.setenv("CIRCUITML_ABC", SYSTEM_ABCS[0])
    for name in ("c432", "c880", "c1908", "c2670"):  # c2670 maps a constant output (_const0_)
        aig = read_circuit(shared_data / "ispras__hdl-benchmarks" / "iscas85" / "bench" / f"{name}.bench")
        for o in run_recipes(aig, generate_recipes(2, seed=0), liberty=lib, timeout=300):
            assert abs(o.abc_area - o.area) <= STIME_TOL, (name, o)
            assert abs(o.abc_delay - o.delay) <= STIME_TOL, (name, o)


def test_labels_with_liberty_record_area_and_delay_and_resume_only_with_the_same_library(
    tmp_path, lib
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_aiger(adder(4, "add4"), src / "add4.aig")
    write_aiger(adder(5, "add5"), src / "add5.aig")
    out = tmp_path / "labels"
    rep = generate_qor_labels([src], out, num_recipes=4, seed=2, liberty=LIB, chunk_size=2)
    assert rep.recipes_run == 8 and not rep.errors
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"] == ["ands", "depth", "area", "delay"]
    assert meta["mapping"]["library"] == "circuitml_nldm_test" and meta["mapping"]["delay_unit"] == "ps"
    labels = load_qor_labels(out)
    assert set(labels.metrics) == {"ands", "depth", "area", "delay"}
    assert (labels.values["area"] > 0).all() and (labels.values["delay"] > 0).all()
    z = labels.targets("delay")
    assert np.isfinite(z).all()
    # the QoR task trains on the mapped metrics like on AND counts; MAPE is on de-normalized ps
    from circuitml.tasks.common import TrainConfig
    from circuitml.tasks.qor import run_qor

    res = run_qor(
        labels,
        "scratch",
        "scratch",
        TrainConfig(epochs=1, test_fraction=0.5),
        metric="delay",
        encoder_config={"kind": "gcn", "hidden": 8, "num_layers": 1},
    )
    assert len(res.pred) == 4 and np.isfinite(res.metrics["mape"]) and "delay" in res.notes
    # finished work is skipped with the same library ...
    again = generate_qor_labels([src], out, num_recipes=4, seed=2, liberty=LIB, chunk_size=2)
    assert again.recipes_run == 0 and again.recipes_skipped == 8
    # ... and refused with another one or with none
    other = tmp_path / "other.lib"
    other.write_text(LIB.read_text().replace("area : 0.532;", "area : 0.6;"))
    with pytest.raises(DatasetError, match="same --liberty"):
        generate_qor_labels([src], out, num_recipes=4, seed=2, liberty=other)
    with pytest.raises(DatasetError, match="same --liberty"):
        generate_qor_labels([src], out, num_recipes=4, seed=2)


def test_cli_reports_a_bad_liberty_file_in_one_line(tmp_path, capsys) -> None:
    from circuitml.cli import main

    write_aiger(adder(3, "add3"), tmp_path / "add3.aig")
    bad = tmp_path / "bad.lib"
    bad.write_text("library (x) {\n  cell (A) {\n    area : 1\n")
    argv = ["data", "qor", str(tmp_path / "add3.aig"), "--out", str(tmp_path / "o"), "--recipes", "2"]
    assert main([*argv, "--liberty", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{bad}:3: expected '}}' closing cell (A) from line 2" in " ".join(err.split())
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bench_sta_smoke(shared_data, capsys) -> None:
    # main() asserts that both timers give the same area and delay on the mapped netlist
    _load_bench().main(
        [str(shared_data / "ispras__hdl-benchmarks/iscas85/bench/c880.bench"), "--repeat", "1"]
    )
    out = capsys.readouterr().out
    assert "c880" in out and out.strip().splitlines()[-1].startswith("total")
