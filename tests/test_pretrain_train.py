"""End-to-end MGVGA pretraining on a tiny generated dataset: falling loss, exact resume after SIGKILL,
2-process DDP == 1 process, save → load → embed, damaged checkpoints, the CLI and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from circuitml.cli import main as cli_main
from circuitml.errors import ConfigError
from circuitml.pretrain.config import config_to_dict, load_config
from circuitml.pretrain.logging import read_metrics
from circuitml.pretrain.trainer import resume_config, train

TINY = [
    "model.encoder={kind: deepgcn, hidden: 16, num_layers: 2}",
    "model.verilog_hidden=16",
    "model.verilog_heads=2",
    "vga.heads=2",
    "mgm.decoder_layers=1",
    "data.batch_size=6",
    "data.max_tokens=96",
    "schedule.warmup_steps=2",
    "run.tensorboard=false",
    "run.plot=false",
    "run.progress=false",
    "run.threads=1",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    # run.threads=1 calls torch.set_num_threads in this process; give the other tests their threads back
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from circuitml.datasets import generate

    root = tmp_path_factory.mktemp("pretrain_data") / "ds"
    generate(
        root,
        6,
        families=["comparator", "mux", "parity", "decoder", "adder_rc", "encoder"],
        widths=[2, 3],
        progress=False,
    )
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import torch, sys; torch.set_num_threads(1); from circuitml.cli import main; main()",
        *args,
    ]


def _sets(extra: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    items = [item for item in [*TINY, *extra] if not item.startswith(drop)]
    return [x for item in items for x in ("--set", item)]


def _losses(out: Path) -> list[list[float]]:
    return [[float(r[k]) for k in r if k.startswith("loss")] for r in read_metrics(out / "metrics.csv")]


def test_loss_falls_and_encoder_is_exported(tiny_dataset, tmp_path):
    cfg = load_config(None, [*TINY, f"data.root={tiny_dataset}", "schedule.steps=30", "optim.lr=3e-3"])
    result = train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first = float(rows[0]["loss"])
    last = sum(float(r["loss"]) for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    for key in ("loss_mgm_type", "loss_vga"):
        assert sum(float(r[key]) for r in rows[-5:]) / 5 < float(rows[0][key])
    assert result.encoder_dir is not None
    card = (result.encoder_dir / "README.md").read_text()
    assert "final_losses" in card and "steps" in card

    # resuming reads the checkpoint's own settings; changing the model under a checkpoint is refused
    again = resume_config(tmp_path / "run", ["schedule.steps=31"])
    assert config_to_dict(again)["model"] == config_to_dict(cfg)["model"] and again.schedule.steps == 31
    other = load_config(None, [*TINY, f"data.root={tiny_dataset}", "model.verilog_hidden=8"])
    with pytest.raises(ConfigError, match=r"section \[model\] differs"):
        train(other, tmp_path / "run", resume=True)


def test_stop_after_then_resume_in_process_equals_one_run(tiny_dataset, tmp_path):
    from circuitml.pretrain import load_config as load  # the lazy package exports
    from circuitml.pretrain import train as run

    sets = [*TINY, f"data.root={tiny_dataset}", "schedule.steps=9", "run.checkpoint_every=100"]
    run(load(None, sets), tmp_path / "full")
    part = run(load(None, sets), tmp_path / "parts", stop_after=4)
    assert part.step == 4 and part.encoder_dir is None
    torch.manual_seed(1234)  # whatever the process did in between must not matter
    rest = run(load(None, sets), tmp_path / "parts", resume=True)
    assert rest.step == 9 and rest.first and len(read_metrics(tmp_path / "parts" / "metrics.csv")) == 9
    assert (tmp_path / "parts" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tiny_dataset, tmp_path):
    common = ["--data", str(tiny_dataset), *_sets(["schedule.steps=40", "run.checkpoint_every=4"])]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cli("pretrain", "--out", str(full), *common), check=True, env=_env(), timeout=300)
    proc = subprocess.Popen(_cli("pretrain", "--out", str(cut), *common), env=_env())
    target = cut / "checkpoints" / "step_00000008.json"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=30)
    assert not (cut / "encoder").exists()
    subprocess.run(
        _cli("pretrain", "--out", str(cut), "--resume", *common), check=True, env=_env(), timeout=300
    )
    assert (cut / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    a = load_file(str(full / "encoder" / "model.safetensors"))
    b = load_file(str(cut / "encoder" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tiny_dataset, tmp_path):
    steps = ["schedule.steps=6", "run.checkpoint_every=100"]
    port = _free_port()
    procs = []
    for rank in range(2):
        env = _env()
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
        )
        cmd = _cli("pretrain", "--out", str(tmp_path / "ddp"), "--data", str(tiny_dataset), *_sets(steps))
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    # one process, same GLOBAL batch, two accumulation micro-steps (= the two ranks' shards)
    cfg = load_config(None, [*TINY, *steps, f"data.root={tiny_dataset}", "optim.grad_accum=2"])
    train(cfg, tmp_path / "single")
    for a, b in zip(_losses(tmp_path / "ddp"), _losses(tmp_path / "single"), strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    wa = load_file(str(tmp_path / "ddp" / "encoder" / "model.safetensors"))
    wb = load_file(str(tmp_path / "single" / "encoder" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_cli_end_to_end_save_load_embed_and_damaged_checkpoint(tiny_dataset, tmp_path, capsys):
    from circuitml.datasets import CircuitDataset

    from circuitml.encoders import load_encoder
    from circuitml.formats import write_circuit

    config = tmp_path / "tiny.toml"
    config.write_text("[schedule]\nsteps = 5\n[run]\ncheckpoint_every = 2\ntensorboard = true\nplot = true\n")
    out = tmp_path / "run"
    sets = _sets([], drop=("run.tensorboard", "run.plot"))
    code = cli_main(
        ["pretrain", "--config", str(config), "--out", str(out), "--data", str(tiny_dataset), *sets]
    )
    assert code == 0
    assert (out / "loss.png").stat().st_size > 1000
    assert any((out / "tensorboard").iterdir())
    assert "encoder saved" in capsys.readouterr().out

    # save -> load -> embed: the CLI's embeddings equal the loaded encoder's, which equal the checkpoint's weights
    ds = CircuitDataset(tiny_dataset)
    files = []
    for i in range(2):
        files.append(tmp_path / f"c{i}.aag")
        write_circuit(ds.aig(i), files[-1])
    emb = tmp_path / "emb.safetensors"
    assert cli_main(["embed", "--encoder", str(out / "encoder"), *map(str, files), "--out", str(emb)]) == 0
    encoder = load_encoder(out / "encoder")
    ckpt = load_file(str(sorted((out / "checkpoints").glob("*.safetensors"))[-1]))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, ckpt[f"model.encoder.{k}"])
    with safe_open(str(emb), "pt") as fh:
        assert "index" in fh.metadata()
        for i, f in enumerate(files):
            ref = encoder.embed(ds.aig(i))
            assert torch.equal(fh.get_tensor(f"c{i}/node"), ref.node)
            assert torch.equal(fh.get_tensor(f"c{i}/graph"), ref.graph[0])
            assert torch.equal(load_encoder(out / "encoder").embed(f).node, ref.node)

    # a damaged newest checkpoint gives a one-line CheckpointError and exit 2, never garbage
    newest = sorted((out / "checkpoints").glob("*.safetensors"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    code = cli_main(["pretrain", "--out", str(out), "--resume", "--data", str(tiny_dataset), *sets])
    assert code == 2
    err = capsys.readouterr().err
    assert "truncated" in err and newest.name in err

    # unknown config keys are a ConfigError, exit 2
    assert cli_main(["pretrain", "--out", str(tmp_path / "x"), "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_130(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cmd = _cli("pretrain", "--out", str(out), "--data", str(tiny_dataset), *_sets(["schedule.steps=100000"]))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "metrics.csv").exists() or len((out / "metrics.csv").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "--resume" in output
    steps = [int(r["step"]) for r in read_metrics(out / "metrics.csv")]
    ckpts = sorted((out / "checkpoints").glob("step_*.json"))
    assert ckpts and ckpts[-1].name == f"step_{steps[-1]:08d}.json"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on a GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_on_gpu(tiny_dataset, tmp_path, dtype):
    sets = [
        *TINY,
        f"data.root={tiny_dataset}",
        "schedule.steps=8",
        "run.device=cuda",
        f"run.amp_dtype={dtype}",
    ]
    result = train(load_config(None, sets), tmp_path / dtype)
    assert all(v == v and abs(v) < 1e4 for v in result.last.values())
    assert result.last["loss"] < result.first["loss"]


# ------------------------------------------------------------------------------------------ run-folder safety
def _tiny_cli(out: Path, dataset: Path, *extra: str) -> list[str]:
    return ["pretrain", "--out", str(out), "--data", str(dataset), *_sets(["run.checkpoint_every=2"]), *extra]


def test_a_finished_run_is_refused_without_resume_or_overwrite(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_tiny_cli(out, tiny_dataset, "--steps", "4")) == 0
    before = (out / "metrics.csv").read_text()
    capsys.readouterr()
    assert cli_main(_tiny_cli(out, tiny_dataset, "--steps", "4")) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "step 4" in err
    assert (out / "metrics.csv").read_text() == before and (out / "encoder").is_dir()
    # --overwrite starts over: an interrupted replacement keeps the checkpoint it reports, even though the
    # discarded run had later steps
    assert cli_main(_tiny_cli(out, tiny_dataset, "--steps", "8", "--overwrite", "--stop-after", "3")) == 0
    said = capsys.readouterr().out
    kept = out / "checkpoints" / "step_00000003.json"
    assert str(kept) in said.replace("\n", "") and kept.is_file()
    from circuitml.pretrain.checkpoint import latest_checkpoint

    assert latest_checkpoint(out / "checkpoints") == kept and not (out / "encoder").exists()
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]


def test_save_checkpoint_never_prunes_the_checkpoint_it_wrote(tmp_path):
    from circuitml.pretrain.checkpoint import list_checkpoints, save_checkpoint

    t = {"w": torch.zeros(2)}
    for step in (50, 100):
        save_checkpoint(tmp_path, step, t, {"step": step}, keep=2)
    path = save_checkpoint(tmp_path, 7, t, {"step": 7}, keep=2)
    assert path in list_checkpoints(tmp_path) and len(list_checkpoints(tmp_path)) == 2


def test_resume_on_a_missing_folder_says_it_starts_fresh(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "new"
    assert cli_main(_tiny_cli(out, tiny_dataset, "--steps", "2", "--resume")) == 0
    assert f"no checkpoint in {out}: starting a fresh run" in capsys.readouterr().out.replace("\n", "")


def test_bad_settings_fail_before_any_data_is_built(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["pretrain", "--out", str(out), "--verilog-encoder", str(tmp_path / "nolm")]) == 2
    assert "model.verilog_encoder" in capsys.readouterr().err and not (out / "data").exists()
    assert cli_main(["pretrain", "--out", str(out), "--data", str(tmp_path / "nodata")]) == 2
    assert "manifest.json" in capsys.readouterr().err and not (out / "data").exists()
    assert cli_main(["pretrain", "--out", str(out), "--objectives", "mgm-only"]) == 2
    assert "mgvga+funcrec" in capsys.readouterr().err
    for flag, value in (("--verilog", "shuffled"), ("--verilog-encoder", "builtin")):
        assert cli_main(["pretrain", "--out", str(out), "--objectives", "funcrec", flag, value]) == 2
        assert (
            f"{flag} {value}: VGA is not enabled" in capsys.readouterr().err and not (out / "data").exists()
        )
    (tmp_path / "file").write_text("x")
    assert cli_main(["pretrain", "--out", str(tmp_path / "file")]) == 2
    assert "found a file" in capsys.readouterr().err


def test_help_lists_the_common_settings_and_flags_take_no_value(capsys):
    assert cli_main(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--steps",
        "--batch-size",
        "--seed",
        "--lr",
        "--encoder",
        "--threads",
        "--device",
        "--objectives",
    ):
        assert option in text
    for flag in ("--resume", "--overwrite"):
        line = next(line for line in text.splitlines() if flag in line)
        assert "<bool>" not in line


def test_options_reach_the_config_and_log_lines_appear_off_a_terminal(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = _tiny_cli(out, tiny_dataset, "--steps", "3", "--seed", "5", "--lr", "0.002", "--batch-size", "4")
    assert cli_main([*args, "--threads", "1", "--device", "cpu", "--set", "run.progress=true"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["schedule"]["steps"], cfg["run"]["seed"], cfg["optim"]["lr"], cfg["data"]["batch_size"]) == (
        3,
        5,
        0.002,
        4,
    )
    assert "pretrain step 3/3 loss" in capsys.readouterr().err


def test_excluded_families_are_left_out_of_pretraining(tiny_dataset, tmp_path):
    from circuitml.datasets import CircuitDataset

    families = CircuitDataset(tiny_dataset).families()
    drop = sorted(families)[:2]
    cfg = load_config(
        None,
        [*TINY, f"data.root={tiny_dataset}", "schedule.steps=1", f"data.exclude_families={','.join(drop)}"],
    )
    result = train(cfg, tmp_path / "run")
    card = json.loads((result.encoder_dir / "config.json").read_text())["card"]
    assert card["circuits"] == sum(families.values()) - sum(families[f] for f in drop)
    # an encoder exported from the run's checkpoint equals the one the run exported, with metrics in its card
    from circuitml.encoders import load_encoder
    from circuitml.pretrain.trainer import export_encoder

    exported = export_encoder(tmp_path / "run", tmp_path / "exported")
    a, b = load_encoder(result.encoder_dir).state_dict(), load_encoder(exported).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "loss" in json.loads((exported / "config.json").read_text())["card"]["metrics_last_10_steps"]


def test_a_checkpoint_naming_an_overlong_tensor_file_is_a_checkpoint_error(tmp_path):
    # fuzz seed 17: a 'tensors' name over the file system's 255-byte limit made Path.is_file raise OSError
    import json

    from circuitml.errors import CheckpointError
    from circuitml.pretrain.checkpoint import load_checkpoint, save_checkpoint

    record = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1})
    data = json.loads(record.read_text())
    data["tensors"] = "x" * 300
    record.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="'tensors'"):
        load_checkpoint(record)
