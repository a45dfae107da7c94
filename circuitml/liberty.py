"""Liberty (``.lib``) standard-cell libraries: a reader for the combinational cells and their NLDM timing.

Liberty is Synopsys' open library format (Liberty Reference Manual, v. 2017.06): nested groups
``name (args) { ... }``, simple attributes ``name : value ;`` and complex attributes ``name (args) ;``. What a
QoR label needs is read: per cell its area, input pin capacitances, output pin function and the timing arcs of
the non-linear delay model (NLDM) — ``cell_rise``/``cell_fall`` delay and ``rise_transition``/``fall_transition``
output slew tables indexed by input slew and output load, with the arc's ``timing_sense``. Sequential cells
(``ff``, ``latch``, ``statetable`` groups) are kept out of :attr:`Library.cells`: ABC maps combinational logic
only. Everything else in the file (power, noise, bus groups, operating conditions) is parsed and ignored.

Lookup (:meth:`Table.lookup`) is bilinear interpolation inside a table and linear extrapolation from the edge
segment outside it, the convention of ABC's ``Scl_LibLookup`` and of commercial NLDM timers.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitml.errors import CircuitFormatError
from circuitml.fileio import check_text_prefix, read_input

__all__ = [
    "Group",
    "Table",
    "Arc",
    "Cell",
    "WireLoad",
    "Library",
    "parse_liberty",
    "read_liberty",
    "liberty_function",
]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f]+|\\\r?\n)
  | (?P<nl>\n)
  | (?P<comment>/\*.*?\*/|//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.|\\\n)*")
  | (?P<punct>[(){}:;,])
  | (?P<word>[^\s(){}:;,"]+)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class Group:
    """One Liberty group: ``kind (args) { attrs; groups }``; ``line`` is where it opened (1-based)."""

    kind: str
    args: list[str]
    line: int
    attrs: dict[str, list[str]] = field(default_factory=dict)
    attr_lines: dict[str, int] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    # every occurrence of each complex attribute, in order (fanout_length, wire_load_from_area repeat)
    repeated: dict[str, list[list[str]]] = field(default_factory=dict)

    def first(self, kind: str) -> Group | None:
        return next((g for g in self.groups if g.kind == kind), None)

    def all(self, kind: str) -> list[Group]:
        return [g for g in self.groups if g.kind == kind]

    def value(self, name: str, default: str | None = None) -> str | None:
        v = self.attrs.get(name)
        return v[0] if v else default


def _tokens(text: str, file: str):
    line = 1
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:  # an unterminated string or comment
            what = "a closing '\"'" if text[pos] == '"' else "a closing '*/'"
            raise CircuitFormatError(file, what, line=line, got=text[pos : pos + 20])
        kind = m.lastgroup
        tok = m.group()
        if kind == "nl":
            line += 1
        elif kind in ("ws", "comment"):
            line += tok.count("\n")
        else:
            yield kind, tok, line
            line += tok.count("\n")
        pos = m.end()


def _unquote(tok: str) -> str:
    if tok.startswith('"'):
        return tok[1:-1].replace("\\\r\n", "").replace("\\\n", "")
    return tok


MAX_GROUP_DEPTH = 64
MAX_FANOUT = 100_000  # wire-load tables list fanout counts up to a few dozen; caps() allocates one slot each
MAX_LIBERTY_BYTES = 1 << 30
MAX_CELL_PINS = 1024


def parse_liberty(text: str, *, file: str | os.PathLike = "<string>") -> Group:
    """Parse Liberty text into its top ``library`` :class:`Group`; errors name ``file:line`` and what was expected."""
    file = str(file)
    toks = list(_tokens(text, file))
    pos = 0

    def expect(what: str, i: int) -> CircuitFormatError:
        got = toks[i][1] if i < len(toks) else "end of file"
        line = toks[min(i, len(toks) - 1)][2] if toks else 1
        return CircuitFormatError(file, what, line=line, got=got[:40])

    def parse_group_body(group: Group, depth: int = 0) -> None:
        nonlocal pos
        if depth > MAX_GROUP_DEPTH:  # real libraries nest < 10 deep; the parser recurses per level
            raise expect(f"groups nested at most {MAX_GROUP_DEPTH} deep", pos)
        while True:
            if pos >= len(toks):
                raise expect(
                    f"'}}' closing {group.kind} ({', '.join(group.args)}) from line {group.line}", pos
                )
            kind, tok, line = toks[pos]
            if kind == "eof":
                if group.kind != "<file>":
                    raise expect(
                        f"'}}' closing {group.kind} ({', '.join(group.args)}) from line {group.line}", pos
                    )
                pos += 1
                return
            if tok == "}":
                if group.kind == "<file>":
                    raise expect("end of file after the library group", pos)
                pos += 1
                return
            if tok == ";":
                pos += 1
                continue
            if kind not in ("word", "string"):
                raise expect("an attribute or group name", pos)
            name = _unquote(tok)
            pos += 1
            if pos < len(toks) and toks[pos][1] == ":":
                pos += 1
                values = []
                # a simple attribute runs to ';' or the end of its line (the ';' is optional in practice)
                while toks[pos][0] != "eof" and toks[pos][1] not in (";", "}") and toks[pos][2] == line:
                    if toks[pos][0] not in ("word", "string"):
                        raise expect(f"a value for {name}", pos)
                    values.append(_unquote(toks[pos][1]))
                    pos += 1
                if not values:
                    raise expect(f"a value for {name}", pos)
                group.attrs[name] = [" ".join(values)]
                group.attr_lines[name] = line
            elif pos < len(toks) and toks[pos][1] == "(":
                pos += 1
                args: list[str] = []
                while toks[pos][0] != "eof" and toks[pos][1] != ")":
                    if toks[pos][1] == ",":
                        pos += 1
                        continue
                    if toks[pos][0] not in ("word", "string"):
                        raise expect(f"an argument of {name} or ')'", pos)
                    args.append(_unquote(toks[pos][1]))
                    pos += 1
                if toks[pos][0] == "eof":
                    raise expect(f"')' closing {name} (", pos)
                pos += 1
                if pos < len(toks) and toks[pos][1] == "{":
                    pos += 1
                    child = Group(name, args, line)
                    parse_group_body(child, depth + 1)
                    group.groups.append(child)
                else:  # complex attribute, e.g. index_1 ("...") or capacitive_load_unit (1, pf)
                    group.attrs[name] = args
                    group.attr_lines[name] = line
                    group.repeated.setdefault(name, []).append(args)
            else:
                raise expect(f"':' or '(' after {name}", pos)

    if not toks or toks[0][1] != "library":
        raise expect("'library (name) {' at the start", 0)
    top = Group("<file>", [], 1)
    # the file is read as the body of an outer group that only the end-of-file sentinel closes
    toks.append(("eof", "end of file", toks[-1][2]))
    parse_group_body(top)
    libs = top.all("library")
    if len(libs) != 1:
        raise expect("exactly one library group", 0)
    return libs[0]


# ----------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    """An NLDM table over (input slew, output load), normalized to that axis order.

    ``slew`` ``[n1]`` and ``load`` ``[n2]`` are the indices (library time and capacitance units), ``values``
    ``[n1, n2]``. A table indexed by one variable, or a scalar, gets a size-1 axis for the missing one.
    """

    slew: np.ndarray
    load: np.ndarray
    values: np.ndarray

    def lookup(self, slew: np.ndarray | float, load: np.ndarray | float) -> np.ndarray:
        """Bilinear interpolation, linear extrapolation outside the indices (ABC's ``Scl_LibLookup``)."""
        return lookup_tables(
            self.slew[None], self.load[None], self.values[None], np.zeros(1, np.int64), slew, load
        )


def _segment(index: np.ndarray, size: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left end and fraction of the index segment holding ``x``, per row (edge segment when outside)."""
    rows = np.arange(index.shape[0])
    # padded entries are +inf, so they never count as "<= x"
    i = np.clip((index[:, 1:] <= x[:, None]).sum(axis=1), 0, np.maximum(size - 2, 0))
    single = size < 2
    lo = index[rows, i]
    hi = index[rows, np.minimum(i + 1, index.shape[1] - 1)]
    width = np.where(single, 1.0, hi - lo)
    frac = np.where(single, 0.0, (x - lo) / np.where(width == 0, 1.0, width))
    return i, frac


def lookup_tables(
    slew_index: np.ndarray,
    load_index: np.ndarray,
    values: np.ndarray,
    table: np.ndarray,
    slew: np.ndarray | float,
    load: np.ndarray | float,
) -> np.ndarray:
    """Look up many (table, slew, load) triples at once.

    ``slew_index [T, S]``, ``load_index [T, C]``, ``values [T, S, C]`` hold ``T`` tables padded with ``+inf``
    indices (a padded axis is never selected); ``table [N]`` picks the table of each query.
    """
    table = np.asarray(table, dtype=np.int64)
    slew = np.broadcast_to(np.asarray(slew, dtype=np.float64), table.shape)
    load = np.broadcast_to(np.asarray(load, dtype=np.float64), table.shape)
    si, li = slew_index[table], load_index[table]
    s_size = np.isfinite(si).sum(axis=1)
    l_size = np.isfinite(li).sum(axis=1)
    i, fs = _segment(si, s_size, slew)
    j, fl = _segment(li, l_size, load)
    i1 = np.minimum(i + 1, s_size - 1)
    j1 = np.minimum(j + 1, l_size - 1)
    v = values[table]
    r = np.arange(len(table))
    v00, v01, v10, v11 = v[r, i, j], v[r, i, j1], v[r, i1, j], v[r, i1, j1]
    return (1 - fs) * ((1 - fl) * v00 + fl * v01) + fs * ((1 - fl) * v10 + fl * v11)


# ----------------------------------------------------------------------------------------------- cells
@dataclass
class Arc:
    """A combinational timing arc ``related_pin -> output``: sense and the four NLDM tables (None if absent)."""

    related_pin: str
    sense: str  # positive_unate | negative_unate | non_unate
    cell_rise: Table | None
    cell_fall: Table | None
    rise_transition: Table | None
    fall_transition: Table | None


@dataclass
class Cell:
    name: str
    area: float
    inputs: dict[str, float]  # pin -> capacitance
    outputs: dict[str, str]  # pin -> Liberty function ("" when absent)
    arcs: dict[str, list[Arc]]  # output pin -> its arcs
    dont_use: bool = False
    # pin -> (rise_capacitance, fall_capacitance); each defaults to ``capacitance``
    input_rise_fall: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class WireLoad:
    """A ``wire_load`` group: wire capacitance per unit length, estimated net length per fanout count, and the
    ``slope`` (length per extra fanout) beyond the last listed count."""

    name: str
    capacitance: float
    fanout_length: list[tuple[int, float]]
    slope: float = 0.0

    def caps(self, max_fanout: int = 0) -> np.ndarray:
        """Wire capacitance by fanout count ``[0 .. max(max_fanout, last listed)]``, as ABC's
        ``Abc_SclFindWireCaps``: listed counts get length x capacitance, counts between two listed ones are
        interpolated linearly, counts past the last one grow by ``slope x capacitance`` per fanout."""
        top = max([f for f, _ in self.fanout_length] + [max_fanout, 1])
        caps = np.zeros(top + 1)
        for f, length in self.fanout_length:
            caps[f] = length * self.capacitance
        if caps[1] == 0:
            return caps
        listed = np.flatnonzero(caps[1:]) + 1
        fill = np.arange(1, listed[-1] + 1)
        caps[1 : listed[-1] + 1] = np.interp(fill, listed, caps[listed])
        tail = np.arange(listed[-1] + 1, top + 1)
        caps[tail] = caps[listed[-1]] + self.slope * self.capacitance * (tail - listed[-1])
        return caps


@dataclass
class Library:
    """The combinational cells of a Liberty library and its units.

    ``time_unit_ps`` converts the library's time unit to picoseconds; ``cap_unit_ff`` its capacitance unit to
    femtofarads. Areas are in the library's area unit (usually um²).
    """

    name: str
    file: str
    cells: dict[str, Cell]
    time_unit_ps: float
    cap_unit_ff: float
    skipped: list[str] = field(default_factory=list)  # sequential / unsupported cells, by name
    wire_loads: dict[str, WireLoad] = field(default_factory=dict)
    default_wire_load: str | None = None
    # selection name -> [(area from, area to, wire-load name)]
    wire_load_selections: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    default_wire_load_selection: str | None = None

    def wire_load_for(self, area: float) -> WireLoad | None:
        """The wire-load model a design of ``area`` gets: by ``default_wire_load_selection`` when the library
        has one (the row whose [from, to) holds the area, else the last row), else ``default_wire_load``."""
        name = None
        if self.default_wire_load_selection:
            rows = self.wire_load_selections.get(self.default_wire_load_selection)
            if rows is None:
                raise CircuitFormatError(
                    self.file, "a wire_load_selection group named by default_wire_load_selection",
                    got=self.default_wire_load_selection,
                )  # fmt: skip
            name = next((m for lo, hi, m in rows if lo <= area < hi), rows[-1][2] if rows else None)
        elif self.default_wire_load:
            name = self.default_wire_load
        if name is None:
            return None
        if name not in self.wire_loads:
            raise CircuitFormatError(self.file, "a wire_load group of that name", got=name)
        return self.wire_loads[name]


_TIME_UNITS_PS = {
    "1ps": 1.0,
    "10ps": 10.0,
    "100ps": 100.0,
    "1ns": 1000.0,
    "10ns": 1e4,
    "100ns": 1e5,
    "1us": 1e6,
}
_CAP_UNITS_FF = {"ff": 1.0, "pf": 1000.0, "nf": 1e6}


def _floats(text: str, file: str, line: int, what: str) -> list[float]:
    try:
        return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError as exc:
        raise CircuitFormatError(file, f"numbers in {what}", line=line, got=text[:40]) from exc


def _table(group: Group, templates: dict[str, tuple[list[str], dict[str, list[float]]]], file: str) -> Table:
    tname = group.args[0] if group.args else "scalar"
    variables, indices = templates.get(tname, ([], {}))
    if tname not in templates and tname != "scalar":
        raise CircuitFormatError(file, f"a lu_table_template named {tname!r}", line=group.line, got=tname)
    idx = []
    for k in (1, 2):
        key = f"index_{k}"
        if key in group.attrs:
            idx.append(_floats(" ".join(group.attrs[key]), file, group.attr_lines[key], key))
        elif key in indices:
            idx.append(indices[key])
    rows = group.attrs.get("values")
    if rows is None:
        raise CircuitFormatError(file, f"values (...) in {group.kind}", line=group.line)
    vline = group.attr_lines["values"]
    grid = [_floats(r, file, vline, "values") for r in rows]
    if len(idx) == 0:
        if len(grid) != 1 or len(grid[0]) != 1:
            raise CircuitFormatError(file, "one value in a scalar table", line=vline, got=str(len(grid)))
        return Table(np.zeros(1), np.zeros(1), np.array([[grid[0][0]]]))
    n1 = len(idx[0])
    if len(idx) == 1:
        flat = [v for r in grid for v in r]
        if len(flat) != n1:
            raise CircuitFormatError(file, f"{n1} values (index_1)", line=vline, got=str(len(flat)))
        values = np.asarray(flat)[:, None]
    else:
        n2 = len(idx[1])
        if len(grid) != n1 or any(len(r) != n2 for r in grid):
            raise CircuitFormatError(
                file, f"{n1} rows of {n2} values (index_1 x index_2)", line=vline, got=f"{len(grid)} rows"
            )
        values = np.asarray(grid)
    axes = [np.asarray(a, dtype=np.float64) for a in idx]
    names = list(variables) + [""] * (len(axes) - len(variables))
    kinds = ["slew" if "transition" in v else "load" if "capacitance" in v else "" for v in names]
    if len(axes) == 1:
        axes.append(np.zeros(1))
        kinds.append("slew" if kinds[0] == "load" else "load")
    if kinds[0] == "load" and kinds[1] != "load":
        return Table(axes[1], axes[0], values.T.copy())
    if kinds[0] not in ("slew", "") or kinds[1] not in ("load", ""):
        raise CircuitFormatError(
            file,
            "table variables input_net_transition and total_output_net_capacitance",
            line=group.line,
            got=", ".join(names),
        )
    return Table(axes[0], axes[1], values)


def read_liberty(path: str | os.PathLike) -> Library:
    """Read a Liberty file's combinational cells (see the module docstring for what is kept)."""
    path = Path(path)
    try:
        if not path.is_file():  # a device such as /dev/urandom would never end
            raise CircuitFormatError(
                path,
                "a regular Liberty file",
                got="a directory or device" if path.exists() else "no such file",
            )
        if path.stat().st_size > MAX_LIBERTY_BYTES:
            raise CircuitFormatError(path, f"a Liberty file of at most {MAX_LIBERTY_BYTES >> 20} MiB")
        # a binary file (a NUL byte in its first 64 KiB) is refused before the rest is read; so is a .lib.gz
        text_only = functools.partial(check_text_prefix, file=str(path), utf8=False)
        data = read_input(path, what="Liberty file", limit=MAX_LIBERTY_BYTES, check=text_only)
    except OSError as exc:
        raise CircuitFormatError(path, "a readable Liberty file", got=exc.strerror) from None
    text = data.decode("utf-8", errors="replace")
    file = str(path)
    lib = parse_liberty(text, file=file)
    tu = (lib.value("time_unit") or "1ns").replace(" ", "").lower()
    if tu not in _TIME_UNITS_PS:
        raise CircuitFormatError(file, "time_unit one of " + ", ".join(_TIME_UNITS_PS), got=tu)
    cap = lib.attrs.get("capacitive_load_unit", ["1", "pf"])
    try:
        cap_ff = float(cap[0]) * _CAP_UNITS_FF[cap[1].lower()]
    except (ValueError, IndexError, KeyError) as exc:
        raise CircuitFormatError(
            file,
            "capacitive_load_unit (number, ff|pf|nf)",
            line=lib.attr_lines.get("capacitive_load_unit"),
            got=", ".join(cap),
        ) from exc
    templates: dict[str, tuple[list[str], dict[str, list[float]]]] = {}
    for t in lib.all("lu_table_template"):
        if not t.args:
            raise CircuitFormatError(file, "a name for lu_table_template", line=t.line)
        variables = [t.value(f"variable_{k}") for k in (1, 2, 3) if t.value(f"variable_{k}")]
        indices = {
            k: _floats(" ".join(t.attrs[k]), file, t.attr_lines[k], k)
            for k in ("index_1", "index_2")
            if k in t.attrs
        }
        templates[t.args[0]] = (variables, indices)
    cells: dict[str, Cell] = {}
    skipped: list[str] = []
    for g in lib.all("cell"):
        if not g.args:
            raise CircuitFormatError(file, "a cell name", line=g.line)
        name = g.args[0]
        if any(g.first(k) for k in ("ff", "latch", "statetable", "ff_bank", "latch_bank")):
            skipped.append(name)
            continue
        try:
            area = float(g.value("area", "0"))
        except ValueError as exc:
            raise CircuitFormatError(
                file, f"a number for area of cell {name}", line=g.attr_lines.get("area")
            ) from exc
        inputs: dict[str, float] = {}
        rise_fall: dict[str, tuple[float, float]] = {}
        outputs: dict[str, str] = {}
        arcs: dict[str, list[Arc]] = {}
        for p in g.all("pin"):
            direction = p.value("direction", "")
            related = sum(len((t.value("related_pin") or "").split()) for t in p.all("timing"))
            if len(p.args) > MAX_CELL_PINS or related > MAX_CELL_PINS:
                # a pin group may list several pins sharing its body (and is read once per pin)
                raise CircuitFormatError(
                    file, f"at most {MAX_CELL_PINS} pins per pin group of cell {name}", line=p.line
                )
            for pin in p.args:
                if direction == "input":
                    try:
                        inputs[pin] = float(p.value("capacitance", "0"))
                        rise_fall[pin] = (
                            float(p.value("rise_capacitance", str(inputs[pin]))),
                            float(p.value("fall_capacitance", str(inputs[pin]))),
                        )
                    except ValueError as exc:
                        raise CircuitFormatError(
                            file,
                            f"a number for the capacitance of {name}/{pin}",
                            line=p.attr_lines.get("capacitance"),
                        ) from exc
                elif direction == "output":
                    outputs[pin] = p.value("function", "") or ""
                    arcs[pin] = []
                    for t in p.all("timing"):
                        ttype = t.value("timing_type", "combinational")
                        if ttype not in ("combinational", "combinational_rise", "combinational_fall"):
                            continue
                        tables = {
                            k: _table(t.first(k), templates, file) if t.first(k) else None
                            for k in ("cell_rise", "cell_fall", "rise_transition", "fall_transition")
                        }
                        sense = t.value("timing_sense", "non_unate")
                        for rel in (t.value("related_pin") or "").split():
                            arcs[pin].append(Arc(rel, sense, **tables))
        if not outputs:
            skipped.append(name)
            continue
        dont_use = (g.value("dont_use", "false") or "").lower() == "true"
        cells[name] = Cell(name, area, inputs, outputs, arcs, dont_use, rise_fall)
    library = Library(
        lib.args[0] if lib.args else path.stem, file, cells, _TIME_UNITS_PS[tu], cap_ff, skipped
    )
    _read_wire_loads(lib, library, file)
    return library


def _read_wire_loads(lib: Group, library: Library, file: str) -> None:
    for g in lib.all("wire_load"):
        if not g.args:
            raise CircuitFormatError(file, "a name for wire_load", line=g.line)
        try:
            cap = float(g.value("capacitance", "0"))
            slope = float(g.value("slope", "0"))
            # one fanout_length (fanout, length[, ...]) per fanout count; extra statistics columns are ignored
            pairs = [(int(float(a[0])), float(a[1])) for a in g.repeated.get("fanout_length", [])]
        except (ValueError, IndexError, OverflowError) as exc:
            raise CircuitFormatError(
                file, f"numbers in wire_load ({g.args[0]})", line=g.line, got=str(exc)[:40]
            ) from exc
        bad = [f for f, length in pairs if not 0 <= f <= MAX_FANOUT or not np.isfinite(length)]
        if bad or not (np.isfinite(cap) and np.isfinite(slope)):
            raise CircuitFormatError(
                file,
                f"fanout counts in 0..{MAX_FANOUT} and finite numbers in wire_load ({g.args[0]})",
                line=g.line,
                got=str(bad[0]) if bad else f"capacitance {cap}, slope {slope}",
            )
        library.wire_loads[g.args[0]] = WireLoad(g.args[0], cap, sorted(pairs), slope)
    for g in lib.all("wire_load_selection"):
        if not g.args:
            raise CircuitFormatError(file, "a name for wire_load_selection", line=g.line)
        rows = []
        for args in g.repeated.get("wire_load_from_area", []):
            if len(args) != 3:
                raise CircuitFormatError(
                    file, "wire_load_from_area (from, to, model)", line=g.line, got=", ".join(args)
                )
            try:
                rows.append((float(args[0]), float(args[1]), args[2]))
            except ValueError as exc:
                raise CircuitFormatError(file, "numbers in wire_load_from_area", line=g.line) from exc
        library.wire_load_selections[g.args[0]] = rows
    library.default_wire_load = lib.value("default_wire_load")
    library.default_wire_load_selection = lib.value("default_wire_load_selection")


# ----------------------------------------------------------------------------------------------- functions
_FN_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_\[\].]*)|(?P<const>[01])|(?P<op>[!'()&*|+^]))")


def liberty_function(text: str, env: dict[str, np.ndarray], *, where: str = "<function>") -> np.ndarray:
    """Evaluate a Liberty ``function`` string bitwise over ``env`` (pin -> uint64 words).

    Precedence, loosest first: ``|``/``+``, ``&``/``*``/juxtaposition, ``^``, prefix ``!`` and postfix ``'``
    (XOR binds tighter than AND in Liberty, as in OpenSTA's expression grammar).
    """
    toks: list[tuple[str, str]] = []
    pos = 0
    text_s = text.strip()
    while pos < len(text_s):
        m = _FN_TOKEN.match(text_s, pos)
        if m is None or m.end() == pos:
            if text_s[pos:].strip() == "":
                break
            raise ValueError(
                f"{where}: expected a pin, 0/1 or one of ! ' & * | + ^ ( ), got {text_s[pos : pos + 10]!r}"
            )
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
        pos = m.end()
    shape = next(iter(env.values())).shape if env else (1,)
    ones = np.full(shape, np.uint64(0xFFFFFFFFFFFFFFFF))
    i = 0

    def peek() -> tuple[str, str] | None:
        return toks[i] if i < len(toks) else None

    def parse_or() -> np.ndarray:
        nonlocal i
        v = parse_and()
        while peek() and peek()[1] in ("|", "+"):
            i += 1
            v = v | parse_and()
        return v

    def parse_and() -> np.ndarray:
        nonlocal i
        v = parse_xor()
        while peek() and (
            peek()[1] in ("&", "*") or peek()[0] in ("name", "const") or peek()[1] in ("(", "!")
        ):
            if peek()[1] in ("&", "*"):
                i += 1
            v = v & parse_xor()
        return v

    def parse_xor() -> np.ndarray:
        nonlocal i
        v = parse_unary()
        while peek() and peek()[1] == "^":
            i += 1
            v = v ^ parse_unary()
        return v

    def parse_unary() -> np.ndarray:
        nonlocal i
        t = peek()
        if t is None:
            raise ValueError(f"{where}: expected an operand at the end of {text!r}")
        if t[1] == "!":
            i += 1
            v = ~parse_unary()
        elif t[1] == "(":
            i += 1
            v = parse_or()
            if not peek() or peek()[1] != ")":
                raise ValueError(f"{where}: expected ')' in {text!r}")
            i += 1
        elif t[0] == "const":
            i += 1
            v = ones.copy() if t[1] == "1" else np.zeros_like(ones)
        elif t[0] == "name":
            i += 1
            if t[1] not in env:
                raise ValueError(f"{where}: expected an input pin, got {t[1]!r} in {text!r}")
            v = env[t[1]]
        else:
            raise ValueError(f"{where}: expected an operand, got {t[1]!r} in {text!r}")
        while peek() and peek()[1] == "'":
            i += 1
            v = ~v
        return v

    if sum(1 for t in toks if t[1] in "(!") > 200:  # the parser recurses per nesting level
        raise ValueError(f"{where}: expected a function nested at most 200 deep, got {text[:40]!r}")
    out = parse_or()
    if i != len(toks):
        raise ValueError(f"{where}: unexpected {toks[i][1]!r} in {text!r}")
    return out
