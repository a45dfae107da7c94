"""``circuitml moe compress`` and ``circuitml moe eval``: QMoE compression of a saved model's experts.

Two kinds of saved model carry :class:`~circuitml.moe.FFNExperts`: a QA model directory (``circuitml qa train``,
Switch-FFN layers) and an encoder directory (``save_pretrained``, e.g. a ``moe_gnn`` encoder with FFN experts).
``compress`` calibrates GPTQ on the model's training data, writes the experts in the QMoE format (one
safetensors file; the rest of the model stays in its directory) and measures the model before and after on
held-out data: QA held-out span loss and EM/F1; encoders the signal-probability MAE of a head trained on the
frozen encoder's node embeddings (the same seed and budget for the dense and the compressed encoder).
``eval`` runs a model with a compressed experts file in place of its dense experts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from circuitml.errors import CheckpointError, ConfigError

if (
    TYPE_CHECKING
):  # torch is imported where it runs: every CLI command imports this module, and torch costs ~1 s
    import torch

console = Console()


@dataclass
class SavedModel:
    """A loaded model with what compressing and measuring it needs."""

    kind: str  # "qa" | "encoder"
    model: torch.nn.Module
    calibrate: Callable[[torch.nn.Module], None]  # runs the model on calibration inputs
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # held-out quality
    info: dict[str, Any] = field(default_factory=dict)


def _is_qa_dir(path: Path) -> bool:
    try:
        from circuitml.tasks.qa.train import FORMAT

        return json.loads((path / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _qa(model_dir: Path, data: Path | None, calib_windows: int, device: torch.device) -> SavedModel:
    import torch

    from circuitml.datasets.squad import read_squad
    from circuitml.tasks.qa.data import make_features
    from circuitml.tasks.qa.train import evaluate_examples, load_qa_model, split_by_context

    model, tokenizer, cfg = load_qa_model(model_dir)
    model.to(device)
    source = data or Path(cfg.data)
    examples, version = read_squad(source)
    if cfg.eval_data and data is None:
        train_ex, eval_ex = examples, read_squad(cfg.eval_data)[0]
    else:  # the held-out contexts of training (the split is seeded)
        split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
        train_ex, eval_ex = split_by_context(examples, cfg.eval_fraction, split_seed)
    if not eval_ex:
        raise ConfigError(f"{source}: no held-out questions to measure the compressed model on")
    calib = make_features(train_ex, tokenizer, cfg.max_length, cfg.stride)
    held = make_features(eval_ex, tokenizer, cfg.max_length, cfg.stride)
    bs = cfg.batch_size

    def batches(feats, limit: int | None = None):
        n = len(feats) if limit is None else min(limit, len(feats))
        for lo in range(0, n, bs):
            mask = feats.attention_mask[lo : min(lo + bs, n)]
            t = max(1, int(mask.sum(1).max()))  # windows are right-padded: drop the shared padding
            ids = feats.input_ids[lo : lo + mask.shape[0], :t]
            yield slice(lo, min(lo + bs, n)), ids.to(device), mask[:, :t].to(device)

    def calibrate(m: torch.nn.Module) -> None:
        for _, ids, mask in batches(calib, calib_windows):
            m(ids, mask)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        ce, total = 0.0, 0
        with torch.no_grad():
            for rows, ids, mask in batches(held):
                o = m(ids, mask)
                loss = torch.nn.functional.cross_entropy
                ce += 0.5 * float(
                    loss(o.start_logits, held.start_positions[rows].to(device), reduction="sum")
                    + loss(o.end_logits, held.end_positions[rows].to(device), reduction="sum")
                )
                total += ids.shape[0]
        scores = evaluate_examples(m, tokenizer, eval_ex, cfg, version)
        return {"span_loss": ce / total, "exact": scores["exact"], "f1": scores["f1"]}

    info = {
        "data": str(source),
        "calib_windows": min(calib_windows, len(calib)),
        "heldout_questions": len(eval_ex),
    }
    return SavedModel("qa", model, calibrate, evaluate, info)


def _encoder(
    model_dir: Path, data: Path | None, calib_graphs: int, epochs: int, device: torch.device
) -> SavedModel:
    from circuitml.encoders import load_encoder
    from circuitml.tasks.common import TrainConfig, load_circuits, split_items
    from circuitml.tasks.probability import build_probability_graphs, run_probability

    if data is None:
        raise ConfigError(
            "moe compress: an encoder needs --data (a circuit folder) to calibrate and measure on"
        )
    model = load_encoder(model_dir, map_location=device)
    circuits = load_circuits(data)
    graphs = build_probability_graphs(circuits, explicit_not=model.config.explicit_not)
    cfg = TrainConfig(epochs=epochs, seed=0, device=str(device))
    train_ids, _ = split_items(len(graphs), None, cfg)  # the probe's split: calibrate on its training part

    def calibrate(m: torch.nn.Module) -> None:
        for i in train_ids[:calib_graphs]:
            m(graphs[int(i)].to(device))

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        requires = [p.requires_grad for p in m.parameters()]
        result = run_probability(circuits, m, "frozen", cfg, graphs=graphs)
        for p, r in zip(
            m.parameters(), requires, strict=True
        ):  # run_probability froze it; leave the module as it was
            p.requires_grad_(r)
        return {"mae": result.metrics["mae"], "baseline_mae": result.baseline["mae"]}

    info = {"data": str(data), "calib_graphs": min(calib_graphs, len(train_ids)), "probe_epochs": epochs}
    return SavedModel("encoder", model, calibrate, evaluate, info)


def load_saved_model(
    model_dir: str | Path,
    data: str | Path | None = None,
    calib: int = 256,
    epochs: int = 30,
    device: torch.device | str = "cpu",
) -> SavedModel:
    """A QA model directory or an encoder directory on ``device``, with its calibration run and held-out
    measure."""
    import torch

    device = torch.device(device)
    model_dir = Path(model_dir)
    data = None if data is None else Path(data)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: expected a model directory (qa train --out, or save_pretrained)")
    if _is_qa_dir(model_dir):
        return _qa(model_dir, data, calib, device)
    return _encoder(model_dir, data, calib, epochs, device)


def dense_expert_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, fp32 bytes) of the model's FFNExperts."""
    from circuitml.moe import FFNExperts

    n = sum(p.numel() for m in model.modules() if isinstance(m, FFNExperts) for p in m.parameters())
    return n, 4 * n


def compress_saved_model(
    model_dir: str | Path,
    out: str | Path,
    *,
    bits: str = "ternary",
    zeros: float | None = None,
    use_hessian: bool = True,
    data: str | Path | None = None,
    calib: int = 256,
    epochs: int = 30,
    measure: bool = True,
    before: dict[str, float] | None = None,
    rows_per_lane: int = 8,
) -> dict[str, Any]:
    """Compress a saved model's experts to ``out`` and measure it before and after; returns the report.

    ``before``: the dense model's scores when already measured (a sweep measures them once).
    """
    import torch

    from circuitml.moe.systems.qmoe import BITS, compress_model, save_qmoe

    if bits not in BITS:  # checked before the (slow) load and first measurement
        raise ConfigError(f"moe compress: --bits: expected one of {', '.join(BITS)}, got {bits!r}")
    if zeros is not None and (bits != "ternary" or not 0.0 <= zeros < 1.0):
        raise ConfigError(
            f"moe compress: --zeros: expected a fraction in [0, 1) with --bits ternary, got {zeros}"
        )
    saved = load_saved_model(model_dir, data, calib, epochs)
    model = saved.model.eval()
    params, dense_bytes = dense_expert_bytes(model)
    if before is None:
        before = saved.evaluate(model) if measure else {}
    experts = compress_model(
        model,
        lambda: saved.calibrate(model),
        bits=bits,
        zeros=zeros,
        rows_per_lane=rows_per_lane,
        use_hessian=use_hessian,
    )
    method = "gptq" if use_hessian else "rtn"
    info = {"model": str(model_dir), "bits": bits, "zeros": zeros, "method": method, **saved.info}
    save_qmoe(experts, out, info=info)
    after = saved.evaluate(model) if measure else {}
    syms = [m.symbols(torch.arange(m.shape[0])) for q in experts.values() for m in (q.gate_up, q.down)]
    return {
        "kind": saved.kind,
        **info,
        "expert_params": params,
        "dense_bytes": dense_bytes,
        "compressed_bytes": sum(q.nbytes() for q in experts.values()),
        "file_bytes": Path(out).stat().st_size,
        "bits_per_param": 8 * sum(q.nbytes() for q in experts.values()) / params,
        "zero_fraction": sum(int((s == 0).sum()) for s in syms) / sum(s.numel() for s in syms),
        "before": before,
        "after": after,
    }


def evaluate_compressed(
    model_dir: str | Path,
    experts_file: str | Path,
    data: str | Path | None = None,
    epochs: int = 30,
    device: str = "cpu",
) -> dict[str, float]:
    """Held-out quality of a saved model run with the compressed experts of ``experts_file``, on ``device``
    (``cpu``, ``cuda[:N]`` or ``auto``; cuda where there is none is a :class:`ConfigError`)."""
    from circuitml.moe.systems.qmoe import apply_qmoe, load_qmoe
    from circuitml.tasks.common import configure_runtime

    dev = configure_runtime(None, device)  # before anything is read: a bad device fails at once
    saved = load_saved_model(model_dir, data, 0, epochs, device=dev)
    apply_qmoe(saved.model, load_qmoe(experts_file), where=experts_file)
    return saved.evaluate(saved.model.to(dev).eval())


def _print(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['model']}: {report['bits']} {report['method']} (zeros={report['zeros']})")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("compressed", justify="right")
    table.add_row("expert bytes", f"{report['dense_bytes']:,}", f"{report['file_bytes']:,} (file)")
    table.add_row("bits / expert param", "32", f"{report['bits_per_param']:.3f}")
    table.add_row("zero symbols", "", f"{report['zero_fraction']:.3f}")
    for key, value in report["before"].items():
        table.add_row(key, f"{value:.4f}", f"{report['after'][key]:.4f}")
    console.print(table)


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    moe_app = typer.Typer(
        help="MoE systems: QMoE compression of a saved model's experts.", no_args_is_help=True
    )
    app.add_typer(moe_app, name="moe")

    @moe_app.command("compress")
    def compress(
        model_dir: Path = typer.Argument(
            ..., help="QA model directory (qa train --out) or encoder directory."
        ),
        out: Path = typer.Option(..., "--out", help="Compressed experts file to write (.safetensors)."),
        bits: str = typer.Option("ternary", "--bits", help="ternary | 2"),
        zeros: Optional[float] = typer.Option(
            None,
            "--zeros",
            help="Ternary: share of zero weights per row (dead-zone grid); default: min-max grid.",
        ),
        rtn: bool = typer.Option(False, "--rtn", help="Plain rounding to the grid instead of GPTQ."),
        data: Optional[Path] = typer.Option(
            None, "--data", help="QA: SQuAD file (default: the training file); encoder: circuit folder."
        ),
        calib: int = typer.Option(256, "--calib", help="Calibration windows (QA) or graphs (encoder)."),
        epochs: int = typer.Option(30, "--epochs", help="Encoder: epochs of the probability probe."),
        measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure before and after."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
    ) -> None:
        """Compress a saved model's experts (QMoE: GPTQ ternary or 2-bit, entropy-coded) and measure it."""
        from circuitml.fileio import atomic_write

        report = compress_saved_model(
            model_dir, out, bits=bits, zeros=zeros, use_hessian=not rtn, data=data, calib=calib,
            epochs=epochs, measure=measure,
        )  # fmt: skip
        _print(report)
        if json_out is not None:
            atomic_write(json_out, json.dumps(report, indent=2))

    @moe_app.command("eval")
    def evaluate(
        model_dir: Path = typer.Argument(..., help="The model directory the experts were compressed from."),
        experts: Path = typer.Option(..., "--experts", help="Compressed experts file (moe compress --out)."),
        data: Optional[Path] = typer.Option(None, "--data", help="As for compress."),
        epochs: int = typer.Option(30, "--epochs", help="Encoder: epochs of the probability probe."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (cuda when available)."),
    ) -> None:
        """Run a saved model with its compressed experts on the held-out data and print the metrics."""
        scores = evaluate_compressed(model_dir, experts, data, epochs, device=device)
        for key, value in scores.items():
            console.print(f"{key}: {value:.4f}")
