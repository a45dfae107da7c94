"""The MGVGA pretraining loop, to be read top to bottom like nanoGPT's ``train.py``:
config → distributed setup → data → model → optimizer → (resume) → loop → checkpoint → export.

Determinism: the batch order is a function of ``(seed, step)`` (:class:`~circuitml.pretrain.data.BatchOrder`)
and every micro-batch reseeds the mask generator and torch's global RNG (dropout) from
``(seed, step, global micro-batch index)``. A run resumed from a checkpoint therefore replays exactly the
numbers an uninterrupted run produces, and ``world`` DDP processes compute the same micro-batches as one
process accumulating ``world`` times as many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from circuitml.errors import CheckpointError, ConfigError
from circuitml.moe.schedule import step_routers
from circuitml.pretrain.checkpoint import (
    atomic_write_text,
    capture_rng_state,
    check_resume_state,
    latest_checkpoint,
    load_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    restore_rng_state,
    save_checkpoint,
)
from circuitml.pretrain.config import OBJECTIVES, PretrainConfig, config_from_dict, config_to_dict
from circuitml.pretrain.data import BatchOrder, PretrainData, collate
from circuitml.pretrain.heads import save_heads
from circuitml.pretrain.logging import MetricsLogger, plot_losses
from circuitml.pretrain.model import LOSS_COLUMNS, MGVGAModel
from circuitml.pretrain.qor import QoRLabelSet

__all__ = [
    "train",
    "TrainResult",
    "learning_rate",
    "micro_seed",
    "prepare_dataset",
    "resume_config",
    "existing_run",
    "check_run_folder",
    "clear_run",
    "export_encoder",
    "run_card",
]


@dataclass
class TrainResult:
    """What a run produced; ``first``/``last`` are the logged metrics of the first and last steps of THIS call."""

    out: Path
    step: int
    interrupted: bool
    wall_time_s: float
    graphs_per_s: float
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    encoder_dir: Path | None = None
    checkpoint: Path | None = None  # the last checkpoint this call wrote (JSON path)
    nodes_per_s: float = 0.0


#: Sections a resumed run must share with its checkpoint (schedule and run may change, e.g. more steps).
RESUME_SECTIONS = ("data", "model", "mgm", "vga", "funcrec", "funcsim", "contrast", "qor", "optim")


def learning_rate(step: int, config: PretrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    base, s = config.optim.lr, config.schedule
    if step < s.warmup_steps:
        return base * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    min_lr = base * s.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base - min_lr)


def micro_seed(seed: int, step: int, micro_index: int) -> int:
    """A 63-bit seed for one micro-batch, independent of process count and of interruptions."""
    return int(np.random.SeedSequence([seed, step, micro_index]).generate_state(2, dtype=np.uint64)[0] >> 1)


def prepare_dataset(config: PretrainConfig, out: Path, is_main: bool) -> Path:
    """The dataset folder to train on: ``data.root`` or the built-in dataset generated into ``<out>/data``."""
    if config.data.root is not None:
        root = Path(config.data.root)
        if not (root / "manifest.json").is_file():
            raise ConfigError(f"data.root: {root}: expected a circuitml dataset folder with manifest.json")
        return root
    root = out / "data"
    if is_main:  # generate() is resumable and skips finished designs, so a half-built dataset is completed
        from circuitml.datasets import generate

        generate(root, **config.data.generate)
    return root


def resume_config(out: str | Path, overrides: list[str] | None = None) -> PretrainConfig | None:
    """The config stored in the newest checkpoint of ``out`` with ``section.key=value`` overrides applied,
    or None when there is no checkpoint yet."""
    from circuitml.pretrain.config import apply_overrides

    path = latest_checkpoint(Path(out) / "checkpoints")
    if path is None:
        return None
    _, record = load_checkpoint(path)
    raw = apply_overrides(check_resume_state(record, path)["config"], overrides or [])
    return config_from_dict(raw, f"{path}: key 'state.config'" + (" + --set" if overrides else ""))


_RUN_FILES = ("checkpoints", "metrics.csv", "tensorboard", "loss.png", "encoder", "config.json")


def existing_run(out: str | Path) -> str | None:
    """A description of the run in ``out`` (``"checkpoint step 250"``, ``"metrics.csv"``), or None."""
    out = Path(out)
    if (ckpt := latest_checkpoint(out / "checkpoints")) is not None:
        return f"checkpoint step {int(ckpt.stem.split('_')[1])}"
    for name in ("metrics.csv", "encoder"):
        if (out / name).exists():
            return name
    return None


def check_run_folder(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that is a file, or holds a run, unless ``resume`` or ``overwrite`` says what to do."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: expected a run folder, found a file")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: expected at most one of them")
    found = existing_run(out)
    if found is not None and not resume and not overwrite:
        raise ConfigError(
            f"{out}: holds a pretraining run ({found}); continue it with --resume or replace it with --overwrite"
        )


def clear_run(out: str | Path) -> None:
    """Delete the run files of ``out`` (not a generated ``data/`` folder nor the Verilog cache)."""
    import shutil

    for name in _RUN_FILES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_card(config: PretrainConfig, step: int, root: Path, circuits: int, wall: float) -> dict[str, Any]:
    """The model-card fields of an encoder pretrained with ``config`` for ``step`` steps on ``root``."""
    return {
        "objectives": [name for name in OBJECTIVES if getattr(config, name).enabled],
        "vga_verilog": config.vga.verilog if config.vga.enabled else None,
        "data": str(root) if config.data.root else f"built-in generated dataset ({circuits} circuits)",
        "circuits": circuits,
        "verilog_encoder": config.model.verilog_encoder if config.vga.enabled else None,
        "steps": step,
        "batch_size": config.data.batch_size,
        "wall_time_s": round(wall, 1),
        "seed": config.run.seed,
        **({"init": str(config.model.init)} if config.model.init else {}),
        **(
            {"qor_labels": {"folder": str(config.qor.labels), "metric": config.qor.metric}}
            if config.qor.enabled
            else {}
        ),
    }


def export_encoder(out: str | Path, dest: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the encoder of a run's checkpoint (default: the newest) as an encoder folder at ``dest``, e.g. to
    hand out an intermediate encoder of a run still in progress.

    Raises:
        CheckpointError: no checkpoint in ``out``, or a damaged one.
    """
    from circuitml.encoders import EncoderConfig, build_encoder
    from circuitml.pretrain.config import config_from_dict

    out = Path(out)
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(out / "checkpoints")
    if path is None:
        raise CheckpointError(f"{out / 'checkpoints'}: no checkpoint to export")
    tensors, record = load_checkpoint(path)
    config = config_from_dict(record["state"]["config"], f"{path}: key 'state.config'")
    encoder = build_encoder(EncoderConfig.from_dict(config.model.encoder, where="model.encoder"))
    prefix = "model.encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    root = Path(config.data.root) if config.data.root else out / "data"
    circuits = sum(1 for _ in (root / "circuits").glob("*.safetensors")) if root.is_dir() else 0
    card = run_card(config, record["step"], root, circuits, record["state"].get("wall_time_s", 0.0))
    if "model.qor.recipes" in tensors:
        card["qor_labels"]["recipes"] = int(tensors["model.qor.recipes"].shape[0])
    if (out / "metrics.csv").is_file():  # training metrics (and their base_* diagnostics), last 10 steps
        from circuitml.pretrain.logging import read_metrics

        rows = [r for r in read_metrics(out / "metrics.csv") if int(r["step"]) <= record["step"]][-10:]
        if rows:
            card["metrics_last_10_steps"] = {
                k: round(sum(float(r[k]) for r in rows) / len(rows), 4)
                for k in rows[0]
                if k != "step" and any(float(r[k]) for r in rows)
            }
    folder = encoder.save_pretrained(dest, card=card)
    save_heads(folder, tensors, record["state"]["config"])  # the task heads that transfer (pretrain.heads)
    return folder


def _setup_distributed(config: PretrainConfig) -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = config.run.device
    use_cuda = torch.cuda.is_available() if want == "auto" else want.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda requested but torch sees no GPU")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(want if ":" in want else f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _build_text(config: PretrainConfig, out: Path, device: torch.device) -> tuple[Any, int, int | None]:
    """(what PretrainData loads for Verilog, its hidden width, the built-in vocabulary size or None)."""
    if not config.vga.enabled:
        return None, config.model.verilog_hidden, None
    if config.model.verilog_encoder == "builtin":
        from circuitml.verilog import VOCAB

        return "builtin", config.model.verilog_hidden, len(VOCAB)
    from circuitml.lm import resolve_lm
    from circuitml.pretrain.verilog_encoder import HFVerilogFeatures

    cache = Path(config.model.hf_cache_dir) if config.model.hf_cache_dir else out / "verilog_cache"
    try:  # a shipped name (all-minilm-l6-v2) or a local folder
        path = resolve_lm(config.model.verilog_encoder)
    except ConfigError as exc:
        raise ConfigError(f"model.verilog_encoder: {exc}") from None
    features = HFVerilogFeatures(path, cache, config.data.max_tokens, device)
    return features, features.hidden_size, None


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to finish the current step, checkpoint and return."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no graceful stop
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops immediately
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _continue_encoder(config: PretrainConfig) -> tuple[PretrainConfig, torch.nn.Module]:
    """Continued pretraining: load ``model.init`` and record its encoder config as ``model.encoder`` (so the run's
    config, checkpoints and exports rebuild the right architecture); a different ``model.encoder`` is refused."""
    from circuitml.encoders import EncoderConfig, load_encoder

    init = load_encoder(config.model.init)
    wanted = init.config.to_dict()
    if (
        config.model.encoder
        and EncoderConfig.from_dict(config.model.encoder, where="model.encoder").to_dict() != wanted
    ):
        raise ConfigError(
            f"model.init: {config.model.init}: its encoder config differs from model.encoder; leave model.encoder "
            "(and --encoder) unset to continue that encoder"
        )
    model = dataclasses.replace(config.model, encoder=wanted)
    return dataclasses.replace(config, model=model), init


def train(
    config: PretrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Pretrain an encoder with MGM + VGA and export it to ``<out>/encoder``.

    Args:
        config: the validated configuration; on resume its data/model/mgm/vga/optim sections must equal the
            checkpoint's (:func:`resume_config` rebuilds it from the checkpoint); ``schedule``/``run`` may change,
            e.g. more steps.
        out: run folder: ``metrics.csv``, ``tensorboard/``, ``checkpoints/``, ``loss.png``, ``encoder/``.
        resume: continue from the newest checkpoint in ``<out>/checkpoints`` (fresh start when there is none).
        overwrite: replace a run already in ``out`` (its checkpoints, metrics, plots and encoder; a generated
            ``data/`` folder and the Verilog cache are kept). Without ``resume`` or ``overwrite``, a folder holding
            a run is refused with a ConfigError, so a finished run is never destroyed by accident.
        stop_after: end (with a checkpoint, without export) after this global step, as if interrupted —
            used by tests and for chunked runs on preemptible machines.
    """
    # ---------------------------------------------------------------- config & processes
    if stop_after is not None and stop_after < 1:  # -1 ran no step and ended with exit 0
        raise ConfigError(f"--stop-after: expected a step >= 1, got {stop_after}")
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    check_run_folder(out, resume=resume, overwrite=overwrite)
    rank, world, device = _setup_distributed(config)
    is_main = rank == 0
    if overwrite and not resume and is_main:
        clear_run(out)
    _barrier(world)
    resume_record = None
    resume_tensors: dict[str, torch.Tensor] = {}
    if resume and (path := latest_checkpoint(ckpt_dir)) is not None:
        resume_tensors, resume_record = load_checkpoint(path)
        saved = check_resume_state(resume_record, path)["config"]
        given = config_to_dict(config)
        # a checkpoint written before a section (or key) existed holds that section's defaults
        saved = config_to_dict(config_from_dict(saved, f"{path}: key 'state.config'"))
        for section in RESUME_SECTIONS:
            if saved.get(section) != given[section]:
                raise ConfigError(
                    f"{path}: resume: section [{section}] differs from the checkpoint's; resume with the same "
                    "settings (circuitml pretrain --resume reads them from the checkpoint)"
                )
    init_encoder = None
    if config.model.init is not None and resume_record is None:
        config, init_encoder = _continue_encoder(config)
    # settings that can be wrong are checked before anything is written or built (generation takes minutes)
    from circuitml.encoders import EncoderConfig, build_encoder
    from circuitml.encoders.builder import encoder_size

    enc_config = EncoderConfig.from_dict(config.model.encoder, where="model.encoder")
    encoder_size(enc_config, where="model.encoder")  # an unknown kind or an oversized one, on the meta device
    qor_labels_raw = None
    if config.qor.enabled:
        from circuitml.datasets.qor import load_qor_labels

        qor_labels_raw = load_qor_labels(config.qor.labels)
    accum = config.optim.grad_accum
    if config.data.batch_size < world * accum:
        raise ConfigError(
            f"data.batch_size: expected at least world_size * optim.grad_accum = {world * accum} graphs per step"
        )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(config_to_dict(config), indent=2) + "\n")
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    elif world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(config.run.seed)
    amp_dtype = torch.bfloat16 if config.run.amp_dtype == "bfloat16" else torch.float16
    use_amp = config.run.amp and device.type == "cuda"
    if use_amp and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16

    # ---------------------------------------------------------------- data
    started = time.perf_counter()
    from circuitml.datasets import CircuitDataset

    text, text_hidden, vocab_size = _build_text(config, out, device)
    root = prepare_dataset(config, out, is_main)
    _barrier(world)

    def circuits() -> CircuitDataset:
        """The dataset without the held-out families (their QoR labels stay out too)."""
        dataset = CircuitDataset(root)
        if config.data.exclude_families:
            drop = set(config.data.exclude_families)
            dataset = dataset.subset([i for i, r in enumerate(dataset.records) if r["family"] not in drop])
        return dataset

    def load_data() -> PretrainData:
        return PretrainData(
            circuits(),
            explicit_not=enc_config.explicit_not,
            text=text,
            max_tokens=config.data.max_tokens,
            max_nodes=config.data.max_nodes,
            verilog=config.vga.verilog,
            signatures=config.funcrec.enabled or config.funcsim.enabled,
            contrast=config.contrast.enabled,
            merge_variants=config.data.merge_variants,
            seed=config.run.seed,
        )

    # with a frozen language model, rank 0 fills the hidden-state cache first and the other ranks read it
    data = load_data() if is_main or text is None or text == "builtin" else None
    _barrier(world)
    if data is None:
        data = load_data()
    order = BatchOrder(len(data), config.data.batch_size, config.run.seed)
    qor_set = None
    if qor_labels_raw is not None:
        qor_set = QoRLabelSet(
            qor_labels_raw,
            circuits(),
            explicit_not=enc_config.explicit_not,
            max_nodes=config.data.max_nodes,
            metric=config.qor.metric,
        )

    # ---------------------------------------------------------------- model
    torch.manual_seed(config.run.seed)
    encoder = build_encoder(enc_config)
    if init_encoder is not None:
        encoder.load_state_dict(init_encoder.state_dict())
    model = MGVGAModel(encoder, config, text_hidden, vocab_size, qor_labels=qor_set).to(device)
    if resume_record is not None:
        state = {k[len("model.") :]: v for k, v in resume_tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{ckpt_dir}: checkpoint does not match the model ({first})") from None
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    # ---------------------------------------------------------------- optimizer
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.optim.lr,
        betas=(config.optim.beta1, config.optim.beta2),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    step = 0
    elapsed_before = 0.0
    if resume_record is not None:
        st = resume_record["state"]
        optimizer_state_from_tensors(optimizer, resume_tensors, st["optimizer"], str(ckpt_dir))
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        restore_rng_state(resume_tensors, st["rng"], str(path))
        step = st["step"]
        elapsed_before = st.get("wall_time_s", 0.0)

    saved_path: Path | None = None

    def checkpoint(at_step: int) -> None:
        if not is_main:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_state_to_tensors(optimizer)
        rng_tensors, rng_meta = capture_rng_state()
        state = {
            "step": at_step,
            "config": config_to_dict(config),
            "optimizer": opt_meta,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rng_meta,
            "data": {"position": at_step * config.data.batch_size, "epoch": order.epoch_of(at_step)},
            "schedule": {"lr": learning_rate(max(at_step - 1, 0), config), "kind": "warmup+cosine"},
            "wall_time_s": elapsed_before + time.perf_counter() - started,
            "world_size": world,
        }
        nonlocal saved_path
        saved_path = save_checkpoint(
            ckpt_dir, at_step, {**tensors, **opt_tensors, **rng_tensors}, state, config.run.keep_checkpoints
        )

    # ---------------------------------------------------------------- loop
    columns = ["lr", *LOSS_COLUMNS]
    logger = (
        MetricsLogger(
            out, columns, resume_step=step if resume_record else None, tensorboard=config.run.tensorboard
        )
        if is_main
        else None
    )
    end_step = config.schedule.steps if stop_after is None else min(stop_after, config.schedule.steps)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    graphs_done = 0
    nodes_done = 0
    loop_start = time.perf_counter()
    interrupted = False
    from rich.console import Console

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]pretrain"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} graphs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (is_main and config.run.progress and console.is_terminal),
    )
    # off a terminal (a log file, CI), a plain line every ~5 % of the run or 30 s instead of a bar
    log_lines = is_main and config.run.progress and not console.is_terminal
    log_every = max(1, config.schedule.steps // 20)
    last_line = time.perf_counter()
    model.train()
    with _StopFlag() as stop, progress:
        task = progress.add_task("pretrain", total=config.schedule.steps, completed=step, loss="-", speed="-")
        while step < end_step:
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = {c: 0.0 for c in LOSS_COLUMNS}
            for micro in range(accum):
                g_index = micro * world + rank
                seed = micro_seed(config.run.seed, step, g_index)
                torch.manual_seed(seed)
                gen = torch.Generator().manual_seed(seed)
                idx = order.micro_batch(step, micro, rank, world, accum)
                batch = collate([data.samples[i] for i in idx])
                if config.contrast.enabled:
                    batch.contrast = data.contrast_batch(idx, gen)
                if qor_set is not None:
                    batch.qor = qor_set.batch(config.qor.designs_per_step, gen)
                batch = batch.to(device)
                sync = micro == accum - 1 or world == 1
                ctx = ddp_model.no_sync() if not sync and world > 1 else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        metrics = ddp_model(batch, gen)
                    scaler.scale(metrics["loss"] / accum).backward()
                for c in LOSS_COLUMNS:
                    sums[c] += float(metrics[c].detach()) / accum
                graphs_done += batch.num_graphs * world
                nodes_done += batch.graph.num_nodes * world  # this rank's count, scaled (shards are balanced)
            if config.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step_routers(model)  # router anneals count optimizer steps, not forwards
            step += 1

            values = torch.tensor(
                [sums[c] for c in LOSS_COLUMNS] + [float(stop.requested)], dtype=torch.float64
            )
            if world > 1:
                dist.all_reduce(values)
                values[:-1] /= world
            row = {"lr": lr, **{c: float(v) for c, v in zip(LOSS_COLUMNS, values[:-1], strict=False)}}
            stop_now = bool(values[-1] > 0)
            if not first:
                first = row
            last = row
            speed = graphs_done / max(time.perf_counter() - loop_start, 1e-9)
            if logger is not None and (step % config.run.log_every == 0 or step == end_step):
                nodes_speed = nodes_done / max(time.perf_counter() - loop_start, 1e-9)
                logger.log(step, row, {"graphs_per_s": speed, "nodes_per_s": nodes_speed})
            progress.update(task, completed=step, loss=f"{row['loss']:.4f}", speed=f"{speed:.1f}")
            if log_lines and (
                step % log_every == 0 or step == end_step or time.perf_counter() - last_line > 30
            ):
                last_line = time.perf_counter()
                console.print(
                    f"pretrain step {step}/{config.schedule.steps} loss {row['loss']:.4f} {speed:.1f} graphs/s "
                    f"({time.perf_counter() - loop_start:.0f} s)",
                    highlight=False,
                )
            if step % config.run.checkpoint_every == 0 or step == end_step or stop_now:
                checkpoint(step)
            if stop_now:
                interrupted = True
                break
    _barrier(world)
    wall = elapsed_before + time.perf_counter() - started
    speed = graphs_done / max(time.perf_counter() - loop_start, 1e-9)

    # ---------------------------------------------------------------- export
    encoder_dir = None
    if logger is not None:
        logger.close()
        if config.run.plot:
            plot_losses(out / "metrics.csv", out / "loss.png")
    finished = step >= config.schedule.steps
    if is_main and finished and not interrupted:
        encoder_dir = out / "encoder"
        card = run_card(config, step, root, len(data), wall)
        if qor_set is not None:
            card["qor_labels"].update(designs=len(qor_set), recipes=int(qor_set.recipes.shape[0]))
        card["final_losses"] = {k: round(v, 6) for k, v in last.items() if k.startswith("loss")}
        model.encoder.save_pretrained(encoder_dir, card=card)
        save_heads(
            encoder_dir, {f"model.{k}": v for k, v in model.state_dict().items()}, config_to_dict(config)
        )
    _barrier(world)
    nodes_speed = nodes_done / max(time.perf_counter() - loop_start, 1e-9)
    return TrainResult(out, step, interrupted, wall, speed, first, last, encoder_dir, saved_path, nodes_speed)
