"""``circuitml pretrain`` (MGVGA pretraining) and ``circuitml embed`` (embeddings from a pretrained encoder)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    console = Console()

    @app.command("pretrain")
    def pretrain(
        config: Path = typer.Option(
            None, "--config", "-c", help="TOML or YAML config (configs/pretrain_default.toml)."
        ),
        set_: list[str] = typer.Option(
            [], "--set", "-s", help="Override a key, e.g. --set optim.lr=3e-4 --set model.encoder.kind=gcn."
        ),
        out: Path = typer.Option(
            Path("runs/pretrain"), "--out", "-o", help="Run folder (logs, checkpoints, encoder)."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the newest checkpoint in OUT, with its settings (+ --set)."
        ),
        data: Path = typer.Option(
            None, "--data", help="Dataset folder (default: generate the built-in one into OUT/data)."
        ),
        stop_after: int = typer.Option(
            None, "--stop-after", help="Checkpoint and stop after this step (chunked runs)."
        ),
    ) -> None:
        """Pretrain a circuit encoder with MGVGA (masked gate modeling + Verilog-AIG alignment)."""
        from circuitml.pretrain.config import load_config
        from circuitml.pretrain.trainer import resume_config, train

        overrides = list(set_)
        cfg = None
        if resume and config is None:  # continue with the checkpoint's own settings (+ --set overrides)
            cfg = resume_config(out, overrides)
        if cfg is None:
            cfg = load_config(config, overrides)
        if data is not None:
            cfg.data.root = str(data)
        result = train(cfg, out, resume=resume, stop_after=stop_after)
        if result.interrupted:
            console.print(f"interrupted at step {result.step}; checkpoint saved — continue with --resume")
            # typer.Exit(130) would be returned, not raised, by app(standalone_mode=False), and cli.main drops it
            raise SystemExit(130)
        if result.encoder_dir is not None and result.first and result.last:
            first, last = result.first, result.last
            parts = [
                f"{k} {first[k]:.4f} → {last[k]:.4f}"
                for k in last
                if k.startswith("loss") and k != "loss_aux"
            ]
            console.print("; ".join(parts))
            console.print(
                f"{result.step} steps in {result.wall_time_s:.1f} s ({result.graphs_per_s:.1f} graphs/s); "
                f"encoder saved to {result.encoder_dir}"
            )
        else:
            console.print(f"stopped at step {result.step}; checkpoint in {out / 'checkpoints'}")

    @data_app.command("corpus")
    def corpus(
        out: Path = typer.Argument(..., help="Corpus folder (created or completed)."),
        designs: int = typer.Option(
            1000, "--designs", "-n", help="RTL designs over all families and widths."
        ),
        variants: int = typer.Option(6, "--variants", "-k", help="Random ABC recipes per design."),
        seed: int = typer.Option(0, "--seed", help="Plans the designs and draws the recipes."),
        workers: int = typer.Option(2, "--workers", "-j", help="Processes for Yosys and ABC."),
    ) -> None:
        """Build a pretraining corpus: generated designs + their ABC recipe variants, structurally deduplicated."""
        from circuitml.datasets.corpus import build_corpus

        report = build_corpus(out, designs, variants=variants, seed=seed, workers=workers)
        for src, reason in report.failed:
            console.print(f"[yellow]failed[/] {reason if reason.startswith(src) else f'{src}: {reason}'}")
        console.print(report.summary(), highlight=False)

    @app.command("embed")
    def embed(
        files: list[Path] = typer.Argument(..., help="Circuit files (.aig .aag .bench .v .sv)."),
        encoder: Path = typer.Option(
            ..., "--encoder", "-e", help="Encoder folder from save_pretrained/pretrain."
        ),
        out: Path = typer.Option(
            Path("embeddings.safetensors"), "--out", "-o", help="Output safetensors file."
        ),
    ) -> None:
        """Write node and graph embeddings of circuit files to one safetensors file (keys <stem>/node, <stem>/graph)."""
        from circuitml.pretrain.embed import embed_files

        index = embed_files(encoder, files, out)
        console.print(f"embedded {len(index)} circuit(s) into {out}")
