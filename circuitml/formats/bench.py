"""ISCAS ``.bench`` reader and writer.

The format of the ISCAS'85 (Brglez and Fujiwara, 1985) and ISCAS'89 (Brglez, Bryan and Kozminski, 1989)
benchmark suites, also written by ABC (``write_bench``) and used by OpenABC-D::

    # comment
    INPUT(a)
    OUTPUT(y)
    n1 = NAND(a, b)
    q  = DFF(n1)

Any mix of AND, NAND, OR, NOR, XOR, XNOR (any fanin count), NOT, BUFF/BUF, DFF and the constants vdd/gnd is
turned into an AIG; gates may appear in any order (they are levelized first). DFFs are cut: the flop output
becomes a pseudo-PI and its data input a pseudo-PO, like AIGER latches.
"""

from __future__ import annotations

import functools
import gc
import os
import re
from pathlib import Path

import numpy as np

from circuitml import kernels
from circuitml.aig import AIG, AIGBuilder, longest_path_levels
from circuitml.errors import CircuitFormatError
from circuitml.fileio import UTF8_BOM, atomic_write, check_text_prefix, read_input
from circuitml.formats.bench_compiled import GATE_CODES, build_gates

__all__ = ["parse_bench", "read_bench", "bench_text", "write_bench"]

_IO = re.compile(r"^(INPUT|OUTPUT)\s*\(\s*([^\s()]+)\s*\)$", re.IGNORECASE)
_GATE = re.compile(r"^([^\s=()]+)\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(([^()]*)\)$")
_CONST_NAMES = ("vdd", "gnd", "VDD", "GND", "CONST0", "CONST1", "const0", "const1")
_CONST = re.compile(rf"^([^\s=()]+)\s*=\s*({'|'.join(_CONST_NAMES)})\s*(\(\s*\))?$")

_ARITY = {"NOT": (1, 1), "BUFF": (1, 1), "BUF": (1, 1), "DFF": (1, 1)}
_KNOWN = {"AND", "NAND", "OR", "NOR", "XOR", "XNOR", "NOT", "BUFF", "BUF", "DFF", "CONST0", "CONST1"}


def parse_bench(text: str, file: str | os.PathLike | None = None, name: str = "") -> AIG:
    """Parse ``.bench`` text into an :class:`AIG` (structurally hashed).

    Raises:
        CircuitFormatError: naming the file, the line, and what was expected (an empty text, unknown gate, wrong
            fanin count, undefined or twice-defined signal, combinational cycle).
    """
    # The reader makes a few small containers per line and frees none: each cyclic-GC pass would walk all of
    # them again (a third of a 125k-gate file's read). None of them can form a cycle, so the GC pauses.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _parse_bench(text, "<string>" if file is None else str(file), name)
    finally:
        if paused:
            gc.enable()


def _parse_bench(text: str, file: str, name: str) -> AIG:
    if not text or text.isspace():
        # nothing at all is no circuit (an empty AIG is written with its header comment, and reads back)
        raise CircuitFormatError(
            file, "'INPUT(x)', 'OUTPUT(x)' or 'y = GATE(a, ...)' lines", line=1, got="an empty file"
        )
    inputs: list[str] = []
    outputs: list[tuple[str, int]] = []
    gates: list[tuple[str, str, list[str], int]] = []  # (output, type, fanins, line)
    defined: dict[str, int] = {}

    def define(sig: str, line_no: int) -> None:
        if sig in defined:
            raise CircuitFormatError(
                file, f"'{sig}' defined once (first on line {defined[sig]})", line=line_no
            )
        defined[sig] = line_no

    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = (raw.partition("#")[0] if "#" in raw else raw).strip()
        if not line:
            continue
        m = _GATE.match(line)
        # _IO and _CONST match no line that _GATE reads with a non-constant type (tested): gate lines, nearly all
        # of a file, take one regex instead of three.
        if m is None or m.group(2) in _CONST_NAMES:
            m = _IO.match(line)
            if m:
                kind, sig = m.group(1).upper(), m.group(2)
                if kind == "INPUT":
                    define(sig, line_no)
                    inputs.append(sig)
                else:
                    outputs.append((sig, line_no))
                continue
            m = _CONST.match(line)
            if m:
                define(m.group(1), line_no)
                value = m.group(2).lower() in ("vdd", "const1")
                gates.append((m.group(1), "CONST1" if value else "CONST0", [], line_no))
                continue
            m = _GATE.match(line)
            if not m:
                raise CircuitFormatError(
                    file, "'INPUT(x)', 'OUTPUT(x)' or 'y = GATE(a, ...)'", line=line_no, got=line
                )
        out, gtype, args = m.groups()
        gtype = gtype.upper()
        fanins = list(map(str.strip, args.split(","))) if args.strip() else []
        if gtype not in _KNOWN:
            raise CircuitFormatError(
                file, "a gate among AND NAND OR NOR XOR XNOR NOT BUFF DFF", line=line_no, got=m.group(2)
            )
        lo, hi = _ARITY.get(gtype, (1, 1 << 30))
        # no empty fanin name and none with a space inside (the names are stripped: a joined space is inside one)
        if not lo <= len(fanins) <= hi or "" in fanins or " " in "".join(fanins):
            want = f"exactly {lo}" if lo == hi else f"at least {lo}"
            raise CircuitFormatError(file, f"{gtype} with {want} fanin name(s)", line=line_no, got=line)
        if out in defined:
            define(out, line_no)  # raises, naming the first definition
        defined[out] = line_no
        gates.append((out, gtype, fanins, line_no))

    for sig, line_no in outputs:
        if sig not in defined:
            raise CircuitFormatError(
                file, f"a definition of output '{sig}'", line=line_no, got="undefined signal"
            )

    # Index signals; flops are sources (cut), so levelize only combinational gates.
    sig_id = {s: k for k, s in enumerate(defined)}
    flops = [g for g in gates if g[1] == "DFF"]
    comb = [g for g in gates if g[1] != "DFF"]
    try:  # one lookup per fanin, in a comprehension; _undefined_fanin finds and names an undefined one
        src = np.array([sig_id[f] for g in comb for f in g[2]], dtype=np.int64)
        for _out, _t, fanins, _line in flops:
            sig_id[fanins[0]]  # noqa: B018 - a KeyError is an undefined flop input
    except KeyError:
        _undefined_fanin(file, sig_id, comb, flops)
    # gate node k sits at index len(sig_id)+k; an edge gate-node -> its output signal links the two
    n_sig = len(sig_id)
    counts = np.fromiter((len(g[2]) for g in comb), dtype=np.int64, count=len(comb))
    gate_of = np.array([sig_id[g[0]] for g in comb], dtype=np.int64)
    src_a = np.concatenate([src, n_sig + np.arange(len(comb))])
    dst_a = np.concatenate([np.repeat(n_sig + np.arange(len(comb)), counts), gate_of])
    try:
        level = longest_path_levels(n_sig + len(comb), src_a, dst_a)
    except ValueError:
        raise CircuitFormatError(file, "no combinational cycle", line=comb[0][3] if comb else None) from None
    order = np.argsort(level[n_sig:], kind="stable")
    if kernels.HAVE_NUMBA:
        return _build_compiled(name, inputs, outputs, flops, comb, sig_id, (counts, src, gate_of), order)

    b = AIGBuilder(name)
    lit: dict[str, int] = {}
    for sig in inputs:
        lit[sig] = b.add_pi(sig)
    for out, _t, _f, _l in flops:
        lit[out] = b.add_pi(out)
    for k in order.tolist():
        out, gtype, fanins, _ = comb[k]
        lit[out] = _gate(b, gtype, [lit[f] for f in fanins])
    for sig, _ in outputs:
        b.add_po(lit[sig], sig)
    for out, _t, fanins, _ in flops:
        b.add_po(lit[fanins[0]], f"{out}$next")
    return b.build(num_latches=len(flops))


def _undefined_fanin(file: str, sig_id: dict[str, int], comb: list, flops: list) -> None:
    """Raise the error for the first fanin (gates, then flops) that no line defines."""
    for _out, _t, fanins, line_no in comb:
        for f in fanins:
            if f not in sig_id:
                raise CircuitFormatError(
                    file, f"a definition of signal '{f}'", line=line_no, got="undefined signal"
                )
    for _out, _t, fanins, line_no in flops:
        if fanins[0] not in sig_id:
            raise CircuitFormatError(
                file, f"a definition of signal '{fanins[0]}'", line=line_no, got="undefined"
            )


def _build_compiled(
    name: str,
    inputs: list[str],
    outputs: list,
    flops: list,
    comb: list,
    sig_id: dict[str, int],
    fanins: tuple[np.ndarray, np.ndarray, np.ndarray],
    order: np.ndarray,
) -> AIG:
    """The AIG of the levelized gates via :func:`.bench_compiled.build_gates` (the builder loop's AIG).

    ``fanins``: fanin count, fanin signal ids (concatenated) and output signal id of each comb gate."""
    counts, fanin_sig, gate_sig = fanins
    ptr = np.zeros(len(comb) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    ands, lit = build_gates(
        len(sig_id),
        np.array([sig_id[s] for s in inputs] + [sig_id[g[0]] for g in flops], dtype=np.int64),
        np.array([GATE_CODES[g[1]] for g in comb], dtype=np.int8),
        ptr,
        fanin_sig,
        gate_sig,
        order,
    )
    pos = lit[[sig_id[s] for s, _ in outputs] + [sig_id[g[2][0]] for g in flops]]
    return AIG(
        num_pis=len(inputs) + len(flops),
        ands=ands,
        pos=pos,
        num_latches=len(flops),
        pi_names=inputs + [g[0] for g in flops],
        po_names=[s for s, _ in outputs] + [f"{g[0]}$next" for g in flops],
        name=name,
    )


def _gate(b: AIGBuilder, gtype: str, args: list[int]) -> int:
    if gtype in ("BUFF", "BUF"):
        return args[0]
    if gtype == "NOT":
        return args[0] ^ 1
    if gtype == "CONST0":
        return 0
    if gtype == "CONST1":
        return 1
    if gtype in ("AND", "NAND"):
        out = b.and_many(args)
    elif gtype in ("OR", "NOR"):
        out = b.or_many(args)
    else:  # XOR / XNOR
        out = b.xor_many(args)
    return out ^ 1 if gtype in ("NAND", "NOR", "XNOR") else out


def read_bench(path: str | os.PathLike) -> AIG:
    """Read an ISCAS ``.bench`` file into an :class:`AIG`."""
    path = Path(path)
    # a binary file is refused from its first 64 KiB, not after reading up to 1 GiB
    data = read_input(path, what="bench file", check=functools.partial(check_text_prefix, file=str(path)))
    bom = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0  # no gate; error offsets still count it
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: bom + exc.start].count(b"\n") + 1
        raise CircuitFormatError(
            path, "UTF-8 text", line=line, byte=bom + exc.start, got="undecodable bytes"
        ) from None
    return parse_bench(text, file=path, name=path.stem)


def bench_text(aig: AIG) -> str:
    """Serialize as ``.bench`` with AND and NOT gates (ABC's style); latches become DFFs."""
    i, l, o = aig.num_inputs, aig.num_latches, aig.num_outputs

    def pi_name(k: int) -> str:
        if aig.pi_names is not None and aig.pi_names[k]:
            return aig.pi_names[k]
        return f"pi{k}" if k < i else f"latch{k - i}"

    pi = [pi_name(k) for k in range(aig.num_pis)]
    taken = set(pi)
    prefix = "n"
    while any(nm.startswith(prefix) for nm in taken):
        prefix = "_" + prefix
    names = ["gnd"] + pi + [f"{prefix}{aig.first_and + k}" for k in range(aig.num_ands)]
    lines = [
        f"# {aig.name or 'circuit'}: {i} inputs, {o} outputs, {l} latches, {aig.num_ands} ANDs (circuitml)"
    ]
    lines += [f"INPUT({names[1 + k]})" for k in range(i)]
    po_names: list[str] = []
    for k in range(o):
        nm = aig.po_names[k] if aig.po_names is not None and aig.po_names[k] else f"po{k}"
        driver = int(aig.pos[k])
        # an output may share its name with the input that drives it; any other clash gets a fresh name
        if nm in taken and not (
            driver % 2 == 0 and 1 <= driver // 2 <= aig.num_pis and pi[driver // 2 - 1] == nm
        ):
            base, j = nm, 1
            while f"{base}_{j}" in taken:
                j += 1
            nm = f"{base}_{j}"
        taken.add(nm)
        po_names.append(nm)
    lines += [f"OUTPUT({nm})" for nm in po_names]
    used_const = bool((aig.ands >> 1 == 0).any() or (aig.pos >> 1 == 0).any())
    if used_const:
        lines.append("gnd = gnd")
    negated: set[int] = set()

    def ref(literal: int) -> str:
        node = literal >> 1
        if literal & 1:
            if node not in negated:
                negated.add(node)
                lines.append(f"{names[node]}_n = NOT({names[node]})")
            return f"{names[node]}_n"
        return names[node]

    for k in range(l):
        lines.append(f"{names[1 + i + k]} = DFF({ref(int(aig.pos[o + k]))})")
    for k, (a, c) in enumerate(aig.ands.tolist()):
        ra, rc = ref(a), ref(c)
        lines.append(f"{names[aig.first_and + k]} = AND({ra}, {rc})")
    for k in range(o):
        driver = ref(int(aig.pos[k]))
        if driver != po_names[k]:
            lines.append(f"{po_names[k]} = BUFF({driver})")
    return "\n".join(lines) + "\n"


def write_bench(aig: AIG, path: str | os.PathLike) -> None:
    atomic_write(path, bench_text(aig), fsync=False)
