"""Verilog → AIG through Yosys: flatten, map to AND/NOT gates, keep flip-flops as (cut) AIGER latches.

The flow follows Yosys' own AIGER recipe (Wolf, "Yosys Manual", ``write_aiger``) without ABC, so it works on
sequential designs as well (``synth`` runs ABC, which fails on some sequential designs in the WASI build):

``read_verilog; hierarchy -check -top T; proc; flatten; memory; opt_clean; techmap; opt -fast;
async2sync; dffunmap; setundef -zero; aigmap; opt_clean; write_aiger -symbols``.

* ``async2sync`` models asynchronous set/reset as synchronous, ``dffunmap`` turns enables and synchronous
  resets into logic, so every flip-flop becomes a plain D flip-flop that AIGER can express as a latch.
  Multiple clocks collapse into AIGER's single implicit clock (the usual AIG abstraction).
* ``setundef -zero`` replaces ``x``/``z`` constants by 0 (AIGER has no third value).
* Flip-flops with an ``initial`` value keep it as the latch reset; the others get reset ``-1`` (undefined).

``write_aiger`` orders ports by its own sort and omits constant outputs from its map file, so the port
order is taken from the top module's RTLIL port list (dumped right after ``hierarchy``) and PIs/POs are
permuted into declaration order, each bit named ``port[i]`` by its declared index (``port`` alone for
1-bit ports). Latch pseudo-PIs keep Yosys' register names (``reg[i]``, or ``latch<k>`` for unnamed ones).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import CircuitFormatError, SynthesisError
from circuitml.yosys import run_yosys

__all__ = ["PortBits", "verilog_to_aig", "verilog_text_to_aig", "synthesis_script", "VERILOG_SUFFIXES"]

VERILOG_SUFFIXES = (".v", ".sv", ".vh", ".svh")
_INCLUDE_RE = re.compile(r'`include\s+"([^"]+)"')
_RTLIL_WIRE_RE = re.compile(r"^\s*wire\s+(.*?)\s*(\\\S+|\$\S+)\s*$")


@dataclass(frozen=True)
class PortBits:
    """One port of the top module as Yosys sees it (from its RTLIL dump)."""

    name: str
    direction: str  # "input", "output" or "inout"
    width: int
    port_id: int
    offset: int = 0
    upto: bool = False

    def bit_names(self) -> list[str]:
        """Names of the port's bits in Yosys' bit order (LSB first), by declared index."""
        if self.width == 1:
            return [self.name]
        if self.upto:
            return [f"{self.name}[{self.offset + self.width - 1 - k}]" for k in range(self.width)]
        return [f"{self.name}[{self.offset + k}]" for k in range(self.width)]


def _parse_ports(rtlil: str) -> list[PortBits]:
    ports = []
    for line in rtlil.splitlines():
        m = _RTLIL_WIRE_RE.match(line)
        if not m:
            continue
        words = m.group(1).split()
        name = m.group(2)
        name = name[1:] if name.startswith("\\") else name
        width, offset, upto, direction, port_id = 1, 0, False, None, None
        k = 0
        while k < len(words):
            w = words[k]
            if w == "width":
                width = int(words[k + 1])
                k += 1
            elif w == "offset":
                offset = int(words[k + 1])
                k += 1
            elif w == "upto":
                upto = True
            elif w in ("input", "output", "inout"):
                direction = w
                port_id = int(words[k + 1])
                k += 1
            k += 1
        if direction is not None:
            ports.append(PortBits(name, direction, width, port_id, offset, upto))
    ports.sort(key=lambda p: p.port_id)
    return ports


def synthesis_script(
    sources: Sequence[str],
    top: str,
    include_dirs: Sequence[str] = (),
    defines: Mapping[str, str] | None = None,
) -> str:
    """The Yosys script :func:`verilog_to_aig` runs (sources and include folders relative to its folder)."""
    flags = "".join(f" -I{d}" for d in include_dirs)
    flags += "".join(f" -D{k}" if v is None or v == "" else f" -D{k}={v}" for k, v in (defines or {}).items())
    reads = []
    for src in sources:
        sv = " -sv" if src.endswith((".sv", ".svh")) else ""
        reads.append(f"read_verilog{sv}{flags} {src}")
    return "\n".join(
        [
            *reads,
            f"hierarchy -check -top {_yosys_id(top)}",
            f"select {_yosys_id(top)}/x:*",
            "write_rtlil -selected ports.il",
            "select -clear",
            "proc",
            "flatten",
            "memory",
            "opt_clean",
            "techmap",
            "opt -fast",
            "async2sync",
            "dffunmap",
            "setundef -zero",
            "aigmap",
            "opt_clean",
            "write_aiger -symbols out.aig",
        ]
    )


def _yosys_id(name: str) -> str:
    # escaped Verilog identifiers keep their backslash in Yosys commands
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name) else "\\" + name.lstrip("\\")


def _expand_sources(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in (".v", ".sv"))
            if not found:
                raise CircuitFormatError(p, "a folder holding .v or .sv files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise CircuitFormatError(p, "an existing Verilog file or folder", got="no such file")
    if not out:
        raise CircuitFormatError(None, "at least one Verilog source")
    return out


def _collect_includes(texts: dict[Path, str], include_dirs: Sequence[Path]) -> dict[str, bytes]:
    """Files pulled in by ``include`` directives, found beside the including file or in ``include_dirs``."""
    found: dict[str, bytes] = {}
    queue = list(texts.items())
    while queue:
        path, text = queue.pop()
        for name in _INCLUDE_RE.findall(text):
            if name in found:
                continue
            for base in (path.parent, *include_dirs):
                cand = base / name
                if cand.is_file():
                    data = cand.read_bytes()
                    found[name] = data
                    queue.append((cand, data.decode(errors="replace")))
                    break
            # a missing include is left to Yosys, whose error names the file and line
    return found


def verilog_to_aig(
    paths: str | Path | Iterable[str | Path],
    top: str | None = None,
    *,
    include_dirs: Iterable[str | Path] = (),
    defines: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> AIG:
    """Synthesize Verilog files into an :class:`AIG` with Yosys (combinational and sequential designs).

    Args:
        paths: Verilog/SystemVerilog files, or folders whose ``.v``/``.sv`` files are all read.
        top: top module; when omitted it is the one module no other module instantiates (see
            :func:`circuitml.verilog.find_top`), an error when that is ambiguous.
        include_dirs: extra folders searched for ```include`` files (the including file's folder always is).
        defines: preprocessor macros, ``{name: value}``.
        timeout: seconds before Yosys is killed.

    Returns:
        The AIG named after the top module; PIs/POs in port declaration order (bits LSB first), flip-flops
        cut into pseudo-PIs/POs (``num_latches``).

    Raises:
        CircuitFormatError: a missing file, or no/ambiguous top module.
        SynthesisError: Yosys' first error line (with file and line), or a timeout naming the step.
    """
    sources = _expand_sources(paths)
    texts = {p: p.read_bytes().decode(errors="replace") for p in sources}
    if top is None:
        from circuitml.verilog.parse import find_top

        top = find_top(texts)
    inc_dirs = [Path(d) for d in include_dirs]
    files: dict[str, bytes | str] = {}
    aliases: dict[str, str] = {}
    rel_sources = []
    for k, p in enumerate(sources):
        rel = f"src{k}/{p.name}"
        files[rel] = p.read_bytes()
        aliases[rel] = str(p)
        rel_sources.append(rel)
    for name, data in _collect_includes(texts, inc_dirs).items():
        files[f"inc/{name}"] = data
    script = synthesis_script(rel_sources, top, ["inc"], defines)
    design = ", ".join(p.name for p in sources)
    return _synthesize(script, files, aliases, design, top, timeout)


def verilog_text_to_aig(
    text: str,
    top: str | None = None,
    *,
    filename: str = "design.v",
    defines: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> AIG:
    """Like :func:`verilog_to_aig` for Verilog source held in memory (``filename`` appears in errors)."""
    if top is None:
        from circuitml.verilog.parse import find_top

        top = find_top({Path(filename): text})
    rel = f"src0/{Path(filename).name}"
    script = synthesis_script([rel], top, [], defines)
    return _synthesize(script, {rel: text}, {rel: filename}, filename, top, timeout)


def _synthesize(
    script: str, files: dict, aliases: dict[str, str], design: str, top: str, timeout: float
) -> AIG:
    from circuitml.formats.aiger import parse_aiger

    res = run_yosys(
        script, files=files, outputs=["out.aig", "ports.il"], timeout=timeout, design=design, aliases=aliases
    )
    raw = parse_aiger(res.outputs["out.aig"], file=f"<Yosys AIGER of {design}>", name=top)
    ports = _parse_ports(res.outputs["ports.il"].decode(errors="replace"))
    return _in_port_order(raw, ports, top, design)


def _in_port_order(raw: AIG, ports: list[PortBits], top: str, design: str) -> AIG:
    """Permute PIs/POs of Yosys' AIG into port declaration order and give every bit its declared name."""
    if any(p.direction == "inout" for p in ports):
        bad = next(p.name for p in ports if p.direction == "inout")
        raise SynthesisError(f"{design}: inout port '{bad}' of {top} has no AIG equivalent (tristate logic)")
    in_names = [n for p in ports if p.direction == "input" for n in p.bit_names()]
    out_names = [n for p in ports if p.direction == "output" for n in p.bit_names()]
    n_in, n_out, n_lat = raw.num_inputs, raw.num_outputs, raw.num_latches
    if n_in != len(in_names) or n_out != len(out_names):
        raise SynthesisError(
            f"{design}: Yosys wrote {n_in} inputs / {n_out} outputs for {top}, "
            f"its ports have {len(in_names)} / {len(out_names)} bits"
        )
    port_of = {p.name: p for p in ports}

    def declared(symbol: str) -> str:
        # Yosys symbols are "wire" or "wire[k]" with k the 0-based bit offset
        m = re.fullmatch(r"(.*)\[(\d+)\]", symbol)
        base, bit = (m.group(1), int(m.group(2))) if m else (symbol, 0)
        port = port_of.get(base)
        if port is None or bit >= port.width:
            return symbol
        return port.bit_names()[bit]

    def order(symbols: list[str] | None, names: list[str], what: str) -> np.ndarray:
        if symbols is None:
            raise SynthesisError(f"{design}: Yosys wrote no symbol table for the {what}s of {top}")
        index = {declared(s): k for k, s in enumerate(symbols)}
        missing = [n for n in names if n not in index]
        if missing or len(index) != len(names):
            raise SynthesisError(
                f"{design}: cannot match Yosys' {what} symbols to the ports of {top} ({missing[:3]})"
            )
        return np.array([index[n] for n in names], dtype=np.int64)

    pi_perm = order(None if raw.pi_names is None else raw.pi_names[:n_in], in_names, "input")
    po_perm = order(None if raw.po_names is None else raw.po_names[:n_out], out_names, "output")

    # node relabelling: new PI k is old PI pi_perm[k]; latches and ANDs keep their place
    new_of_old = np.arange(raw.num_nodes, dtype=np.int64)
    new_of_old[1 + pi_perm] = 1 + np.arange(n_in, dtype=np.int64)

    def relabel(lits: np.ndarray) -> np.ndarray:
        return 2 * new_of_old[lits >> 1] + (lits & 1)

    ands = relabel(raw.ands)
    pos = relabel(np.concatenate([raw.pos[:n_out][po_perm], raw.pos[n_out:]]))
    latch_names = []
    for k in range(n_lat):
        nm = raw.pi_names[n_in + k] if raw.pi_names else ""
        latch_names.append(declared(nm) if nm else f"latch{k}")
    aig = AIG(
        num_pis=raw.num_pis,
        ands=ands,
        pos=pos,
        num_latches=n_lat,
        latch_init=raw.latch_init,
        pi_names=in_names + latch_names,
        po_names=out_names + [f"{nm}$next" for nm in latch_names],
        name=top,
    )
    return aig
