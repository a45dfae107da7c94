"""A Verilog preprocessor in Python: ```define``/```include``/```ifdef`` before pyverilog, no ``iverilog`` needed.

Implements the compiler directives of IEEE 1364-2005 §19 (and the SystemVerilog 1800-2017 §22 extensions that
RTL in the wild uses): ```define`` with and without arguments (default argument values, line continuations,
````` token pasting and ```"`` stringification), ```undef``, ```undefineall``, ```ifdef``/```ifndef``/
```elsif``/```else``/```endif``, ```include "file"`` (searched in the including file's folder, then the include
folders), and the predefined ```__FILE__``/```__LINE__``. Directives that only matter to simulators
(```timescale``, ```default_nettype``, ```celldefine``, ```resetall``, ```pragma``, ```line``, …) are dropped.

Every output line remembers the file and line it came from (:attr:`Preprocessed.origin`), so a parser error in
the output is reported against the user's own file and line. Comments are removed (newlines kept), so one input
line gives one output line except where an ```include`` inserts the lines of another file.

Resource bounds: macro expansion stops at depth 64 and includes at depth 32 (a macro or file that refers to
itself is an error, not a hang), and the output is capped at 64 MiB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from circuitml.errors import CircuitFormatError
from circuitml.fileio import read_input_text

__all__ = ["Preprocessed", "preprocess_verilog", "preprocess_file"]

_MAX_MACRO_DEPTH = 64
_MAX_INCLUDE_DEPTH = 32
_MAX_OUTPUT = 64 << 20
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DROPPED = {
    "timescale",
    "default_nettype",
    "celldefine",
    "endcelldefine",
    "resetall",
    "unconnected_drive",
    "nounconnected_drive",
    "pragma",
    "line",
    "begin_keywords",
    "end_keywords",
    "default_decay_time",
    "default_trireg_strength",
    "delay_mode_distributed",
    "delay_mode_path",
    "delay_mode_unit",
    "delay_mode_zero",
    "protect",
    "endprotect",
    "suppress_faults",
    "nosuppress_faults",
    "enable_portfaults",
    "disable_portfaults",
}
_CONDITIONALS = {"ifdef", "ifndef", "elsif", "else", "endif"}


@dataclass
class Macro:
    """A ```define``: parameter names (``None``: an object-like macro), their defaults, and the body."""

    params: list[str] | None
    defaults: list[str | None]
    body: str


@dataclass
class Preprocessed:
    """Preprocessed text and, per output line (1-based index - 1), the ``(file, line)`` it came from."""

    text: str
    origin: list[tuple[str, int]] = field(default_factory=list)
    defines: dict[str, Macro] = field(default_factory=dict)

    def locate(self, line: int) -> tuple[str, int]:
        """The source ``(file, line)`` of output line ``line`` (1-based)."""
        if not self.origin:
            return ("", line)
        return self.origin[min(max(line, 1), len(self.origin)) - 1]


class _Cond:
    """One open ```ifdef``: whether a branch was taken, whether the current one is active, where it opened."""

    __slots__ = ("taken", "active", "line", "seen_else")

    def __init__(self, taken: bool, active: bool, line: int) -> None:
        self.taken, self.active, self.line, self.seen_else = taken, active, line, False


class _Preprocessor:
    def __init__(self, include_dirs: list[Path], defines: dict[str, Macro]) -> None:
        self.include_dirs = include_dirs
        self.defines = defines
        self.lines: list[str] = []
        self.origin: list[tuple[str, int]] = []
        self.size = 0

    # ------------------------------------------------------------------------------------------ files
    def run_file(self, text: str, file: str, folder: Path | None, depth: int = 0) -> None:
        if depth > _MAX_INCLUDE_DEPTH:
            raise CircuitFormatError(file, f"includes nested at most {_MAX_INCLUDE_DEPTH} deep", got="deeper")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        conds: list[_Cond] = []
        cur: list[str] = []
        line = 1
        i, n = 0, len(text)

        def active() -> bool:
            return all(c.active for c in conds)

        def flush() -> None:
            nonlocal cur
            out = "".join(cur)
            self.size += len(out) + 1
            if self.size > _MAX_OUTPUT:
                raise CircuitFormatError(file, f"preprocessed text under {_MAX_OUTPUT >> 20} MiB", line=line)
            # a macro call whose arguments span lines expands to text with newlines: each piece is an output line
            # of its own, mapped to the call's line, so ``origin`` keeps one entry per output line
            parts = out.split("\n")
            self.lines.extend(parts)
            self.origin.extend([(file, line)] * len(parts))
            cur = []

        while i < n:
            ch = text[i]
            if ch == "\n":
                flush()
                line += 1
                i += 1
            elif ch == "/" and text.startswith("//", i):
                j = text.find("\n", i)
                i = n if j < 0 else j
            elif ch == "/" and text.startswith("/*", i):
                j = text.find("*/", i + 2)
                if j < 0:
                    raise CircuitFormatError(file, "a closed /* comment", line=line, got="end of file")
                for _ in range(text.count("\n", i, j)):
                    flush()
                    line += 1
                cur.append(" ")
                i = j + 2
            elif ch == '"':
                j = _string_end(text, i)
                if j < 0 and active():
                    raise CircuitFormatError(file, 'a closing "', line=line, got="end of line")
                if j < 0:  # skipped code need not be well-formed
                    j = i + 1
                elif active():
                    cur.append(text[i:j])
                i = j
            elif ch == "`":
                m = _IDENT.match(text, i + 1)
                if m is None:
                    if active():
                        cur.append(ch)
                    i += 1
                    continue
                name = m.group(0)
                i = m.end()
                if name in _CONDITIONALS:
                    i = self._conditional(name, text, i, conds, file, line)
                elif not active():
                    continue
                elif name == "define":
                    i, used = self._define(text, i, file, line)
                    for _ in range(used):
                        flush()
                        line += 1
                elif name in ("undef",):
                    m2 = _IDENT.match(text, _skip_blanks(text, i))
                    if m2 is None:
                        raise CircuitFormatError(file, "a macro name after `undef", line=line)
                    self.defines.pop(m2.group(0), None)
                    i = m2.end()
                elif name == "undefineall":
                    self.defines.clear()
                elif name == "include":
                    i = self._include(text, i, file, folder, line, depth, cur, flush)
                elif name in _DROPPED:
                    j = text.find("\n", i)
                    i = n if j < 0 else j
                elif name == "__FILE__":
                    cur.append(f'"{file}"')
                elif name == "__LINE__":
                    cur.append(str(line))
                else:
                    i, expansion, used = self._call(name, text, i, file, line)
                    cur.append(self._expand(expansion, file, line, 1))
                    for _ in range(used):
                        flush()
                        line += 1
            else:
                if active():
                    # copy a run of plain characters at once
                    j = i + 1
                    while j < n and text[j] not in '\n/"`':
                        j += 1
                    cur.append(text[i:j])
                    i = j
                else:
                    i += 1
        if cur or not text.endswith("\n"):
            flush()
        if conds:
            raise CircuitFormatError(
                file, "`endif closing this `ifdef", line=conds[-1].line, got="end of file"
            )

    # ------------------------------------------------------------------------------------------ directives
    def _conditional(self, name: str, text: str, i: int, conds: list[_Cond], file: str, line: int) -> int:
        if name in ("ifdef", "ifndef", "elsif"):
            m = _IDENT.match(text, _skip_blanks(text, i))
            if m is None:
                raise CircuitFormatError(file, f"a macro name after `{name}", line=line)
            defined = m.group(0) in self.defines
            i = m.end()
        if name in ("ifdef", "ifndef"):
            outer = all(c.active for c in conds)
            hit = defined if name == "ifdef" else not defined
            conds.append(_Cond(taken=hit, active=hit, line=line))
            if not outer:  # a nested conditional in a skipped branch never activates
                conds[-1].taken, conds[-1].active = True, False
            return i
        if not conds:
            raise CircuitFormatError(file, f"an open `ifdef before `{name}", line=line, got=f"`{name}")
        top = conds[-1]
        if name == "endif":
            conds.pop()
        elif name == "else":
            if top.seen_else:
                raise CircuitFormatError(file, "one `else per `ifdef", line=line, got="a second `else")
            top.seen_else = True
            top.active, top.taken = not top.taken, True
        else:  # elsif
            if top.seen_else:
                raise CircuitFormatError(file, "`elsif before `else", line=line, got="`elsif after `else")
            top.active = not top.taken and defined
            top.taken = top.taken or defined
        return i

    def _define(self, text: str, i: int, file: str, line: int) -> tuple[int, int]:
        """Parse a ```define`` at ``i`` (after the keyword); returns the end and the newlines it consumed."""
        m = _IDENT.match(text, _skip_blanks(text, i))
        if m is None:
            raise CircuitFormatError(file, "a macro name after `define", line=line)
        name = m.group(0)
        i = m.end()
        params: list[str] | None = None
        defaults: list[str | None] = []
        if i < len(text) and text[i] == "(":  # a parameter list only when "(" follows the name directly
            close = _matching_paren(text, i)
            if close < 0:
                raise CircuitFormatError(file, f"a closing ')' in the parameters of `{name}", line=line)
            params = []
            for part in _split_args(text[i + 1 : close]):
                pname, eq, default = part.partition("=")
                pname = pname.strip()
                if not _IDENT.fullmatch(pname):
                    raise CircuitFormatError(
                        file, f"parameter names in `define {name}(...)", line=line, got=repr(part.strip())
                    )
                params.append(pname)
                defaults.append(default.strip() if eq else None)
            i = close + 1
        # the body runs to the end of the line; a backslash before the newline continues it
        body: list[str] = []
        used = 0
        while True:
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            chunk = text[i:j]
            if chunk.endswith("\\"):
                body.append(chunk[:-1])
                used += 1
                i = j + 1
                continue
            body.append(chunk)
            i = j
            break
        joined = _strip_comments(" ".join(body)).strip()
        self.defines[name] = Macro(params, defaults, joined)
        return i, used

    def _include(self, text, i, file, folder, line, depth, cur, flush) -> int:
        j = _skip_blanks(text, i)
        m = re.compile(r'"([^"\n]+)"|<([^>\n]+)>').match(text, j)
        if m is None:
            raise CircuitFormatError(file, "a file name in quotes after `include", line=line)
        name = m.group(1) or m.group(2)
        target = self._find_include(name, folder)
        if target is None:
            searched = ", ".join(str(d) for d in ([folder] if folder else []) + self.include_dirs)
            raise CircuitFormatError(
                file, f"include file {name!r} in {searched or 'no folder'}", line=line, got="not found"
            )
        if cur:  # text before the directive stays on its own line
            flush()
        try:
            data = read_input_text(target, what="include file")
        except OSError as exc:
            raise CircuitFormatError(
                file, f"a readable include file {name!r}", line=line, got=str(exc)
            ) from None
        self.run_file(data, str(target), target.parent, depth + 1)
        return m.end()

    def _find_include(self, name: str, folder: Path | None) -> Path | None:
        path = Path(name)
        bases = ([folder] if folder is not None else []) + self.include_dirs
        if path.is_absolute():
            # an absolute include is honoured only inside the folders the user handed over
            for base in bases:
                if path.resolve().is_relative_to(base.resolve()) and path.is_file():
                    return path
            return None
        for base in bases:
            cand = base / path
            if cand.is_file():
                return cand
        return None

    def _call(self, name: str, text: str, i: int, file: str, line: int) -> tuple[int, str, int]:
        """A macro use at ``i`` (after its name): the end, the substituted body, newlines consumed."""
        macro = self.defines.get(name)
        if macro is None:
            raise CircuitFormatError(file, f"a defined macro `{name}", line=line, got="undefined")
        if macro.params is None:
            return i, macro.body, 0
        j = i
        while j < len(text) and text[j] in " \t\n":
            j += 1
        if j >= len(text) or text[j] != "(":
            raise CircuitFormatError(file, f"arguments after `{name}", line=line, got="none")
        close = _matching_paren(text, j)
        if close < 0:
            raise CircuitFormatError(file, f"a closing ')' in the call of `{name}", line=line)
        raw = text[j + 1 : close]
        args = [a.strip() for a in _split_args(raw)] if raw.strip() or macro.params else []
        if len(args) == 1 and args[0] == "" and len(macro.params) == 1 and macro.defaults[0] is not None:
            args = []
        if len(args) > len(macro.params):
            raise CircuitFormatError(
                file, f"{len(macro.params)} argument(s) to `{name}", line=line, got=str(len(args))
            )
        values: dict[str, str] = {}
        for k, pname in enumerate(macro.params):
            if k < len(args) and args[k] != "":
                values[pname] = args[k]
            elif macro.defaults[k] is not None:
                values[pname] = macro.defaults[k]  # type: ignore[assignment]
            elif k < len(args):
                values[pname] = ""
            else:
                raise CircuitFormatError(
                    file, f"{len(macro.params)} argument(s) to `{name}", line=line, got=str(len(args))
                )
        body = _substitute(macro.body, values)
        used = text.count("\n", i, close + 1)
        return close + 1, body, used

    def _expand(self, body: str, file: str, line: int, depth: int) -> str:
        """Expand the macro uses inside a substituted body (each line of the body stays on one line)."""
        if "`" not in body:
            return body
        if depth > _MAX_MACRO_DEPTH:
            raise CircuitFormatError(
                file, f"macros nested at most {_MAX_MACRO_DEPTH} deep", line=line, got="a recursive macro"
            )
        out: list[str] = []
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == '"':
                j = _string_or_rest(body, i)
                out.append(body[i:j])
                i = j
            elif ch == "`":
                m = _IDENT.match(body, i + 1)
                if m is None:
                    out.append(ch)
                    i += 1
                    continue
                name = m.group(0)
                if name == "__LINE__":
                    out.append(str(line))
                    i = m.end()
                    continue
                if name == "__FILE__":
                    out.append(f'"{file}"')
                    i = m.end()
                    continue
                i, sub, _ = self._call(name, body, m.end(), file, line)
                out.append(self._expand(sub, file, line, depth + 1))
                self.size += len(out[-1])
                if self.size > _MAX_OUTPUT:
                    raise CircuitFormatError(
                        file, f"preprocessed text under {_MAX_OUTPUT >> 20} MiB", line=line, got="more"
                    )
            else:
                out.append(ch)
                i += 1
        return "".join(out)


# ---------------------------------------------------------------------------------------------- helpers


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    """Index after the string literal starting at ``text[i] == '"'``; -1 when the line ends first."""
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        if c == "\n":
            return -1
        j += 1
    return -1


def _string_or_rest(text: str, i: int) -> int:
    """End of the string literal at ``i``, or of the text when it is not closed (inside a macro body)."""
    end = _string_end(text, i)
    return len(text) if end < 0 else end


def _matching_paren(text: str, i: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``i`` (strings and nested brackets skipped), -1 if none."""
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == '"':
            end = _string_end(text, j)
            if end < 0:
                return -1
            j = end
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j if c == ")" else -1
        j += 1
    return -1


def _split_args(text: str) -> list[str]:
    """Split at top-level commas (not inside brackets or strings)."""
    parts: list[str] = []
    depth = 0
    start = 0
    j = 0
    while j < len(text):
        c = text[j]
        if c == '"':
            j = _string_or_rest(text, j)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:j])
            start = j + 1
        j += 1
    parts.append(text[start:])
    return parts


def _strip_comments(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        if body[i] == '"':
            j = _string_or_rest(body, i)
            out.append(body[i:j])
            i = j
        elif body.startswith("//", i):
            break
        elif body.startswith("/*", i):
            j = body.find("*/", i + 2)
            i = len(body) if j < 0 else j + 2
            out.append(" ")
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _substitute(body: str, values: Mapping[str, str]) -> str:
    """Replace parameter names by their arguments (whole identifiers only), then apply ````` and ```"``."""
    if not values:
        return body.replace("``", "")

    def repl(m: re.Match) -> str:
        word = m.group(0)
        if m.start() > 0 and body[m.start() - 1] == "`" and not body.startswith("``", m.start() - 2):
            return word  # a macro name such as `WIDTH, not a parameter
        return values.get(word, word)

    out = _IDENT.sub(repl, body)
    return out.replace('`"', '"').replace("``", "")


def _parse_defines(defines: Mapping[str, str | None] | None) -> dict[str, Macro]:
    return {k: Macro(None, [], "" if v is None else str(v)) for k, v in (defines or {}).items()}


def preprocess_verilog(
    text: str,
    file: str = "<text>",
    *,
    folder: str | Path | None = None,
    include_dirs: Iterable[str | Path] = (),
    defines: Mapping[str, str | None] | None = None,
) -> Preprocessed:
    """Preprocess Verilog source held in memory.

    Args:
        text: the source.
        file: its name in error messages and :attr:`Preprocessed.origin`.
        folder: where ```include`` looks first (the source's own folder).
        include_dirs: folders searched next, in order.
        defines: predefined macros, ``{name: value or None}`` (like ``-DNAME=value``).

    Raises:
        CircuitFormatError: an undefined macro, a missing include file, an unbalanced ```ifdef``, a wrong
            number of macro arguments, a recursive macro or include — naming the file and line.
    """
    pp = _Preprocessor([Path(d) for d in include_dirs], _parse_defines(defines))
    pp.run_file(text, file, Path(folder) if folder is not None else None)
    return Preprocessed("\n".join(pp.lines) + "\n", pp.origin, pp.defines)


def preprocess_file(
    path: str | Path,
    *,
    include_dirs: Iterable[str | Path] = (),
    defines: Mapping[str, str | None] | None = None,
) -> Preprocessed:
    """Preprocess a Verilog file (its own folder is searched first for ```include`` files)."""
    path = Path(path)
    try:
        text = read_input_text(path, what="Verilog file")
    except IsADirectoryError:
        raise CircuitFormatError(path, "a Verilog file", got="a directory") from None
    except OSError as exc:
        raise CircuitFormatError(path, "a readable Verilog file", got=exc.strerror or str(exc)) from None
    return preprocess_verilog(
        text,
        str(path),
        folder=path.parent,
        include_dirs=include_dirs,
        defines=defines,
    )
