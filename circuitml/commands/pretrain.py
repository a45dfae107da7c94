"""``circuitml pretrain`` (MGVGA pretraining) and ``circuitml embed`` (embeddings from a pretrained encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    console = Console(soft_wrap=True)  # paths in one-line messages must not be wrapped

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
            False,
            "--resume",
            metavar="",
            help="Continue from the newest checkpoint in OUT, with its settings (+ options); "
            "starts fresh (and says so) when OUT has none.",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", metavar="", help="Replace the run in OUT (its data/ folder is kept)."
        ),
        data: Path = typer.Option(
            None, "--data", help="Dataset folder (default: generate the built-in one into OUT/data)."
        ),
        objectives: str = typer.Option(
            None,
            "--objectives",
            help="Objective set: mgvga (the paper's MGM+VGA, default), mgvga+funcrec, mgvga+funcsim, "
            "mgvga+contrast, all, or without MGM/VGA: funcrec, funcrec+funcsim, functional "
            "(funcrec+funcsim+contrast), funcrec+funcsim+qor (+ recipe response: needs --qor-labels).",
        ),
        qor_labels: Path = typer.Option(
            None,
            "--qor-labels",
            help="QoR labels (`circuitml data qor` on the corpus's exported circuits) for the qor objective "
            "(qor.labels).",
        ),
        init_encoder: str = typer.Option(
            None,
            "--init-encoder",
            help="Continue pretraining this encoder (a folder or a shipped name; model.init): its weights and "
            "architecture start the run.",
        ),
        verilog: str = typer.Option(
            None,
            "--verilog",
            help="VGA ablation: own (each design's Verilog, default), shuffled (another design's) or none.",
        ),
        verilog_encoder: str = typer.Option(
            None,
            "--verilog-encoder",
            help="builtin, a shipped language model (all-minilm-l6-v2) or a local Hugging Face folder.",
        ),
        steps: int = typer.Option(None, "--steps", help="Optimizer steps (schedule.steps; default 250)."),
        batch_size: int = typer.Option(
            None, "--batch-size", help="Graphs per optimizer step (data.batch_size; default 16)."
        ),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (optim.lr; default 1e-3)."),
        seed: int = typer.Option(
            None, "--seed", help="Seed of data order, masks and init (run.seed; default 0)."
        ),
        encoder: str = typer.Option(
            None, "--encoder", help="Encoder kind (model.encoder.kind; default deepgcn), e.g. gcn, dag_gru."
        ),
        threads: int = typer.Option(
            None, "--threads", help="torch CPU threads per process (run.threads; default 1; 0 = torch's)."
        ),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:i (run.device)."),
        stop_after: int = typer.Option(
            None, "--stop-after", help="Checkpoint and stop after this step (chunked runs)."
        ),
    ) -> None:
        """Pretrain a circuit encoder: MGVGA (masked gate modeling + Verilog-AIG alignment) and functional objectives."""
        from circuitml.pretrain.checkpoint import latest_checkpoint
        from circuitml.pretrain.config import load_config, objective_overrides
        from circuitml.pretrain.trainer import check_run_folder, resume_config, train

        overrides = list(set_)
        if objectives is not None:
            overrides += objective_overrides(objectives)
        options = {
            "vga.verilog": verilog,
            "model.verilog_encoder": verilog_encoder,
            "schedule.steps": steps,
            "data.batch_size": batch_size,
            "optim.lr": lr,
            "run.seed": seed,
            "model.encoder.kind": encoder,
            "run.threads": threads,
            "run.device": device,
            "qor.labels": qor_labels,
            "model.init": init_encoder,
        }
        overrides += [f"{key}={value}" for key, value in options.items() if value is not None]
        # paths and settings are checked before anything is built or written
        check_run_folder(out, resume=resume, overwrite=overwrite)
        if data is not None and not (data / "manifest.json").is_file():
            from circuitml.errors import ConfigError

            raise ConfigError(f"--data {data}: expected a circuitml dataset folder with manifest.json")
        cfg = None
        fresh = resume and latest_checkpoint(out / "checkpoints") is None
        if fresh:
            console.print(f"no checkpoint in {out}: starting a fresh run", highlight=False)
        if resume and config is None:  # continue with the checkpoint's own settings (+ overrides)
            cfg = resume_config(out, overrides)
        if cfg is None:
            cfg = load_config(config, overrides)
            explicit = any(item.split("=", 1)[0].strip().startswith("model.encoder") for item in set_)
            if init_encoder is not None and not explicit:  # its architecture replaces a config file's
                cfg.model.encoder = {}
        if data is not None:
            cfg.data.root = str(data)
        if not cfg.vga.enabled:  # both only feed VGA: refuse rather than ignore them
            for flag, value in (("--verilog", verilog), ("--verilog-encoder", verilog_encoder)):
                if value is not None:
                    from circuitml.errors import ConfigError

                    raise ConfigError(
                        f"{flag} {value}: VGA is not enabled in this run, so there is no Verilog to use"
                    )
        if qor_labels is not None and not cfg.qor.enabled:
            from circuitml.errors import ConfigError

            raise ConfigError(
                f"--qor-labels {qor_labels}: the qor objective is not enabled in this run (e.g. --objectives "
                "funcrec+funcsim+qor)"
            )
        if init_encoder is not None and encoder is not None:
            from circuitml.errors import ConfigError

            raise ConfigError(
                f"--init-encoder {init_encoder} and --encoder {encoder}: the continued encoder's kind is its own"
            )
        result = train(cfg, out, resume=resume, overwrite=overwrite, stop_after=stop_after)
        if result.interrupted:
            console.print(
                f"interrupted at step {result.step}; checkpoint saved to {result.checkpoint} "
                "— continue with --resume",
                highlight=False,
            )
            # typer.Exit(130) would be returned, not raised, by app(standalone_mode=False), and cli.main drops it
            raise SystemExit(130)
        if result.encoder_dir is not None and result.first and result.last:
            first, last = result.first, result.last
            parts = [
                f"{k} {first[k]:.4f} → {last[k]:.4f}"
                for k in last
                if k.startswith("loss") and k != "loss_aux" and (first[k] or last[k])
            ]
            console.print("; ".join(parts))
            console.print(
                f"{result.step} steps in {result.wall_time_s:.1f} s ({result.graphs_per_s:.1f} graphs/s, "
                f"{result.nodes_per_s:.0f} nodes/s); "
                f"encoder saved to {result.encoder_dir}"
            )
        else:
            console.print(f"stopped at step {result.step}; checkpoint saved to {result.checkpoint}")

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

    @app.command("encoders")
    def encoders() -> None:
        """List the pretrained encoders shipped with circuitml (load one with circuitml.load_encoder(NAME))."""
        from rich.table import Table

        from circuitml.encoders.shipped import describe_encoder, shipped_encoders

        found = shipped_encoders()
        if not found:
            console.print("no pretrained encoders are shipped with this installation")
            return
        columns = ("name", "kind", "hidden", "layers", "parameters", "objectives", "steps", "size")
        rows = []
        for folder in found.values():
            d = describe_encoder(folder)
            rows.append(
                (
                    d["name"],
                    str(d["kind"]),
                    str(d["hidden"]),
                    str(d["layers"]),
                    f"{d['parameters']:,}" if d["parameters"] else "-",
                    "+".join(d["objectives"] or []) or "-",
                    str(d["steps"] or "-"),
                    f"{d['bytes'] / 1e6:.1f} MB",
                )
            )
        if not console.file.isatty():  # the stream itself: FORCE_COLOR in a CI log must not cut the table
            # logs and pipes: rich would squeeze the table into 80 columns and cut names and objectives
            widths = [max(len(r[k]) for r in (columns, *rows)) for k in range(len(columns))]
            for row in (columns, *rows):
                typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            return
        table = Table(title="shipped pretrained encoders")
        for col in columns:
            table.add_column(col, no_wrap=col == "name")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    @app.command("embed")
    def embed(
        files: list[Path] = typer.Argument(..., help="Circuit files (.aig .aag .bench .v .sv)."),
        encoder: Path = typer.Option(
            ..., "--encoder", "-e", help="Encoder folder from save_pretrained/pretrain, or a shipped name."
        ),
        out: Path = typer.Option(
            Path("embeddings.safetensors"), "--out", "-o", help="Output safetensors file."
        ),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first file that cannot be read."),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="CPU threads for torch (default: torch's choice)."
        ),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
        dtype: str = typer.Option(
            "float32", "--dtype", help="float32, or bf16 (matmuls under bf16 autocast; output stays float32)."
        ),
    ) -> None:
        """Write node and graph embeddings of circuit files to one safetensors file (keys <stem>/node, <stem>/graph).

        Files that cannot be read are skipped and listed at the end (--strict stops at the first)."""
        from circuitml.pretrain.embed import embed_files
        from circuitml.tasks.common import configure_runtime

        dev = configure_runtime(threads, device)
        failures: list[tuple[str, str]] = []
        index = embed_files(encoder, files, out, strict=strict, failures=failures, device=dev, dtype=dtype)
        if failures:
            console.print(f"[yellow]{len(failures)} file(s) skipped:[/]")
            for src, reason in failures:
                console.print(
                    f"  {reason if reason.startswith(src) else f'{src}: {reason}'}", highlight=False
                )
        console.print(f"embedded {len(index)} circuit(s) into {out}", highlight=False)
