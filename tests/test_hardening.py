"""Issue 15 items 3, 4, 6: children bounded and bound to us, Yosys and manifests confined, normal file modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from circuitml.errors import CircuitFormatError, DatasetError, SynthesisError
from circuitml.fileio import atomic_write
from circuitml.yosys import parse_memory, run_yosys

# a recursive macro: Yosys' preprocessor expands it forever, growing (a synthesis that never ends)
RUNAWAY = "`define A `A\nmodule t(input a, output y); assign y = `A; endmodule\n"


def _processes_in(folder: Path) -> list[int]:
    """Pids whose working directory lies under ``folder`` (the Yosys children run in their temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux) to find the children")
def test_kill9_of_the_parent_mid_synthesis_leaves_no_child_and_no_temp_folder(tmp_path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from circuitml.yosys import run_yosys\n"
            f"run_yosys('read_verilog t.v', files={{'t.v': {RUNAWAY!r}}}, timeout=600)\n",
        ],
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        deadline = time.monotonic() + 120
        while not _processes_in(scratch):  # wait until Yosys runs in its temp folder
            assert time.monotonic() < deadline and parent.poll() is None, "Yosys never started"
            time.sleep(0.2)
        time.sleep(1.0)  # inside Yosys now
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        # the child's SIGTERM handler removes its folder, then exits; on a loaded machine that takes a moment
        deadline = time.monotonic() + 60
        while (_processes_in(scratch) or list(scratch.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_in(scratch) == [], "a Yosys child outlived its killed parent"
        assert list(scratch.iterdir()) == [], "a temp folder outlived the killed parent"
    finally:
        for pid in _processes_in(scratch):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


@pytest.mark.slow
def test_max_memory_stops_a_runaway_synthesis(monkeypatch) -> None:
    monkeypatch.setenv("CIRCUITML_MAX_MEMORY", str(300 << 20))
    start = time.monotonic()
    with pytest.raises(SynthesisError, match="Yosys failed"):
        run_yosys("read_verilog t.v", files={"t.v": RUNAWAY}, timeout=300)
    assert time.monotonic() - start < 200  # the cap, not the timeout, ended it


def test_timeout_setting_overrides_a_callers_default(monkeypatch) -> None:
    monkeypatch.setenv("CIRCUITML_TIMEOUT", "0.5")
    with pytest.raises(SynthesisError, match="timed out after 0.5 s"):
        run_yosys("read_verilog t.v", files={"t.v": RUNAWAY}, timeout=600)


def test_memory_sizes_parse() -> None:
    assert (
        parse_memory("2G") == 2 << 30 and parse_memory("512m") == 512 << 20 and parse_memory("1000") == 1000
    )
    with pytest.raises(Exception, match="--max-memory"):
        parse_memory("lots")


# ------------------------------------------------------------------------------------------- confinement
def test_yosys_sees_no_host_folder() -> None:
    # without YOWASP_MOUNT, yowasp pre-opens every top-level folder of the host and this read works
    # (it would then fail later, on Verilog syntax: the file was read)
    with pytest.raises(SynthesisError, match=r"File `/etc/passwd' not found"):
        run_yosys("read_verilog /etc/passwd", timeout=120)


def test_include_outside_the_design_tree_is_refused(tmp_path) -> None:
    from circuitml.verilog import verilog_to_aig

    src = tmp_path / "top.v"
    src.write_text('`include "/etc/passwd"\nmodule t(input a, output y); assign y = ~a; endmodule\n')
    with pytest.raises(CircuitFormatError, match=r'`include "/etc/passwd"') as err:
        verilog_to_aig([src])
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not Path("/etc/machine-id").is_file(), reason="no /etc/machine-id on this machine")
def test_readmem_outside_the_design_tree_is_refused(tmp_path) -> None:
    from circuitml.verilog import verilog_to_aig

    src = tmp_path / "rom.v"
    src.write_text(
        textwrap.dedent(
            """\
            module rom(input [1:0] a, output [7:0] y);
              reg [7:0] m [0:3];
              initial $readmemh("/etc/machine-id", m);
              assign y = m[a];
            endmodule
            """
        )
    )
    with pytest.raises(CircuitFormatError, match=r'\$readmem "/etc/machine-id"'):
        verilog_to_aig([src])


def test_readmem_inside_the_design_tree_still_works(tmp_path) -> None:
    from circuitml.verilog import verilog_to_aig

    (tmp_path / "rom.hex").write_text("01\n02\n04\n08\n")
    src = tmp_path / "rom.v"
    src.write_text(
        'module rom(input [1:0] a, output [3:0] y);\n  reg [3:0] m [0:3];\n  initial $readmemh("rom.hex", m);\n'
        "  assign y = m[a];\nendmodule\n"
    )
    aig = verilog_to_aig([src])
    assert aig.num_inputs == 2 and aig.num_outputs == 4 and aig.num_ands > 0


def _dataset_with(tmp_path: Path, verilog: str) -> Path:
    from circuitml.datasets.format import empty_manifest, write_manifest

    root = tmp_path / "ds"
    root.mkdir()
    m = empty_manifest()
    m["records"] = [
        {"id": "a", "family": "f", "source": "a.v", "sha256": "0" * 64, "verilog": verilog, "num_pis": 1,
         "num_pos": 1, "num_ands": 0, "depth": 0}
    ]  # fmt: skip
    write_manifest(root, m)
    return root


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "verilog/../../x.v"])
def test_a_manifest_may_only_name_files_inside_the_dataset(tmp_path, path) -> None:
    from circuitml.datasets import CircuitDataset
    from circuitml.datasets.export import export_dataset

    root = _dataset_with(tmp_path, path)
    with pytest.raises(DatasetError, match=r"records\[0\]\.verilog: expected a path inside the dataset root"):
        CircuitDataset(root)
    with pytest.raises(DatasetError):
        export_dataset(root, tmp_path / "out", with_verilog=True)
    assert not (tmp_path / "out" / "a.v").exists()


def test_a_symlink_out_of_the_dataset_is_not_followed(tmp_path) -> None:
    from circuitml.datasets.dataset import CircuitDataset

    root = _dataset_with(tmp_path, "verilog/a.v")
    (root / "verilog").mkdir()
    (root / "verilog" / "a.v").symlink_to("/etc/passwd")
    with pytest.raises(DatasetError, match="a link out"):
        CircuitDataset(root).verilog_source(0)


def test_a_checkpoint_may_not_point_at_tensors_elsewhere(tmp_path) -> None:
    from circuitml.errors import CheckpointError
    from circuitml.pretrain import checkpoint
    from circuitml.pretrain.checkpoint import load_checkpoint

    bad = {"format": checkpoint.CHECKPOINT_FORMAT, "version": checkpoint.CHECKPOINT_VERSION, "step": 1,
           "tensors": "../../secret.safetensors", "sha256": "0", "size": 1, "state": {}}  # fmt: skip
    path = tmp_path / "step_00000001.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="key 'tensors': expected a file name beside the checkpoint"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_gives_the_umask_mode_of_a_plain_open(tmp_path, umask, mode) -> None:
    import circuitml.fileio as fileio

    old = os.umask(umask)
    try:
        fileio._UMASK = umask  # read once at import; this test stands for a process started under `umask`
        atomic_write(tmp_path / "f.json", "{}")
        with open(tmp_path / "plain", "w") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
        fileio._UMASK = fileio._umask()
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain").stat().st_mode & 0o777 == mode


def test_dataset_files_are_readable_by_others(tmp_path) -> None:
    from circuitml.datasets.format import empty_manifest, write_manifest

    old = os.umask(0o022)
    try:
        write_manifest(tmp_path, empty_manifest())
    finally:
        os.umask(old)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o044 == 0o044


# ------------------------------------------------------------------------------------------- reader bounds
@pytest.mark.parametrize(
    "text, message",
    [
        ("library (x) {" + "g(a) {" * 5000, "nested at most 64 deep"),
        ('library (x) { wire_load ("w") { fanout_length (inf, 1); } }', "numbers in wire_load"),
        (
            'library (x) { wire_load ("w") { fanout_length (1000000000000, 1); } }',
            "fanout counts in 0..100000",
        ),
        (
            "library (x) { cell (c) { pin (" + "a " * 2000 + ") { direction : output; } } }",
            "at most 1024 pins",
        ),
    ],
)
def test_liberty_bounds_are_checked_before_recursing_or_allocating(tmp_path, text, message) -> None:
    from circuitml.liberty import read_liberty

    (tmp_path / "x.lib").write_text(text)
    with pytest.raises(CircuitFormatError, match=message):
        read_liberty(tmp_path / "x.lib")


def test_liberty_from_a_device_is_refused() -> None:
    from circuitml.liberty import read_liberty

    with pytest.raises(CircuitFormatError, match="a regular Liberty file"):
        read_liberty("/dev/urandom")


def test_openabc_bounds(tmp_path) -> None:
    import zipfile

    from circuitml.datasets.openabc import read_recipes_csv, read_reference_scripts

    (tmp_path / "r.csv").write_text("synth_id,recipe_abc\n1000000000000,rewrite\n")
    with pytest.raises(DatasetError, match="synthesis id in 0..999999"):
        read_recipes_csv(tmp_path / "r.csv")
    with zipfile.ZipFile(tmp_path / "s.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("referenceScripts/abc0.script", b"\n" * (2 << 20))  # 2 MiB of newlines, 2 KiB zipped
    with pytest.raises(DatasetError, match="at most 1048576 bytes"):
        read_reference_scripts(tmp_path / "s.zip")
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as zf:
        zf.writestr("referenceScripts/abc99999999999.script", b"write_bench a\nrewrite\nwrite_bench b\n")
    with pytest.raises(DatasetError, match="synthesis id"):
        read_reference_scripts(tmp_path / "t.zip")
    # a member name with a newline (fuzz seed 15) must not break the error onto two lines
    with zipfile.ZipFile(tmp_path / "u.zip", "w") as zf:
        zf.writestr("odd\nname/abc1.script", b"write_bench a\nrewrite\n")
    with pytest.raises(DatasetError) as err:
        read_reference_scripts(tmp_path / "u.zip")
    assert "\n" not in str(err.value) and "odd\\nname/abc1.script" in str(err.value)


def test_json_bounds() -> None:
    from circuitml.fileio import load_json

    for data, message in [
        (b"[" * 100_000, "nested at most"),
        (b"9" * 5000, "integers of at most"),
        (b'{"a": 1e400}', "a finite number"),
        (b'{"a": "\xff"}', "UTF-8"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_json(data, "f.json", error=DatasetError)


def test_a_pickled_language_model_is_refused_in_one_line(tmp_path) -> None:
    from circuitml.errors import ConfigError
    from circuitml.lm import load_lm

    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ConfigError, match="only safetensors weights are accepted, found pytorch_model.bin"):
        load_lm(tmp_path)


def test_safetensors_bytes_are_stable_with_several_metadata_keys(tmp_path) -> None:
    # safetensors orders metadata by a randomly seeded HashMap: two identical saves gave two files (CI failure)
    import json

    import torch
    from safetensors import safe_open

    from circuitml.fileio import safetensors_bytes
    from circuitml.pretrain.checkpoint import save_checkpoint

    tensors = {
        "w": torch.arange(6.0).reshape(2, 3),
        "b": torch.tensor([1, 2]),
        "h": torch.ones(3, dtype=torch.bfloat16),
    }
    meta = {"step": "1", "format": "x", "note": 'é\n"', "z": "q"}
    outs = {safetensors_bytes(tensors, meta) for _ in range(24)}
    assert len(outs) == 1
    path = tmp_path / "t.safetensors"
    path.write_bytes(outs.pop())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == meta
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v)
    shas = set()
    for i in range(8):
        record = save_checkpoint(tmp_path / f"run{i}", 1, tensors, {"step": 1})
        shas.add(json.loads(record.read_text())["sha256"])
    assert len(shas) == 1
