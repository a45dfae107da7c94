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
1-bit ports). Latch pseudo-PIs keep Yosys' register names (``reg[i]``, or ``latch<k>`` for unnamed ones)
and are sorted by name; their next-state pseudo-POs are named ``<latch>$next``.

The AIG Yosys writes is then structurally hashed (duplicate gates that ``aigmap`` leaves are merged,
trivial ANDs folded) and renumbered canonically level by level, so a design always yields the same arrays
whatever ran before it in the same Yosys process — which is what lets :func:`verilog_to_aig_many` put
many designs into one Yosys process (Yosys' ~0.3 s start, measured 0.59 s on a loaded 2-core machine, is
then paid once per batch: 0.14 s instead of 0.73 s per small generated design in the same run).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import CircuitFormatError, CircuitmlError, SynthesisError
from circuitml.fileio import UTF8_BOM, check_input, check_text_prefix, read_input
from circuitml.yosys import run_yosys

__all__ = [
    "SynthesisWarning",
    "PortBits",
    "verilog_to_aig",
    "verilog_to_aig_many",
    "verilog_text_to_aig",
    "synthesis_script",
    "VERILOG_SUFFIXES",
]

VERILOG_SUFFIXES = (".v", ".sv", ".vh", ".svh")
_MARK = "circuitml-design:"  # logged before each design, to cut a batch's log into per-design parts
_INCLUDE_RE = re.compile(r'`include\s+"([^"]+)"')
_RTLIL_WIRE_RE = re.compile(r"^\s*wire\s+(.*?)\s*(\\\S+|\$\S+)\s*$")


class SynthesisWarning(UserWarning):
    """Yosys changed the meaning of the design: a latch inferred, an undriven net set to 0, multiple drivers."""


# Yosys warnings that change what the AIG computes; everything else Yosys says is noise to a user.
_MEANINGFUL = [
    (re.compile(r"Latch inferred for signal `(.+?)' from process"), "latch inferred for {}"),
    (re.compile(r"multiple conflicting drivers for (\S+?):?\s*$"), "multiple conflicting drivers for {}"),
    (re.compile(r"Wire (\S+(?: \[\d+\])?) is used but has no driver"), "undriven net {} set to 0"),
]


def _clean_name(name: str) -> str:
    # `\top.\sig' → top.sig ; $-names of Yosys' own objects stay as they are
    return re.sub(r"(^|\.)\\", r"\1", name.strip("`'")).replace(" [", "[")


def synthesis_warnings(log: str) -> list[str]:
    """The meaning-changing warnings of a Yosys log, one short line each, in order, without repeats."""
    found: list[str] = []
    for line in log.splitlines():
        if not line.startswith("Warning:"):
            continue
        for pattern, template in _MEANINGFUL:
            m = pattern.search(line)
            if m:
                text = template.format(_clean_name(m.group(1)))
                if text not in found:
                    found.append(text)
                break
    return found


# Yosys-internal assertions, by the source file that failed: what that stage is and what usually causes it.
_ASSERT_RE = re.compile(r"Assert `(.*?)' failed in (\S+?):(\d+)")
_STAGES = {
    "aiger.cc": ("AIGER export", "the design has tri-state or undriven logic after synthesis"),
    "proc_": ("process lowering (proc)", "an always block Yosys cannot map to logic"),
    "memory": ("memory mapping", "a memory Yosys cannot flatten into logic"),
    "flatten": ("hierarchy flattening", "a module instance Yosys cannot inline"),
    "techmap": ("technology mapping", "a cell without a gate-level equivalent"),
    "verilog": ("Verilog reading", "a construct Yosys' front end does not handle"),
}


# Yosys errors whose fix is a coding idiom Yosys does not name: (pattern, what to change), appended to the message.
_HINTS = (
    (
        re.compile(r"Latch inferred for signal .* from always_comb"),
        "an always_comb block must assign every signal on every path: add a default: branch to the case, or "
        "default assignments at the top of the block",
    ),
)


# Switch-level Verilog (transistor primitives, charge-storage nets) that Yosys' front end rejects with a bare
# syntax error at the declaration; ISCAS89's Verilog models its flip-flops this way.
_SWITCH_LEVEL = re.compile(
    r"\b(trireg|nmos|pmos|cmos|rnmos|rpmos|rcmos|tran|tranif0|tranif1|rtran|rtranif0|rtranif1|pullup|pulldown)\b"
)
_ERROR_AT = re.compile(r"(\S+?):(\d+): ERROR: syntax error")


def _switch_level_hint(message: str) -> str | None:
    """A hint when Yosys' syntax error points at a line with a switch-level construct (read from that file)."""
    m = _ERROR_AT.search(message)
    if m is None or int(m.group(2)) > 10_000_000:
        return None
    try:
        with open(m.group(1), "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if number == int(m.group(2)):
                    word = _SWITCH_LEVEL.search(raw[:4096].decode("utf-8", "replace"))
                    break
            else:
                return None
    except OSError:
        return None
    if word is None:
        return None
    return (
        f"'{word.group(1)}' is switch-level Verilog, which Yosys does not synthesize: describe that cell at gate or "
        "behavioural level (a flip-flop as always @(posedge CK) Q <= D;)"
    )


def explain_yosys_error(message: str, design: str) -> SynthesisError:
    """A Yosys failure as one line a user can act on; an internal assertion is named by its stage, the raw
    text kept in the error's ``detail`` (shown by the CLI's ``--verbose``)."""
    m = _ASSERT_RE.search(message)
    if m is None:
        hints = [hint for pattern, hint in _HINTS if pattern.search(message)]
        switch = _switch_level_hint(message)
        if switch is not None:
            hints.append(switch)
        err = SynthesisError(message + "".join(f" (hint: {h})" for h in hints))
        err.detail = message  # type: ignore[attr-defined]
        return err
    source = m.group(2).rsplit("/", 1)[-1]
    stage, cause = next(
        ((st, why) for key, (st, why) in _STAGES.items() if key in m.group(2)),
        (f"Yosys ({source})", "an internal check failed on this design"),
    )
    err = SynthesisError(f"{design}: {stage} failed: {cause} (Yosys internal assertion; --verbose shows it)")
    err.detail = message  # type: ignore[attr-defined]
    return err


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
    out_dir: str = "",
    sv: bool = False,
) -> str:
    """The Yosys script :func:`verilog_to_aig` runs (sources and include folders relative to its folder;
    ``ports.il`` and ``out.aig`` are written under ``out_dir``); ``sv`` reads ``.v`` files as SystemVerilog too."""
    prefix = f"{out_dir}/" if out_dir else ""
    flags = "".join(f" -I{d}" for d in include_dirs)
    flags += "".join(f" -D{k}" if v is None or v == "" else f" -D{k}={v}" for k, v in (defines or {}).items())
    reads = [f"log {_MARK}{out_dir}"]
    for src in sources:
        mode = " -sv" if sv or src.endswith((".sv", ".svh")) else ""
        reads.append(f"read_verilog{mode}{flags} {src}")
    return "\n".join(
        [
            *reads,
            f"hierarchy -check -top {_yosys_id(top)}",
            f"select {_yosys_id(top)}/x:*",
            f"write_rtlil -selected {prefix}ports.il",
            "select -clear",
            "proc",
            "flatten",
            "memory",
            "opt_clean",
            "check",
            "techmap",
            "opt -fast",
            "async2sync",
            "dffunmap",
            "setundef -undriven -zero",
            "aigmap",
            "opt_clean",
            f"write_aiger -symbols {prefix}out.aig",
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
            inside = p.resolve()
            for q in found:
                # a folder stands for its own files: a link out of it is named, never read (pass its target)
                if q.is_symlink() and not q.resolve().is_relative_to(inside):
                    raise CircuitFormatError(
                        q, f"a Verilog file inside {p}", got="a symlink leaving the folder"
                    )
            out.extend(found)
        elif p.exists() or p.is_symlink():
            check_input(p, what="Verilog file")  # a FIFO, a device, a symlink loop or a huge file: refused
            out.append(p)
        else:
            raise CircuitFormatError(p, "an existing Verilog file or folder", got="no such file")
    if not out:
        raise CircuitFormatError(None, "at least one Verilog source")
    return out


_READMEM_RE = re.compile(r'\$readmem[hb]\s*\(\s*"([^"]+)"')


def _confine(path: Path, directive: str, name: str, roots: Sequence[Path]) -> Path:
    """``path`` if it lies in one of the allowed folder trees, else a one-line error naming the directive.

    Yosys only sees its private folder (see :mod:`circuitml.yosys`); what a design may pull in is copied
    there first, and only from the input's own folder tree or an ``--include`` folder, so a design cannot
    make us read (and embed in its AIG) a file the user never handed over.
    """
    resolved = path.resolve()
    if not any(resolved.is_relative_to(r) for r in roots):
        raise CircuitFormatError(
            path if path.is_absolute() else name,
            f"{directive} of a file inside the design's folder tree or an --include folder",
            got=f'{directive} "{name}"',
        )
    return resolved


def _collect_readmem(texts: dict[Path, str], roots: Sequence[Path]) -> dict[tuple[int, str], bytes]:
    """``(source index, name) → content`` of the files ``$readmemh/b`` name, checked against ``roots``."""
    found: dict[tuple[int, str], bytes] = {}
    for k, (path, text) in enumerate(texts.items()):
        for name in _READMEM_RE.findall(text):
            cand = _confine(path.parent / name, "$readmem", name, roots)
            if cand.is_file() and not Path(name).is_absolute() and ".." not in Path(name).parts:
                found[(k, name)] = read_input(cand, what="$readmem file")
    return found


def _collect_includes(
    texts: dict[Path, str], include_dirs: Sequence[Path], roots: Sequence[Path] = ()
) -> dict[str, bytes]:
    """Files pulled in by ``include`` directives, found beside the including file or in ``include_dirs``
    (with ``roots``: only inside those folder trees)."""
    found: dict[str, bytes] = {}
    queue = list(texts.items())
    while queue:
        path, text = queue.pop()
        for name in _INCLUDE_RE.findall(text):
            if name in found:
                continue
            for base in (path.parent, *include_dirs):
                cand = base / name
                if roots:
                    _confine(cand, "`include", name, roots)
                if cand.is_file():
                    data = read_input(cand, what="include file")
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
    latch_error: bool = False,
) -> AIG:
    """Synthesize Verilog files into an :class:`AIG` with Yosys (combinational and sequential designs).

    A ``.v`` file that Yosys' Verilog-2005 mode rejects with a syntax error is read again as SystemVerilog
    (``read_verilog -sv``), as RTL in the wild mixes the two. Warnings that change what the AIG computes
    (a latch inferred, an undriven net set to 0, multiple drivers) are issued as :class:`SynthesisWarning`.

    Args:
        paths: Verilog/SystemVerilog files, or folders whose ``.v``/``.sv`` files are all read.
        top: top module; when omitted it is the one module no other module instantiates (see
            :func:`circuitml.verilog.find_top`), an error when that is ambiguous.
        include_dirs: extra folders searched for ```include`` files (the including file's folder always is).
        defines: preprocessor macros, ``{name: value}``.
        timeout: seconds before Yosys is killed.
        latch_error: an inferred latch (an incomplete ``if``/``case`` in a combinational ``always``) is a
            :class:`SynthesisError` instead of a warning.

    Returns:
        The AIG named after the top module; PIs/POs in port declaration order (bits LSB first), flip-flops
        cut into pseudo-PIs/POs (``num_latches``).

    Raises:
        CircuitFormatError: a missing file, or no/ambiguous top module.
        SynthesisError: Yosys' first error line (with file and line), a timeout naming the step, or an
            internal Yosys assertion named by the stage that failed (raw text in ``detail``).
    """
    job = _prepare(paths, top, include_dirs, defines, "")
    job.latch_error = latch_error
    return _synthesize(job, timeout)


@dataclass
class _Job:
    files: dict[str, bytes | str]
    aliases: dict[str, str]
    sources: list[str]
    includes: list[str]
    defines: Mapping[str, str] | None
    top: str
    design: str
    out_dir: str
    latch_error: bool = False

    def script(self, sv: bool = False) -> str:
        return synthesis_script(self.sources, self.top, self.includes, self.defines, self.out_dir, sv)

    def output(self, name: str) -> str:
        return f"{self.out_dir}/{name}" if self.out_dir else name


def _read_source(path: Path) -> bytes:
    """A Verilog file's bytes without a byte-order mark; a NUL byte in its first 64 KiB (a binary file, never
    source text) refuses it before the rest is read. Other bytes that are not UTF-8 pass: old sources carry
    Latin-1 in comments, and Yosys reads them."""
    text = functools.partial(check_text_prefix, file=str(path), utf8=False)
    return read_input(path, what="Verilog file", check=text).removeprefix(UTF8_BOM)


def _prepare(paths, top, include_dirs, defines, out_dir: str) -> _Job:
    """Files, script and names for one design; ``out_dir`` keeps designs of one batch apart."""
    sources = _expand_sources(paths)
    # one read per file; a byte-order mark (Windows editors) is dropped, Yosys rejects it as an invalid token
    data = {p: _read_source(p) for p in sources}
    texts = {p: raw.decode(errors="replace") for p, raw in data.items()}
    if top is None:
        from circuitml.verilog.parse import find_top

        top = find_top(texts)
    base = f"{out_dir}/" if out_dir else ""
    files: dict[str, bytes | str] = {}
    aliases: dict[str, str] = {}
    rel_sources = []
    for k, p in enumerate(sources):
        rel = f"{base}src{k}/{p.name}"
        files[rel] = data[p]
        aliases[rel] = str(p)
        rel_sources.append(rel)
    inc_dirs = [Path(d) for d in include_dirs]
    roots = [p.parent.resolve() for p in sources] + [d.resolve() for d in inc_dirs]
    for name, data in _collect_includes(texts, inc_dirs, roots).items():
        files[f"{base}inc/{name}"] = data
    for (k, name), data in _collect_readmem(texts, roots).items():
        files[f"{base}src{k}/{name}"] = data  # Yosys looks beside the reading source file
    design = ", ".join(p.name for p in sources)
    return _Job(files, aliases, rel_sources, [f"{base}inc"], defines, top, design, out_dir)


def verilog_text_to_aig(
    text: str,
    top: str | None = None,
    *,
    filename: str = "design.v",
    defines: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    latch_error: bool = False,
) -> AIG:
    """Like :func:`verilog_to_aig` for Verilog source held in memory (``filename`` appears in errors)."""
    if top is None:
        from circuitml.verilog.parse import find_top

        top = find_top({Path(filename): text})
    rel = f"src0/{Path(filename).name}"
    job = _Job({rel: text}, {rel: filename}, [rel], [], defines, top, filename, "", latch_error)
    return _synthesize(job, timeout)


def _sv_may_help(message: str, job: _Job) -> bool:
    return "syntax error" in message and any(s.endswith((".v", ".vh")) for s in job.sources)


def _synthesize(job: _Job, timeout: float, *, sv: bool = False) -> AIG:
    try:
        res = run_yosys(
            job.script(sv),
            files=job.files,
            outputs=[job.output("out.aig"), job.output("ports.il")],
            timeout=timeout,
            design=job.design,
            aliases=job.aliases,
        )
    except SynthesisError as exc:
        if not sv and _sv_may_help(str(exc), job):
            try:
                return _synthesize(job, timeout, sv=True)
            except SynthesisError as retry:
                if "syntax error" not in str(retry):
                    raise  # SystemVerilog mode read it and failed later: that error is the real one
        raise explain_yosys_error(str(exc), job.design) from None
    return _finish(job, res.outputs[job.output("out.aig")], res.outputs[job.output("ports.il")], res.log)


def _finish(job: _Job, aiger: bytes, ports_il: bytes, log: str) -> AIG:
    from circuitml.formats.aiger import parse_aiger

    notes = synthesis_warnings(log)
    latches = [w for w in notes if w.startswith("latch inferred")]
    if latches and job.latch_error:
        raise SynthesisError(
            f"{job.design}: {latches[0]} (an if/case that does not assign it on every path); "
            "latches are refused here"
        )
    raw = parse_aiger(aiger, file=f"<Yosys AIGER of {job.design}>", name=job.top)
    ports = _parse_ports(ports_il.decode(errors="replace"))
    try:
        aig = _in_port_order(raw, ports, job.top, job.design)
    except SynthesisError as exc:
        multi = [w for w in notes if w.startswith("multiple")]
        if multi:  # shorted nets merge ports; say why the port count is off
            raise SynthesisError(f"{exc}; Yosys reports {multi[0]}") from None
        raise
    for note in notes:
        warnings.warn(f"{job.design}: {note}", SynthesisWarning, stacklevel=4)
    return aig


def _design_logs(log: str) -> dict[str, str]:
    """A batch's log cut into the part of each design, by the marker line logged before each."""
    parts: dict[str, str] = {}
    current, lines = None, []
    for line in log.splitlines():
        if line.startswith(_MARK):
            if current is not None:
                parts[current] = "\n".join(lines)
            current, lines = line[len(_MARK) :].strip(), []
        else:
            lines.append(line)
    if current is not None:
        parts[current] = "\n".join(lines)
    return parts


def verilog_to_aig_many(
    designs: Iterable[str | Path | Sequence[str | Path] | tuple[Sequence[str | Path], str | None]],
    *,
    include_dirs: Iterable[str | Path] = (),
    defines: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    batch_size: int = 32,
    latch_error: bool = False,
) -> list[AIG | CircuitmlError]:
    """Synthesize many designs, several per Yosys process, so the ~0.3 s start of Yosys is paid once per batch.

    Each design is a file, a list of files, or ``(files, top)``. Designs of a batch run one after the other
    in one script (``design -reset`` between them). When one fails, its error is recorded and the batch
    continues in a new process from the next design, so results never depend on batch neighbours.

    Args:
        timeout: seconds allowed *per design*; a batch may take ``timeout`` times its size.
        batch_size: designs per Yosys process.
        latch_error: as in :func:`verilog_to_aig`.

    Returns:
        One entry per design, in order: its :class:`AIG`, or the :class:`CircuitmlError` it raised
        (exactly what :func:`verilog_to_aig` would have raised).
    """
    inc = list(include_dirs)
    results: list[AIG | CircuitmlError | None] = []
    jobs: list[tuple[int, _Job]] = []
    for k, item in enumerate(designs):
        paths, top = item if isinstance(item, tuple) else (item, None)
        results.append(None)
        try:
            job = _prepare(paths, top, inc, defines, f"d{k}")
            job.latch_error = latch_error
            jobs.append((k, job))
        except CircuitmlError as exc:
            results[k] = exc
    for start in range(0, len(jobs), max(1, batch_size)):
        pending = jobs[start : start + max(1, batch_size)]
        while pending:
            files: dict[str, bytes | str] = {}
            aliases: dict[str, str] = {}
            parts = []
            outputs = []
            for _, job in pending:
                files.update(job.files)
                aliases.update(job.aliases)
                # the marker is written only after out.aig is complete
                parts.append(
                    f"{job.script()}\ntee -q -o {job.out_dir}/done ls\ndesign -reset\nverilog_defines -reset"
                )
                outputs += [job.output("out.aig"), job.output("ports.il"), job.output("done")]
            res = run_yosys(
                "\n".join(parts),
                files=files,
                outputs=outputs,
                timeout=timeout * len(pending),
                aliases=aliases,
                allow_failure=True,
            )
            logs = _design_logs(res.log)
            rest = []
            for pos, (k, job) in enumerate(pending):
                if job.output("done") in res.outputs:
                    try:
                        results[k] = _finish(
                            job,
                            res.outputs[job.output("out.aig")],
                            res.outputs[job.output("ports.il")],
                            logs.get(job.out_dir, ""),
                        )
                    except CircuitmlError as exc:
                        results[k] = exc
                    continue
                # the first unfinished design is the one the run stopped at
                msg = (res.error or "Yosys stopped without an error message").replace(
                    "Yosys failed:", f"Yosys failed on {job.design}:", 1
                )
                msg = msg.replace(" s during step", f" s on {job.design} during step", 1)
                if _sv_may_help(msg, job):
                    try:
                        results[k] = _synthesize(job, timeout, sv=True)
                    except SynthesisError as retry:
                        results[k] = retry if "syntax error" not in str(retry) else SynthesisError(msg)
                else:
                    results[k] = explain_yosys_error(msg, job.design)
                rest = pending[pos + 1 :]
                break
            pending = rest
    return results  # type: ignore[return-value]


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
        # a symbol may list several aliases of one bit ("a y" when input a drives output y directly)
        index = {declared(alias): k for k, s in enumerate(symbols) for alias in s.split()}
        missing = [n for n in names if n not in index]
        if missing or len({index[n] for n in names}) != len(names):
            raise SynthesisError(
                f"{design}: cannot match Yosys' {what} symbols to the ports of {top} ({missing[:3]})"
            )
        return np.array([index[n] for n in names], dtype=np.int64)

    pi_perm = order(None if raw.pi_names is None else raw.pi_names[:n_in], in_names, "input")
    po_perm = order(None if raw.po_names is None else raw.po_names[:n_out], out_names, "output")

    # latches: named ones sorted by (register, bit), unnamed ones after them in Yosys' order
    names = [(raw.pi_names[n_in + k] if raw.pi_names else "") for k in range(n_lat)]
    names = [declared(nm.split()[0]) if nm.strip() else "" for nm in names]

    def latch_key(k: int) -> tuple:
        m = re.fullmatch(r"(.*)\[(-?\d+)\]", names[k])
        base, bit = (m.group(1), int(m.group(2))) if m else (names[k], -1)
        return (names[k] == "", base, bit, k)

    lat_perm = np.array(sorted(range(n_lat), key=latch_key), dtype=np.int64)
    latch_names = [names[k] or f"latch{j}" for j, k in enumerate(lat_perm)]

    lit_of_old = np.zeros(raw.num_nodes, dtype=np.int64)
    lit_of_old[1 + pi_perm] = 2 * (1 + np.arange(n_in, dtype=np.int64))
    lit_of_old[1 + n_in + lat_perm] = 2 * (1 + n_in + np.arange(n_lat, dtype=np.int64))
    ands = _canonical_strash(raw, lit_of_old)
    old_pos = np.concatenate([raw.pos[:n_out][po_perm], raw.pos[n_out:][lat_perm]])
    pos = lit_of_old[old_pos >> 1] ^ (old_pos & 1)
    return AIG(
        num_pis=raw.num_pis,
        ands=ands,
        pos=pos,
        num_latches=n_lat,
        latch_init=raw.latch_init[lat_perm],
        pi_names=in_names + latch_names,
        po_names=out_names + [f"{nm}$next" for nm in latch_names],
        name=top,
    )


def _canonical_strash(raw: AIG, lit_of_old: np.ndarray) -> np.ndarray:
    """Structurally hashed AND rows in a canonical order; fills ``lit_of_old`` for every old AND node.

    Yosys' ``aigmap`` leaves duplicate gates, and it numbers gates by internal name order, which shifts with
    whatever ran before in the same process. Here, one level at a time (numpy inside a level), each AND's
    fanins are renumbered, trivial ANDs (``x&0``, ``x&1``, ``x&x``, ``x&~x``) fold away, identical rows merge
    (strash, as in ABC), and the survivors are numbered by level, then by (larger, smaller) fanin literal.
    The result depends only on the graph and the PI/latch numbering already in ``lit_of_old``.
    """
    if raw.num_ands == 0:
        return np.zeros((0, 2), dtype=np.int64)
    first = raw.first_and
    level = raw.levels()[first:]
    order = np.argsort(level, kind="stable")
    bounds = np.flatnonzero(np.diff(level[order])) + 1
    rows: list[np.ndarray] = []
    next_id = first
    for idx in np.split(order, bounds):
        fan = raw.ands[idx]
        lits = lit_of_old[fan >> 1] ^ (fan & 1)
        hi, lo = lits.max(axis=1), lits.min(axis=1)
        result = np.full(idx.size, -1, dtype=np.int64)
        zero = (lo == 0) | (hi == (lo ^ 1))
        result[zero] = 0
        one = ~zero & (lo == 1)
        result[one] = hi[one]
        same = ~zero & ~one & (hi == lo)
        result[same] = lo[same]
        real = np.flatnonzero(result < 0)
        if real.size:
            uniq, inverse = np.unique(np.stack([hi[real], lo[real]], axis=1), axis=0, return_inverse=True)
            result[real] = 2 * (next_id + inverse.reshape(-1))
            rows.append(uniq)
            next_id += uniq.shape[0]
        lit_of_old[first + idx] = result
    return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
