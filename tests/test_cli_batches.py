"""Multi-file commands forgive bad files (``embed``, ``data qor``) and folders lock against concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from safetensors import safe_open

from circuitml.cli import main
from circuitml.encoders import build_encoder
from circuitml.errors import DatasetError
from circuitml.formats import write_circuit
from circuitml.locking import folder_lock
from tests.test_datasets_build import _circuit


@pytest.fixture
def encoder_dir(tmp_path: Path) -> Path:
    return build_encoder("gcn", hidden=8, num_layers=2).save_pretrained(tmp_path / "enc")


def test_embed_skips_bad_files_and_reports_them(tmp_path: Path, encoder_dir: Path, capsys) -> None:
    good = [tmp_path / "c0.aag", tmp_path / "c1.bench"]
    for k, path in enumerate(good):
        write_circuit(_circuit(k), path)
    bad = tmp_path / "broken.aag"
    bad.write_text("aag 3 2 0 1 1\n2\n4\n6\n6 2 9\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    out = tmp_path / "emb.safetensors"
    args = [
        "embed",
        "-e",
        str(encoder_dir),
        str(good[0]),
        str(bad),
        str(folder),
        str(good[1]),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 file(s) skipped" in text and "broken.aag" in text and "directory" in text
    assert "embedded 2 circuit(s)" in text
    with safe_open(str(out), "pt") as fh:
        assert sorted(fh.keys()) == ["c0/graph", "c0/node", "c1/graph", "c1/node"]
    out.unlink()
    assert main([*args, "--strict"]) == 2
    assert "broken.aag" in capsys.readouterr().err and not out.exists()
    assert main(["embed", "-e", str(encoder_dir), str(bad), "-o", str(out)]) == 2
    assert "no circuit could be read" in capsys.readouterr().err and not out.exists()


def test_embed_takes_threads_and_device(tmp_path: Path, encoder_dir: Path, capsys) -> None:
    src = tmp_path / "c0.aag"
    write_circuit(_circuit(0), src)
    out = tmp_path / "emb.safetensors"
    base = ["embed", "-e", str(encoder_dir), str(src), "-o", str(out)]
    assert main([*base, "--threads", "1", "--device", "cpu"]) == 0
    with safe_open(str(out), "pt") as fh:
        assert fh.get_tensor("c0/graph").shape == (8,)
    out.unlink()
    for bad in (["--device", "tpu"], ["--threads", "0"]):
        assert main([*base, *bad]) == 2
        err = capsys.readouterr().err
        assert bad[0] in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_data_qor_on_a_missing_source_leaves_no_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qor"
    assert main(["data", "qor", str(tmp_path / "nothere.aig"), "--out", str(out), "--recipes", "2"]) == 2
    assert "nothere.aig" in capsys.readouterr().err and not out.exists()


def _try_lock(folder: str, queue) -> None:
    try:
        with folder_lock(folder, timeout=0.3):
            queue.put("locked")
    except DatasetError as exc:
        queue.put(str(exc))


def test_folder_lock_excludes_a_second_process(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    with folder_lock(tmp_path / "ds"):
        proc = ctx.Process(target=_try_lock, args=(str(tmp_path / "ds"), queue))
        proc.start()
        proc.join(30)
        assert "kept it locked" in queue.get(timeout=5)
    proc = ctx.Process(target=_try_lock, args=(str(tmp_path / "ds"), queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) == "locked"  # released when the holder leaves the block


def test_embed_bf16_option_stays_close_to_float32_and_is_recorded(tmp_path: Path, capsys) -> None:
    enc_dir = build_encoder("deepgcn", hidden=16, num_layers=3).save_pretrained(tmp_path / "enc")
    src = tmp_path / "c0.aag"
    write_circuit(_circuit(0), src)
    outs = {}
    for dtype in ("float32", "bf16"):
        out = tmp_path / f"{dtype}.safetensors"
        assert main(["embed", "-e", str(enc_dir), str(src), "-o", str(out), "--dtype", dtype]) == 0
        with safe_open(str(out), "pt") as fh:
            assert fh.metadata()["dtype"] == dtype
            outs[dtype] = fh.get_tensor("c0/node")
    ref, low = outs["float32"], outs["bf16"]
    assert low.dtype == ref.dtype and not low.equal(ref)  # bf16 really ran, and wrote float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert (
        main(["embed", "-e", str(enc_dir), str(src), "-o", str(tmp_path / "x.safetensors"), "--dtype", "fp8"])
        == 2
    )
    assert "--dtype" in capsys.readouterr().err
