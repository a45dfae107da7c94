"""Hostile inputs and real-world folders: FIFOs, devices, huge sparse files, symlink loops, dangling links, byte-order
marks, unwritable outputs. Each case must end in one clear line naming the path (exit 2 from the CLI), never a
hang, a traceback or a read of the whole file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from circuitml.errors import CircuitFormatError
from circuitml.fileio import MAX_INPUT_BYTES, read_input_text
from circuitml.formats import read_aiger, read_bench, read_circuit
from circuitml.verilog.preprocess import preprocess_file
from tests.test_cli_invalid import _run

C17_BENCH = """# c17
INPUT(1)
INPUT(2)
INPUT(3)
INPUT(6)
INPUT(7)
OUTPUT(22)
OUTPUT(23)
10 = NAND(1, 3)
11 = NAND(3, 6)
16 = NAND(2, 11)
19 = NAND(11, 7)
22 = NAND(10, 16)
23 = NAND(16, 19)
"""
TINY_AAG = "aag 3 2 0 1 1\n2\n4\n6\n6 2 4\n"


def _cli(argv: list[str], capfd) -> tuple[int, str]:
    code, text = _run(argv, capfd)  # cli.main under a 60 s alarm: a hang fails the test instead of the suite
    return code, text.strip()


def _one_line_error(code: int, text: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in text and len(text.splitlines()) == 1, (code, text)
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs named pipes")
    path = tmp_path / "pipe.aig"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_by_every_reader_instead_of_blocking(fifo: Path, tmp_path: Path, capfd) -> None:
    def hang(signum, frame):
        raise TimeoutError("a reader blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)  # before the fix, opening the pipe waited for a writer forever
    try:
        for read in (read_aiger, read_bench, read_circuit, read_input_text, preprocess_file):
            with pytest.raises(CircuitFormatError, match="FIFO"):
                read(fifo)
        verilog = tmp_path / "pipe.v"
        os.mkfifo(verilog)
        with pytest.raises(CircuitFormatError, match="FIFO"):
            read_circuit(verilog)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    _one_line_error(*_cli(["convert", str(fifo), str(tmp_path / "o.aag")], capfd), "pipe.aig", "FIFO")
    assert not (tmp_path / "o.aag").exists()


def test_a_character_device_is_refused(tmp_path: Path, capfd) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("needs /dev/zero")
    link = tmp_path / "zero.bench"
    link.symlink_to("/dev/zero")
    with pytest.raises(CircuitFormatError, match="character device"):
        read_circuit(link)
    _one_line_error(*_cli(["simulate", str(link)], capfd), "zero.bench", "character device")


@pytest.mark.parametrize("suffix", [".aig", ".aag", ".bench", ".v"])
def test_an_oversized_sparse_file_is_refused_from_its_size(tmp_path: Path, suffix: str, capfd) -> None:
    path = tmp_path / f"huge{suffix}"
    with path.open("wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)  # sparse: no disk used, and reading it whole took minutes and GBs
    with pytest.raises(CircuitFormatError, match="at most 1024 MiB"):
        read_circuit(path)
    _one_line_error(*_cli(["convert", str(path), str(tmp_path / "o.aig")], capfd), f"huge{suffix}", "MiB")


def test_a_byte_order_mark_is_read_as_nothing(tmp_path: Path) -> None:
    plain = tmp_path / "c17.bench"
    plain.write_text(C17_BENCH)
    marked = tmp_path / "c17_bom.bench"
    marked.write_bytes(b"\xef\xbb\xbf" + C17_BENCH.encode())
    a, b = read_bench(plain), read_bench(marked)
    assert (a.num_inputs, a.num_outputs, a.num_ands) == (b.num_inputs, b.num_outputs, b.num_ands) == (5, 2, 6)
    assert (a.ands == b.ands).all()
    # an undecodable byte after the mark is still named at its offset in the file
    marked.write_bytes(b"\xef\xbb\xbf" + b"INPUT(a)\n\xff\n")
    with pytest.raises(CircuitFormatError, match=r"c17_bom.bench:2 \(byte 12\)"):
        read_bench(marked)
    v = tmp_path / "bom.v"
    v.write_bytes(b"\xef\xbb\xbfmodule m(input a, output y); assign y = ~a; endmodule\n")
    assert read_input_text(v).startswith("module m")
    assert "\ufeff" not in preprocess_file(v).text


def test_symlink_loops_and_dangling_links_in_a_folder_are_named_not_fatal(tmp_path: Path) -> None:
    from datasets.build import discover_sources

    root = tmp_path / "designs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "tiny.aag").write_text(TINY_AAG)
    (root / "loop1.aig").symlink_to("loop2.aig")
    (root / "loop2.aig").symlink_to("loop1.aig")
    (root / "gone.aig").symlink_to("nowhere.aig")
    (root / "self").symlink_to(".")
    items, problems = discover_sources([root])  # raised RuntimeError("Symlink loop ...") before the fix
    assert [i.paths[0].name for i in items] == ["tiny.aag"]
    reasons = dict(problems)
    assert reasons[str(root / "loop1.aig")] == "symlink loop, not read"
    assert reasons[str(root / "loop2.aig")] == "symlink loop, not read"
    assert reasons[str(root / "gone.aig")] == "dangling symlink, not read"
    # named one by one, and a FIFO or an oversized file given by name is a problem of its own, not a crash
    huge = tmp_path / "huge.aig"
    with huge.open("wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)
    items, problems = discover_sources([root / "loop1.aig", root / "gone.aig", huge])
    assert not items and [Path(p).name for p, _ in problems] == ["loop1.aig", "gone.aig", "huge.aig"]
    assert "at most 1024 MiB" in problems[2][1]


def test_cli_names_a_symlink_loop_and_a_dangling_link(tmp_path: Path, capfd) -> None:
    (tmp_path / "a.aig").symlink_to("b.aig")
    (tmp_path / "b.aig").symlink_to("a.aig")
    (tmp_path / "gone.aig").symlink_to("nowhere.aig")
    _one_line_error(*_cli(["simulate", str(tmp_path / "a.aig")], capfd), "a.aig", "symbolic links")
    _one_line_error(*_cli(["simulate", str(tmp_path / "gone.aig")], capfd), "gone.aig", "dangling symlink")


@pytest.mark.parametrize("where", ["", ".", "folder", "afile/inside.aig", "/proc/no-such/x.aig"])
def test_an_unwritable_output_is_one_line_naming_it_not_our_temp_file(
    tmp_path: Path, monkeypatch, where
) -> None:
    from circuitml.errors import OutputError
    from circuitml.fileio import atomic_write

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError) as info:  # "" and "." died in os.replace with EBUSY, a traceback
        atomic_write(where, b"data")
    text = str(info.value)
    assert text.startswith(f"{Path(where)}: cannot write") and ".tmp" not in text and "\n" not in text, text
    assert isinstance(info.value, OSError)  # callers that handle a failed write still catch it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]  # no temp file left


def test_embed_refuses_to_write_over_one_of_its_inputs(tmp_path: Path, capfd) -> None:
    circuit = tmp_path / "c17.bench"
    circuit.write_text(C17_BENCH)
    link = tmp_path / "link.bench"
    link.symlink_to(circuit)
    for out in (circuit, link):  # the circuit was silently replaced by its embeddings
        code, text = _cli(["embed", "-e", "no-such-encoder", str(circuit), "-o", str(out)], capfd)
        _one_line_error(code, text, "one of the input circuits")
    code, text = _cli(["embed", "-e", "no-such-encoder", str(circuit), "-o", str(tmp_path)], capfd)
    _one_line_error(code, text, "is a directory")
    assert circuit.read_text() == C17_BENCH


def test_a_folder_path_through_a_file_says_so(tmp_path: Path, capfd) -> None:
    (tmp_path / "tiny.aag").write_text(TINY_AAG)
    (tmp_path / "afile").write_text("x")
    code, text = _cli(
        ["data", "build", str(tmp_path / "tiny.aag"), "-o", str(tmp_path / "ds"), "-j", "1"], capfd
    )
    assert code == 0, text
    code, text = _cli(["data", "export", str(tmp_path / "ds"), str(tmp_path / "afile")], capfd)
    _one_line_error(code, text, "afile: is a file, expected a folder")  # was "afile: file exists"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300"])
def test_a_timeout_at_the_edges_is_refused_before_a_child_starts(tmp_path: Path, capfd, value) -> None:
    circuit = tmp_path / "tiny.aag"
    circuit.write_text(TINY_AAG)
    # nan, inf and 1e300 died in the child wait with a traceback; 0 and -1 ran Yosys and "timed out after 0 s"
    for argv in (["abc", str(circuit)], ["convert", str(circuit), str(tmp_path / "o.aig")]):
        _one_line_error(*_cli([*argv, "--timeout", value], capfd), "--timeout: expected a positive number")
    assert not (tmp_path / "o.aig").exists()


def test_an_abc_recipe_that_touches_files_is_a_usage_error(tmp_path: Path, capfd) -> None:
    circuit = tmp_path / "tiny.aag"
    circuit.write_text(TINY_AAG)
    for script in ("quit", "strash; write_aiger x.aig", "read y.aig"):  # was a ValueError traceback
        _one_line_error(*_cli(["abc", str(circuit), "--script", script], capfd), "is not allowed in a recipe")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--seed", "-1"], "--seed: expected a non-negative integer"),
        (["--patterns", "1000000000000"], "--patterns: expected 1 to"),  # 7 TiB of input words
        (["--patterns", "99999999999999999999"], "--patterns: expected 1 to"),  # an OverflowError
    ],
)
def test_simulation_sizes_and_seeds_at_the_edges(tmp_path: Path, capfd, options, message) -> None:
    circuit = tmp_path / "c17.bench"
    circuit.write_text(C17_BENCH)
    _one_line_error(*_cli(["simulate", str(circuit), *options], capfd), message)
    code, text = _cli(["equiv", str(circuit), str(circuit), "--method", "sim", *options], capfd)
    assert code == 2 and "Traceback" not in text and message in text, text


def test_simulate_out_names_a_file(tmp_path: Path, capfd, monkeypatch) -> None:
    circuit = tmp_path / "c17.bench"
    circuit.write_text(C17_BENCH)
    monkeypatch.chdir(tmp_path)
    _one_line_error(*_cli(["simulate", str(circuit), "--out", ""], capfd), "--out: expected a .npy file")
    code, _ = _cli(["simulate", str(circuit), "--out", "probs"], capfd)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["c17.bench", "probs.npy"]


@pytest.mark.slow  # a fresh interpreter importing torch and PyG: several CPU seconds
def test_building_an_encoder_leaves_no_pyg_template_file_in_the_temp_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import os, sys, tempfile\n"
        "from circuitml.encoders import build_encoder\n"
        "build_encoder('deepgcn', hidden=8, num_layers=1)\n"
        "files = [getattr(m, '__file__', '') or '' for n, m in list(sys.modules.items()) if n.endswith('_propagate')]\n"
        "assert any(os.path.dirname(f) == tempfile.gettempdir() for f in files), 'PyG wrote none'\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # every process that built a GENConv left torch_geometric.nn.conv.gen_conv_GENConv_propagate_*.py behind
    assert not list(tmp_path.glob("torch_geometric.*.py"))


def test_gzip_compressed_circuits_are_named_as_such(tmp_path: Path, capfd) -> None:
    import gzip

    from datasets.build import discover_sources

    packed = gzip.compress(C17_BENCH.encode(), mtime=0)
    (tmp_path / "c17.bench.gz").write_bytes(packed)
    (tmp_path / "c17.bench").write_bytes(packed)  # compressed under the plain name
    (tmp_path / "c17.aig").write_bytes(packed)
    for name in ("c17.bench", "c17.aig"):  # were "got '\x1f\x8b...'" and "got 'non-ASCII bytes'"
        _one_line_error(*_cli(["simulate", str(tmp_path / name)], capfd), name, "gzip data (gunzip it first)")
    _one_line_error(*_cli(["simulate", str(tmp_path / "c17.bench.gz")], capfd), "gunzip it first")
    ignored: list[tuple[str, str]] = []
    discover_sources([tmp_path], ignored=ignored)
    assert (str(tmp_path / "c17.bench.gz"), "gzip-compressed, not read (gunzip it first)") in ignored


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", float("nan")),
        ("lr", -1.0),
        ("encoder_lr", float("nan")),
        ("lr", float("inf")),
        ("weight_decay", float("nan")),
    ],
)
def test_training_rates_at_the_edges_are_config_errors(key: str, value: float) -> None:
    from circuitml.errors import ConfigError
    from tasks.common import TrainConfig

    # lr -1 / nan reached torch's AdamW (a bare ValueError, a traceback); encoder_lr nan passed "<= 0" and trained
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        TrainConfig(**{key: value}).validate()


def test_evaluate_with_no_seed_is_a_usage_error(tmp_path: Path, capfd) -> None:
    argv = ["evaluate", "probability", "--data", str(tmp_path), "--out", str(tmp_path / "ev"), "--seeds", "0"]
    _one_line_error(
        *_cli(argv, capfd), "--seeds: expected at least 1"
    )  # was a traceback in the report's plots


def test_pretrain_seed_and_stop_after_at_the_edges(tmp_path: Path) -> None:
    from circuitml.errors import ConfigError
    from circuitml.pretrain.config import PretrainConfig
    from circuitml.pretrain.trainer import train

    config = PretrainConfig()
    config.run.seed = -1
    with pytest.raises(ConfigError, match="run.seed: expected an integer >= 0"):  # numpy's ValueError before
        config.validate()
    for step in (0, -1):  # -1 ran no step and ended with exit 0
        with pytest.raises(ConfigError, match="--stop-after: expected a step >= 1"):
            train(PretrainConfig(), tmp_path / "run", stop_after=step)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["data", "build", "none"], ["data", "generate", "-n", "0"]])
def test_build_timeout_is_checked_up_front(tmp_path: Path, capfd, command) -> None:
    argv = [*command, "--out", str(tmp_path / "ds"), "--timeout", "nan"]
    _one_line_error(*_cli(argv, capfd), "--timeout: expected a positive number")  # exit 0 when no child ran


def test_load_encoder_on_an_overlong_name_is_a_checkpoint_error() -> None:
    from circuitml.encoders import load_encoder
    from circuitml.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not an encoder directory nor a shipped encoder name"):
        load_encoder("x" * 300)  # was OSError: [Errno 36] File name too long


def test_abc_refuses_an_output_suffix_it_cannot_write_before_running_abc(
    tmp_path: Path, capfd, monkeypatch
) -> None:
    import circuitml.yosys

    def never(*args, **kwargs):  # the suffix is checked first: ABC must not run for nothing
        raise AssertionError("ABC ran before the output suffix was checked")

    monkeypatch.setattr(circuitml.yosys, "run_abc", never)
    circuit = tmp_path / "tiny.aag"
    circuit.write_text(TINY_AAG)
    out = tmp_path / "opt.txt"
    _one_line_error(*_cli(["abc", str(circuit), "--out", str(out)], capfd), "an output suffix among")
    assert not out.exists()


def test_verilog_tokens_max_len_needs_ids_and_a_positive_length(tmp_path: Path, capfd) -> None:
    src = tmp_path / "t.v"
    src.write_text("module t(input a, output y); assign y = a; endmodule\n")
    for options in (["--ids", "--max-len", "0"], ["--ids", "--max-len", "-1"], ["--max-len", "4"]):
        _one_line_error(*_cli(["verilog", "tokens", str(src), *options], capfd), "--max-len")  # was ignored
    code, text = _cli(["verilog", "tokens", str(src), "--ids", "--max-len", "4"], capfd)
    assert code == 0 and len(__import__("json").loads(text.splitlines()[-1])) == 4


@pytest.mark.parametrize("patterns", [0, -1, 1.5, True])
def test_signal_probability_refuses_pattern_counts_it_cannot_honour(patterns) -> None:
    from circuitml.aig import AIGBuilder
    from circuitml.errors import ConfigError
    from circuitml.sim import signal_probability

    b = AIGBuilder("t")
    x, y = b.add_pi(), b.add_pi()
    b.add_po(b.and_(x, y))
    with pytest.raises(ConfigError, match="--patterns"):  # 0 was a plain ValueError, 1.5 an IndexError
        signal_probability(b.build(), patterns)


def test_a_fifo_inside_a_folder_is_listed_as_ignored_not_passed_over(tmp_path: Path) -> None:
    from datasets.build import discover_sources

    (tmp_path / "c17.bench").write_text(C17_BENCH)
    os.mkfifo(tmp_path / "pipe.aig")
    ignored: list[tuple[str, str]] = []
    found = discover_sources([tmp_path], ignored=ignored)  # never opens the pipe (that would block)
    assert (str(tmp_path / "pipe.aig"), "a FIFO (named pipe), not read") in ignored
    assert "pipe.aig" not in str(found)
