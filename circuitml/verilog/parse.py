"""Parse Verilog with pyverilog into modules, ports, the instantiation graph and the top module.

pyverilog (Takamaeda-Yamazaki, "Pyverilog: A Python-Based Hardware Design Processing Toolkit for Verilog
HDL", ARC 2015) parses Verilog-2005 with a PLY LALR parser. Its own preprocessor runs ``iverilog -E``; here the
Python preprocessor of :mod:`circuitml.verilog.preprocess` runs instead, so nothing outside pip is needed. Each
file is preprocessed on its own (include folders: the file's folder, then ``include_dirs``), and a syntax error
is mapped back to the file and line it is in (an included file's own line). The PLY parser is built once per
process.

When pyverilog rejects a file that Yosys reads (SystemVerilog and other constructs pyverilog lacks), the
design is still described: ports come from Yosys (``read_verilog -sv``; ``write_rtlil`` of the port wires), the
instantiation graph from the lexer of :mod:`circuitml.verilog.tokens`, and a :class:`VerilogFallbackWarning` says
so. Only when Yosys rejects it too is the input malformed: :class:`CircuitFormatError` with pyverilog's line.
"""

from __future__ import annotations

import re
import tempfile
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from circuitml.errors import CircuitFormatError, SynthesisError
from circuitml.fileio import read_input_text
from circuitml.verilog.preprocess import preprocess_file
from circuitml.verilog.tokens import lex_verilog

__all__ = [
    "VerilogPort",
    "VerilogModule",
    "VerilogDesign",
    "VerilogFallbackWarning",
    "parse_verilog",
    "find_top",
    "module_graph",
]


class VerilogFallbackWarning(UserWarning):
    """pyverilog could not parse a design that Yosys reads; the description came from Yosys and the lexer."""


@dataclass(frozen=True)
class VerilogPort:
    """A module port: ``width`` is ``None`` when its range is not a constant expression."""

    name: str
    direction: str  # "input", "output" or "inout"
    width: int | None = 1
    msb: int | None = None
    lsb: int | None = None


@dataclass
class VerilogModule:
    """One module: its ports in declaration order and the modules it instantiates (with instance names)."""

    name: str
    ports: list[VerilogPort] = field(default_factory=list)
    instances: list[tuple[str, str]] = field(default_factory=list)  # (module type, instance name)
    file: str = ""

    @property
    def inputs(self) -> list[VerilogPort]:
        return [p for p in self.ports if p.direction == "input"]

    @property
    def outputs(self) -> list[VerilogPort]:
        return [p for p in self.ports if p.direction == "output"]


@dataclass
class VerilogDesign:
    """A parsed design.

    Attributes:
        modules: modules by name, in source order.
        top: the top module (given, or the one module no other module instantiates).
        files: the source files.
        backend: ``"pyverilog"``, or ``"yosys"`` when the fallback described the design.
    """

    modules: dict[str, VerilogModule]
    top: str
    files: list[str]
    backend: str = "pyverilog"

    @property
    def top_module(self) -> VerilogModule:
        return self.modules[self.top]

    def hierarchy(self) -> dict[str, list[str]]:
        """Instantiation graph: module → module types it instantiates (known modules only, no repeats)."""
        return {
            name: list(dict.fromkeys(t for t, _ in mod.instances if t in self.modules))
            for name, mod in self.modules.items()
        }


# --------------------------------------------------------------------------------------- top detection


def module_graph(texts: Mapping[Path | str, str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Module names (→ file) and, per module, the names of other modules it mentions, from the lexer only.

    A module counts as instantiated when its name appears as an identifier inside another module's body;
    cheap (no parsing), used for top detection of large netlists and for the fallback path.
    """
    defined: dict[str, str] = {}
    bodies: dict[str, set[str]] = {}
    for path, text in texts.items():
        current = None
        toks = lex_verilog(text)
        for k, t in enumerate(toks):
            if t.kind == "keyword" and t.text in ("module", "macromodule", "primitive", "interface"):
                if k + 1 < len(toks) and toks[k + 1].kind == "ident":
                    current = toks[k + 1].text
                    defined.setdefault(current, str(path))
                    bodies.setdefault(current, set())
            elif t.kind == "keyword" and t.text in ("endmodule", "endprimitive", "endinterface"):
                current = None
            elif t.kind == "ident" and current is not None and t.text != current:
                if k > 0 and toks[k - 1].text in ("module", "macromodule", "primitive", "interface"):
                    continue
                bodies[current].add(t.text)
    used = {name: {n for n in mentioned if n in defined} for name, mentioned in bodies.items()}
    return defined, used


def find_top(texts: Mapping[Path | str, str]) -> str:
    """The one module that no other module instantiates.

    Raises:
        CircuitFormatError: no module at all, or several candidates (pass ``top=`` then).
    """
    defined, used = module_graph(texts)
    files = ", ".join(str(p) for p in texts) or "<no sources>"
    if not defined:
        raise CircuitFormatError(files, "at least one module definition", got="none")
    instantiated = set().union(*used.values()) if used else set()
    tops = [m for m in defined if m not in instantiated]
    if len(tops) == 1:
        return tops[0]
    if not tops:
        raise CircuitFormatError(files, "a module that no other module instantiates (the top)", got="a cycle")
    raise CircuitFormatError(files, "a single top module (pass top=...)", got="candidates " + ", ".join(tops))


# --------------------------------------------------------------------------------------- pyverilog


_parser_lock = threading.Lock()
_parser = None
_parser_dir: tempfile.TemporaryDirectory | None = None


def _get_parser():
    global _parser, _parser_dir
    if _parser is None:
        from pyverilog.vparser.parser import VerilogParser

        # PLY writes its tables beside the parser; keep them out of the user's working folder
        _parser_dir = tempfile.TemporaryDirectory(prefix="circuitml-pyverilog-")
        _parser = VerilogParser(outputdir=_parser_dir.name, debug=False)
    return _parser


def _const(node) -> int | None:
    from pyverilog.vparser import ast

    if isinstance(node, ast.IntConst):
        text = node.value.replace("_", "").lower()
        try:
            if "'" in text:
                _, rest = text.split("'", 1)
                rest = rest.lstrip("s")
                base = {"b": 2, "o": 8, "d": 10, "h": 16}[rest[0]]
                return int(rest[1:], base)
            return int(text)
        except (ValueError, KeyError, IndexError):
            return None
    if isinstance(node, ast.Minus):
        a, b = _const(node.left), _const(node.right)
        return None if a is None or b is None else a - b
    if isinstance(node, ast.Plus):
        a, b = _const(node.left), _const(node.right)
        return None if a is None or b is None else a + b
    return None


def _port(name: str, direction: str, width_node) -> VerilogPort:
    name = name[1:].rstrip() if name.startswith("\\") else name  # escaped identifier \a[0] is named a[0]
    if width_node is None:
        return VerilogPort(name, direction, 1, None, None)
    msb, lsb = _const(width_node.msb), _const(width_node.lsb)
    width = None if msb is None or lsb is None else abs(msb - lsb) + 1
    return VerilogPort(name, direction, width, msb, lsb)


def _walk(node):
    """Module items that can hold port declarations or instances; expressions and statements are skipped
    (walking every expression node of a 600 KB netlist costs seconds)."""
    from pyverilog.vparser import ast

    descend = (ast.ModuleDef, ast.Decl, ast.GenerateStatement, ast.Block, ast.IfStatement, ast.ForStatement)
    stack = [node]
    while stack:
        cur = stack.pop()
        yield cur
        if isinstance(cur, descend):
            stack.extend(reversed([c for c in cur.children() if c is not None]))


def _describe_module(mdef, file: str) -> VerilogModule:
    from pyverilog.vparser import ast

    directions = {ast.Input: "input", ast.Output: "output", ast.Inout: "inout"}
    declared: dict[str, VerilogPort] = {}
    instances: list[tuple[str, str]] = []
    for node in _walk(mdef):
        if type(node) in directions and node.name not in declared:
            declared[node.name] = _port(node.name, directions[type(node)], node.width)
        elif isinstance(node, ast.InstanceList):
            for inst in node.instances:
                instances.append((inst.module, inst.name))
    ports = []
    for p in mdef.portlist.ports if mdef.portlist is not None else []:
        if isinstance(p, ast.Ioport):
            first = p.first
            ports.append(_port(first.name, directions.get(type(first), "inout"), first.width))
        elif isinstance(p, ast.Port) and p.name in declared:
            ports.append(declared[p.name])
        elif isinstance(p, ast.Port):
            ports.append(VerilogPort(p.name, "inout", None))
    return VerilogModule(name=mdef.name, ports=ports, instances=instances, file=file)


def _parse_one(
    path: Path, include_dirs: list[Path], defines: Mapping[str, str | None]
) -> list[VerilogModule]:
    from pyverilog.vparser import ast
    from pyverilog.vparser.parser import ParseError

    pre = preprocess_file(path, include_dirs=include_dirs, defines=defines)
    text = pre.text
    if not re.search(r"\b(?:macro)?module\b", text):
        return []  # a file of macros or `timescale only (e.g. *_defines.v): nothing to parse
    with _parser_lock:
        parser = _get_parser()
        try:
            parser.lexer.lexer.lineno = 1  # PLY keeps counting lines across inputs otherwise
            tree = parser.parse(text)
        except ParseError as exc:
            m = re.search(r"line:(\d+)", str(exc))
            where, line = pre.locate(int(m.group(1))) if m else (str(path), None)
            near = re.search(r"(?:near|before): (.*)$", str(exc))
            raise CircuitFormatError(
                where, "Verilog-2005 syntax", line=line, got=(near.group(1) if near else str(exc))
            ) from None
        except RecursionError:
            raise CircuitFormatError(
                path, "Verilog nested less deeply", got="too deep for the parser"
            ) from None
        except Exception as exc:  # pyverilog's grammar actions raise assorted errors on odd input
            raise CircuitFormatError(
                path, "Verilog-2005 syntax", got=f"{type(exc).__name__}: {exc}"
            ) from None
    return [
        _describe_module(d, str(path)) for d in tree.description.definitions if isinstance(d, ast.ModuleDef)
    ]


def _expand(sources) -> list[Path]:
    from circuitml.verilog.synth import _expand_sources

    return _expand_sources(sources)


def parse_verilog(
    sources: str | Path | Iterable[str | Path],
    top: str | None = None,
    *,
    include_dirs: Iterable[str | Path] = (),
    defines: Mapping[str, str | None] | None = None,
    fallback: bool = True,
) -> VerilogDesign:
    """Parse Verilog files (or folders of them) into a :class:`VerilogDesign`.

    Args:
        sources: files or folders (their ``.v``/``.sv`` files).
        top: top module; detected when omitted (the module nobody instantiates).
        include_dirs: folders searched for ```include`` files after the including file's folder.
        defines: preprocessor macros.
        fallback: when pyverilog fails, describe the design through Yosys if Yosys reads it (with a
            :class:`VerilogFallbackWarning`); when False, pyverilog's error is raised directly.

    Raises:
        CircuitFormatError: malformed Verilog (file, line, what was expected), a top module that does not
            exist, or an ambiguous top.
    """
    paths = _expand(sources)
    inc = [Path(d) for d in include_dirs]
    defines = dict(defines or {})
    modules: dict[str, VerilogModule] = {}
    backend = "pyverilog"
    try:
        for p in paths:
            if p.suffix.lower() in (".sv", ".svh"):
                raise CircuitFormatError(p, "Verilog-2005 (pyverilog does not parse SystemVerilog)")
            for mod in _parse_one(p, inc, defines):
                modules.setdefault(mod.name, mod)
    except CircuitFormatError as exc:
        if not fallback:
            raise
        modules = _fallback_modules(paths, inc, defines, exc)
        backend = "yosys"
    if not modules:
        raise CircuitFormatError(", ".join(map(str, paths)), "at least one module definition", got="none")
    if top is None:
        instantiated = {t for m in modules.values() for t, _ in m.instances}
        tops = [name for name in modules if name not in instantiated]
        if len(tops) != 1:
            got = "candidates " + ", ".join(tops) if tops else "every module is instantiated"
            raise CircuitFormatError(
                ", ".join(map(str, paths)), "a single top module (pass top=...)", got=got
            )
        top = tops[0]
    elif top not in modules:
        raise CircuitFormatError(
            ", ".join(map(str, paths)), f"a module named {top!r}", got=", ".join(modules)
        )
    return VerilogDesign(modules=modules, top=top, files=[str(p) for p in paths], backend=backend)


def _fallback_modules(
    paths: list[Path], inc: list[Path], defines: Mapping[str, str | None], original: CircuitFormatError
) -> dict[str, VerilogModule]:
    from circuitml.verilog.synth import _collect_includes, _parse_ports
    from circuitml.yosys import run_yosys

    texts = {p: read_input_text(p, what="Verilog file") for p in paths}
    files: dict[str, bytes | str] = {}
    aliases: dict[str, str] = {}
    reads = []
    flags = " -Iinc" + "".join(f" -D{k}" if not v else f" -D{k}={v}" for k, v in defines.items())
    for k, p in enumerate(paths):
        rel = f"src{k}/{p.name}"
        files[rel] = texts[p]
        aliases[rel] = str(p)
        reads.append(f"read_verilog -sv{flags} {rel}")
    for name, data in _collect_includes(texts, inc).items():
        files[f"inc/{name}"] = data
    script = "\n".join([*reads, "select x:*", "write_rtlil -selected ports.il"])
    try:
        res = run_yosys(script, files=files, outputs=["ports.il"], timeout=120, aliases=aliases)
    except SynthesisError:
        raise original from None
    warnings.warn(
        f"pyverilog could not parse the design ({original}); modules and ports come from Yosys",
        VerilogFallbackWarning,
        stacklevel=3,
    )
    defined, used = module_graph(texts)
    rtlil = res.outputs["ports.il"].decode(errors="replace")
    modules: dict[str, VerilogModule] = {}
    for chunk in re.split(r"^module ", rtlil, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        name = header.strip().lstrip("\\")
        ports = []
        for p in _parse_ports(body):
            if p.upto:
                msb, lsb = p.offset, p.offset + p.width - 1
            else:
                msb, lsb = p.offset + p.width - 1, p.offset
            ports.append(
                VerilogPort(
                    p.name, p.direction, p.width, msb if p.width > 1 else None, lsb if p.width > 1 else None
                )
            )
        insts = [(t, "") for t in sorted(used.get(name, ()))]
        modules[name] = VerilogModule(name=name, ports=ports, instances=insts, file=defined.get(name, ""))
    # keep source order
    order = {n: k for k, n in enumerate(defined)}
    return dict(sorted(modules.items(), key=lambda kv: order.get(kv[0], len(order))))
