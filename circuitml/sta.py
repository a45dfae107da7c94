"""Mapped netlists and their static timing: area and delay of a design after technology mapping.

ABC's ``map`` turns an AIG into a netlist of library cells and writes it as BLIF with ``.gate`` lines. This
module reads that netlist (:func:`read_mapped_blif`) and times it against the Liberty library it was mapped to
(:func:`analyze`): area is the sum of cell areas; delay is the latest arrival at a primary output from a
non-linear delay model (NLDM) static timing analysis — the model of ABC's ``stime -c`` (Mishchenko et al., SC
mapping in ABC, ``src/map/scl``) and of pre-layout timers with wire-load models:

* every net carries rise/fall arrival times and rise/fall slews; primary inputs arrive at 0 with slew
  ``input_slew``;
* the rise (fall) load of a net is the sum of the ``rise_capacitance`` (``fall_capacitance``, both defaulting to
  ``capacitance``) of the cell input pins it drives, plus ``output_load`` per primary output it feeds, plus —
  when the library names a default wire-load model — the model's wire capacitance for the net's fanout count;
* an arc ``a -> y`` of sense positive_unate adds ``cell_rise(slew_rise(a), load(y))`` to ``a``'s rise arrival
  for ``y``'s rise (fall likewise); negative_unate crosses rise and fall; non_unate takes both; an output's
  arrival and slew are the maxima over its arcs, rise and fall separately.

Timing runs level by level over all arcs of a level at once (numpy), never per gate in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitml.aig import longest_path_levels
from circuitml.errors import CircuitFormatError
from circuitml.liberty import Library, liberty_function, lookup_tables

__all__ = ["MappedNetlist", "TimingReport", "read_mapped_blif", "parse_mapped_blif", "analyze"]


@dataclass
class MappedNetlist:
    """A netlist of library cells.

    ``gates`` are ``(cell, {pin: net})``; ``buffers`` ``{net: source net}`` are plain wires (``.names a b / 1 1``);
    ``constants`` ``{net: 0|1}``.
    """

    name: str
    inputs: list[str]
    outputs: list[str]
    gates: list[tuple[str, dict[str, str]]]
    buffers: dict[str, str] = field(default_factory=dict)
    constants: dict[str, int] = field(default_factory=dict)
    file: str = "<string>"
    gate_lines: list[int] = field(default_factory=list)


_ABC_CONSTANTS = {"_const0_": 0, "_const1_": 1}


def _blif_lines(text: str):
    """Logical lines of a BLIF file with their first physical line number (``\\`` continues, ``#`` comments)."""
    buf, start = "", None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if start is None:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield start, buf.split()
        buf, start = "", None
    if buf.strip():
        yield start, buf.split()


def parse_mapped_blif(text: str, *, file: str | os.PathLike = "<string>") -> MappedNetlist:
    """Parse a mapped BLIF (``.gate`` lines, as ABC writes after ``map``); errors name ``file:line``."""
    file = str(file)
    net = MappedNetlist("", [], [], [], file=file)
    lines = list(_blif_lines(text))
    i = 0
    while i < len(lines):
        no, words = lines[i]
        head = words[0]
        i += 1
        if head == ".model":
            net.name = words[1] if len(words) > 1 else ""
        elif head == ".inputs":
            net.inputs.extend(words[1:])
        elif head == ".outputs":
            net.outputs.extend(words[1:])
        elif head == ".gate":
            if len(words) < 3:
                raise CircuitFormatError(file, ".gate CELL pin=net ...", line=no, got=" ".join(words))
            pins = {}
            for w in words[2:]:
                pin, eq, n = w.partition("=")
                if not eq or not pin or not n:
                    raise CircuitFormatError(file, "pin=net in .gate", line=no, got=w)
                pins[pin] = n
            if words[1] in _ABC_CONSTANTS and len(pins) == 1:
                # ABC's library-derived genlib drives constant outputs with these zero-area pseudo-gates
                net.constants[next(iter(pins.values()))] = _ABC_CONSTANTS[words[1]]
                continue
            net.gates.append((words[1], pins))
            net.gate_lines.append(no)
        elif head == ".names":
            cover = []
            while i < len(lines) and not lines[i][1][0].startswith("."):
                cover.append(lines[i][1])
                i += 1
            if len(words) == 2 and cover in ([], [["0"]]):
                net.constants[words[1]] = 0
            elif len(words) == 2 and cover == [["1"]]:
                net.constants[words[1]] = 1
            elif len(words) == 3 and cover == [["1", "1"]]:
                net.buffers[words[2]] = words[1]
            else:
                raise CircuitFormatError(
                    file,
                    "a mapped netlist: .gate lines, constant or buffer .names only",
                    line=no,
                    got=" ".join(words),
                )
        elif head == ".end":
            break
        elif head in (".latch", ".mlatch", ".subckt"):
            raise CircuitFormatError(file, "a combinational mapped netlist", line=no, got=head)
        elif head.startswith("."):
            continue  # .default_input_arrival and other annotations do not change area or function
        else:
            raise CircuitFormatError(file, "a BLIF command starting with '.'", line=no, got=head)
    return net


def read_mapped_blif(path: str | os.PathLike) -> MappedNetlist:
    path = Path(path)
    return parse_mapped_blif(path.read_text(errors="replace"), file=path)


@dataclass
class TimingReport:
    """Area (library area units) and delay (ps) of a mapped netlist, with per-output arrivals (ps)."""

    area: float
    delay: float
    gates: int
    output_arrival: np.ndarray
    levels: int
    wire_load: str | None = None  # the wire-load model applied, if any


class _Graph:
    """The netlist resolved against a library: net ids, drivers, timing arcs as arrays."""

    def __init__(self, net: MappedNetlist, lib: Library) -> None:
        ids: dict[str, int] = {}

        def nid(name: str) -> int:
            root, seen = name, 0
            while root in net.buffers:  # a buffer .names is a wire: time its source
                root = net.buffers[root]
                seen += 1
                if seen > len(net.buffers):
                    raise CircuitFormatError(net.file, "buffers without a loop", got=name)
            if root not in ids:
                ids[root] = len(ids)
            return ids[root]

        self.pis = np.array([nid(n) for n in net.inputs], dtype=np.int64)
        self.consts = {nid(n): v for n, v in net.constants.items()}
        driven: dict[int, tuple[int, str]] = {}
        arc_from, arc_to, arc_tables, arc_sense = [], [], [], []
        load_net, load_cap = [], []  # one entry per driven input pin: (rise, fall) capacitance
        cell_area = []
        pi_set = set(self.pis.tolist())
        table_id: dict[int, int] = {}
        tables = []
        gate_inputs: list[list[int]] = []
        for g, (cname, pins) in enumerate(net.gates):
            line = net.gate_lines[g] if g < len(net.gate_lines) else None
            cell = lib.cells.get(cname)
            if cell is None:
                raise CircuitFormatError(
                    net.file, f"a cell of library {lib.name} ({lib.file})", line=line, got=cname
                )
            cell_area.append(cell.area)
            ins = []
            for pin, n in pins.items():
                if pin in cell.inputs:
                    load_net.append(nid(n))
                    load_cap.append(cell.input_rise_fall.get(pin, (cell.inputs[pin],) * 2))
                    ins.append(nid(n))
                elif pin in cell.outputs:
                    y = nid(n)
                    if y in driven or y in self.consts or y in pi_set:
                        raise CircuitFormatError(net.file, f"one driver for net {n}", line=line, got=cname)
                    driven[y] = (g, pin)
                    for arc in cell.arcs[pin]:
                        if arc.related_pin not in pins:
                            raise CircuitFormatError(
                                net.file, f"pin {arc.related_pin} of {cname} connected", line=line
                            )
                        ids4 = []
                        for t in (arc.cell_rise, arc.cell_fall, arc.rise_transition, arc.fall_transition):
                            if t is None:
                                ids4.append(-1)
                            else:
                                if id(t) not in table_id:
                                    table_id[id(t)] = len(tables)
                                    tables.append(t)
                                ids4.append(table_id[id(t)])
                        arc_from.append(nid(pins[arc.related_pin]))
                        arc_to.append(y)
                        arc_tables.append(ids4)
                        arc_sense.append(arc.sense)
                else:
                    raise CircuitFormatError(net.file, f"a pin of cell {cname}", line=line, got=pin)
            gate_inputs.append(ins)
        self.pos = np.array([nid(n) for n in net.outputs], dtype=np.int64)
        self.num_nets = len(ids)
        self.names = list(ids)
        self.area = float(np.sum(cell_area)) if cell_area else 0.0
        self.num_gates = len(net.gates)
        undriven = set(range(self.num_nets)) - set(driven) - set(self.consts) - set(self.pis.tolist())
        if undriven:
            name = self.names[min(undriven)]
            raise CircuitFormatError(net.file, "every net driven by an input, a gate or a constant", got=name)
        self.arc_from = np.asarray(arc_from, dtype=np.int64)
        self.arc_to = np.asarray(arc_to, dtype=np.int64)
        self.arc_tables = np.asarray(arc_tables, dtype=np.int64).reshape(-1, 4)
        sense = np.asarray(arc_sense)
        self.arc_pos = (sense == "positive_unate") | (sense != "negative_unate") & (sense != "positive_unate")
        self.arc_neg = (sense == "negative_unate") | (sense != "negative_unate") & (sense != "positive_unate")
        nets = np.asarray(load_net, dtype=np.int64)
        caps = np.asarray(load_cap, dtype=np.float64).reshape(-1, 2)
        # [2, nets]: rise and fall load (a cell's input pin may present different capacitance to each edge)
        self.load = np.stack([np.bincount(nets, weights=caps[:, e], minlength=self.num_nets) for e in (0, 1)])
        self.fanout = np.bincount(nets, minlength=self.num_nets) + np.bincount(
            self.pos, minlength=self.num_nets
        )
        self.driven = driven
        self.gate_inputs = gate_inputs
        size_s = max((len(t.slew) for t in tables), default=1)
        size_l = max((len(t.load) for t in tables), default=1)
        self.slew_index = np.full((max(len(tables), 1), size_s), np.inf)
        self.load_index = np.full((max(len(tables), 1), size_l), np.inf)
        self.values = np.zeros((max(len(tables), 1), size_s, size_l))
        for k, t in enumerate(tables):
            self.slew_index[k, : len(t.slew)] = t.slew
            self.load_index[k, : len(t.load)] = t.load
            self.values[k, : len(t.slew), : len(t.load)] = t.values
        self.file = net.file
        self.level = self._levels()

    def _levels(self) -> np.ndarray:
        """Longest arc count from the inputs to each net (Kahn's algorithm, one numpy round per level)."""
        try:
            return longest_path_levels(self.num_nets, self.arc_from, self.arc_to)
        except ValueError:
            raise CircuitFormatError(self.file, "a netlist without combinational loops") from None


def analyze(
    net: MappedNetlist,
    lib: Library,
    *,
    input_slew: float = 0.0,
    output_load: float = 0.0,
    wire_load: bool = True,
) -> TimingReport:
    """Area and NLDM delay of ``net`` mapped to ``lib``.

    ``input_slew`` (library time unit) is the transition at every primary input; ``output_load`` (library
    capacitance unit) is added to a net once for every primary output it drives. With ``wire_load`` and a
    library that names a default wire-load model (directly or by area selection on the netlist's area), every
    gate output and primary input net also gets that model's wire capacitance for its fanout count — ABC's
    ``stime -c``; without, ABC's plain ``stime``.
    """
    g = _Graph(net, lib)
    load = g.load + output_load * np.bincount(g.pos, minlength=g.num_nets)
    model = lib.wire_load_for(g.area) if wire_load else None
    if model is not None:
        caps = model.caps(int(g.fanout.max(initial=0)))
        wired = np.zeros(g.num_nets, dtype=bool)
        wired[g.pis] = True
        wired[np.fromiter(g.driven, dtype=np.int64, count=len(g.driven))] = True
        load = load + np.where(wired, caps[np.minimum(g.fanout, len(caps) - 1)], 0.0)
    neg_inf = -np.inf
    arr = np.full((2, g.num_nets), neg_inf)  # [rise, fall]
    slew = np.zeros((2, g.num_nets))
    sources = np.concatenate([g.pis, np.fromiter(g.consts, dtype=np.int64, count=len(g.consts))])
    arr[:, sources] = 0.0
    slew[:, g.pis] = input_slew
    order = np.argsort(g.level[g.arc_to], kind="stable")
    bounds = np.searchsorted(g.level[g.arc_to][order], np.arange(1, int(g.level.max(initial=0)) + 2))
    for lv in range(len(bounds) - 1):
        arcs = order[bounds[lv] : bounds[lv + 1]]
        if len(arcs) == 0:
            continue
        src, dst = g.arc_from[arcs], g.arc_to[arcs]
        tabs = g.arc_tables[arcs]
        cap = load[:, dst]  # [rise, fall] load of each arc's output net
        for out_edge in (0, 1):  # 0: output rises, 1: output falls
            delay_t, trans_t = tabs[:, out_edge], tabs[:, 2 + out_edge]
            for same, mask in ((True, g.arc_pos[arcs]), (False, g.arc_neg[arcs])):
                in_edge = out_edge if same else 1 - out_edge
                sel = mask & (delay_t >= 0)
                if not sel.any():
                    continue
                a_in, s_in = arr[in_edge, src[sel]], slew[in_edge, src[sel]]
                d = lookup_tables(
                    g.slew_index, g.load_index, g.values, delay_t[sel], s_in, cap[out_edge, sel]
                )
                np.maximum.at(arr[out_edge], dst[sel], a_in + d)
                tsel = sel & (trans_t >= 0)
                if tsel.any():
                    s = lookup_tables(
                        g.slew_index,
                        g.load_index,
                        g.values,
                        trans_t[tsel],
                        slew[in_edge, src[tsel]],
                        cap[out_edge, tsel],
                    )
                    np.maximum.at(slew[out_edge], dst[tsel], s)
    po_arr = arr[:, g.pos].max(axis=0) if len(g.pos) else np.zeros(0)
    po_arr = np.where(np.isfinite(po_arr), po_arr, 0.0) * lib.time_unit_ps
    return TimingReport(
        area=g.area,
        delay=float(po_arr.max(initial=0.0)),
        gates=g.num_gates,
        output_arrival=po_arr,
        levels=int(g.level[g.pos].max(initial=0)) if len(g.pos) else 0,
        wire_load=model.name if model is not None else None,
    )


def simulate_mapped(net: MappedNetlist, lib: Library, pi_words: np.ndarray) -> np.ndarray:
    """Bit-parallel simulation: ``uint64 [num_pis, W]`` input words -> ``uint64 [num_pos, W]`` output words.

    Each cell's Liberty ``function`` is evaluated once per level for all gates of that cell together.
    """
    g = _Graph(net, lib)
    pi_words = np.asarray(pi_words, dtype=np.uint64)
    words = np.zeros((g.num_nets, pi_words.shape[1]), dtype=np.uint64)
    words[g.pis] = pi_words
    for n, v in g.consts.items():
        words[n] = np.uint64(0xFFFFFFFFFFFFFFFF) if v else np.uint64(0)
    gate_level = np.zeros(len(net.gates), dtype=np.int64)
    outs_of_gate: dict[int, list[tuple[str, int]]] = {}
    for y, (gi, pin) in g.driven.items():
        outs_of_gate.setdefault(gi, []).append((pin, y))
        gate_level[gi] = g.level[y]
    groups: dict[tuple[int, str], list[int]] = {}
    for gi, (cname, _) in enumerate(net.gates):
        groups.setdefault((int(gate_level[gi]), cname), []).append(gi)
    name_id = {n: k for k, n in enumerate(g.names)}

    def resolve(n: str) -> int:
        while n in net.buffers:
            n = net.buffers[n]
        return name_id[n]

    for (_, cname), members in sorted(groups.items()):
        cell = lib.cells[cname]
        env = {
            pin: words[np.array([resolve(net.gates[gi][1][pin]) for gi in members])] for pin in cell.inputs
        }
        for pin, fn in cell.outputs.items():
            if not fn:
                raise CircuitFormatError(lib.file, f"a function for output {pin} of cell {cname}")
            val = liberty_function(fn, env, where=f"{lib.file}: cell {cname} pin {pin}")
            pairs = [(k, y) for k, gi in enumerate(members) for p, y in outs_of_gate.get(gi, []) if p == pin]
            if pairs:
                ks, ys = np.array(pairs, dtype=np.int64).T
                words[ys] = val[ks]
    return words[g.pos]
