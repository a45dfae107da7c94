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
from circuitml.pretrain.config import PretrainConfig, config_to_dict
from circuitml.pretrain.data import BatchOrder, PretrainData, collate
from circuitml.pretrain.logging import MetricsLogger, plot_losses
from circuitml.pretrain.model import LOSS_COLUMNS, MGVGAModel

__all__ = ["train", "TrainResult", "learning_rate", "micro_seed", "prepare_dataset", "resume_config"]


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
    from circuitml.pretrain.config import apply_overrides, config_from_dict

    path = latest_checkpoint(Path(out) / "checkpoints")
    if path is None:
        return None
    _, record = load_checkpoint(path)
    raw = apply_overrides(check_resume_state(record, path)["config"], overrides or [])
    return config_from_dict(raw, f"{path}: key 'state.config'" + (" + --set" if overrides else ""))


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
    from circuitml.pretrain.verilog_encoder import HFVerilogFeatures

    cache = Path(config.model.hf_cache_dir) if config.model.hf_cache_dir else out / "verilog_cache"
    features = HFVerilogFeatures(config.model.verilog_encoder, cache, config.data.max_tokens, device)
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


def train(
    config: PretrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Pretrain an encoder with MGM + VGA and export it to ``<out>/encoder``.

    Args:
        config: the validated configuration; on resume its data/model/mgm/vga/optim sections must equal the
            checkpoint's (:func:`resume_config` rebuilds it from the checkpoint); ``schedule``/``run`` may change,
            e.g. more steps.
        out: run folder: ``metrics.csv``, ``tensorboard/``, ``checkpoints/``, ``loss.png``, ``encoder/``.
        resume: continue from the newest checkpoint in ``<out>/checkpoints`` (fresh start when there is none).
        stop_after: end (with a checkpoint, without export) after this global step, as if interrupted —
            used by tests and for chunked runs on preemptible machines.
    """
    # ---------------------------------------------------------------- config & processes
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    rank, world, device = _setup_distributed(config)
    is_main = rank == 0
    resume_record = None
    resume_tensors: dict[str, torch.Tensor] = {}
    if resume and (path := latest_checkpoint(ckpt_dir)) is not None:
        resume_tensors, resume_record = load_checkpoint(path)
        saved = check_resume_state(resume_record, path)["config"]
        given = config_to_dict(config)
        for section in ("data", "model", "mgm", "vga", "optim"):
            if saved.get(section) != given[section]:
                raise ConfigError(
                    f"{path}: resume: section [{section}] differs from the checkpoint's; resume with the same "
                    "settings (circuitml pretrain --resume reads them from the checkpoint)"
                )
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
    root = prepare_dataset(config, out, is_main)
    _barrier(world)
    from circuitml.datasets import CircuitDataset
    from circuitml.encoders import EncoderConfig, build_encoder

    enc_config = EncoderConfig.from_dict(config.model.encoder, where="model.encoder")
    text, text_hidden, vocab_size = _build_text(config, out, device)

    def load_data() -> PretrainData:
        return PretrainData(
            CircuitDataset(root),
            explicit_not=enc_config.explicit_not,
            text=text,
            max_tokens=config.data.max_tokens,
            max_nodes=config.data.max_nodes,
        )

    # with a frozen language model, rank 0 fills the hidden-state cache first and the other ranks read it
    data = load_data() if is_main or text is None or text == "builtin" else None
    _barrier(world)
    if data is None:
        data = load_data()
    order = BatchOrder(len(data), config.data.batch_size, config.run.seed)

    # ---------------------------------------------------------------- model
    torch.manual_seed(config.run.seed)
    encoder = build_encoder(enc_config)
    model = MGVGAModel(encoder, config, text_hidden, vocab_size).to(device)
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
        save_checkpoint(
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
    loop_start = time.perf_counter()
    interrupted = False
    progress = Progress(
        TextColumn("[bold]pretrain"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} graphs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not (is_main and config.run.progress),
    )
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
                batch = collate([data.samples[i] for i in idx]).to(device)
                sync = micro == accum - 1 or world == 1
                ctx = ddp_model.no_sync() if not sync and world > 1 else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        metrics = ddp_model(batch, gen)
                    scaler.scale(metrics["loss"] / accum).backward()
                for c in LOSS_COLUMNS:
                    sums[c] += float(metrics[c].detach()) / accum
                graphs_done += batch.num_graphs * world
            if config.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
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
                logger.log(step, row, {"graphs_per_s": speed})
            progress.update(task, completed=step, loss=f"{row['loss']:.4f}", speed=f"{speed:.1f}")
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
        card = {
            "objective": "MGVGA (Wu et al., ICLR 2025): "
            + " + ".join(n for n, on in (("MGM", config.mgm.enabled), ("VGA", config.vga.enabled)) if on),
            "data": str(root) if config.data.root else f"built-in generated dataset ({len(data)} circuits)",
            "circuits": len(data),
            "verilog_encoder": config.model.verilog_encoder,
            "steps": step,
            "batch_size": config.data.batch_size,
            "final_losses": {k: round(v, 6) for k, v in last.items() if k.startswith("loss")},
            "wall_time_s": round(wall, 1),
            "seed": config.run.seed,
        }
        model.encoder.save_pretrained(encoder_dir, card=card)
    _barrier(world)
    return TrainResult(out, step, interrupted, wall, speed, first, last, encoder_dir)
