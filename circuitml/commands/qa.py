"""``circuitml qa train`` and ``circuitml qa eval``: extractive QA with Switch-FFN transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from circuitml.fileio import atomic_write

console = Console()


def _table(title: str, scores: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    return table


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    qa_app = typer.Typer(
        help="Extractive QA (SQuAD v1.1/v2.0) with Switch MoE FFN layers.", no_args_is_help=True
    )
    app.add_typer(qa_app, name="qa")

    @qa_app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", help="SQuAD-format JSON file to train on."),
        out: Path = typer.Option(..., "--out", help="Directory to write the trained model to."),
        eval_data: Optional[Path] = typer.Option(
            None, "--eval-data", help="Evaluation file (default: held-out contexts)."
        ),
        init_from: Optional[Path] = typer.Option(
            None,
            "--init-from",
            help="Local DistilBERT/BERT checkpoint, or a shipped LM name (all-minilm-l6-v2), to upcycle.",
        ),
        tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer directory."),
        epochs: int = typer.Option(8, help="Training epochs."),
        batch_size: int = typer.Option(16, help="Windows per batch."),
        lr: float = typer.Option(5e-4, help="Peak learning rate."),
        head_lr: Optional[float] = typer.Option(
            None, help="Peak learning rate of the span head (default: --lr)."
        ),
        layer_lr_decay: float = typer.Option(
            1.0,
            help="Upcycled models: layer l of L learns at lr * decay^(L - l), embeddings at l = 0 "
            "(ULMFiT/ELECTRA); 1: off.",
        ),
        max_length: int = typer.Option(256, help="Tokens per window."),
        stride: int = typer.Option(96, help="Overlap between windows of a long context."),
        d_model: int = typer.Option(128, help="Width of the scratch transformer."),
        layers: int = typer.Option(4, help="Layers of the scratch transformer."),
        experts: int = typer.Option(4, help="Experts per MoE layer."),
        router: str = typer.Option("switch", help="Router name from circuitml.moe's registry."),
        top_k: int = typer.Option(1, help="Experts per token."),
        seed: int = typer.Option(0, help="Random seed."),
        split_seed: Optional[int] = typer.Option(
            None,
            help="Seed of the held-out and validation contexts (default: --seed); fix it to compare seeds.",
        ),
        threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (cuda when available)."),
        val_fraction: Optional[float] = typer.Option(
            None,
            help="SQuAD v2.0: training contexts held out to tune the null threshold on (default 0.1; "
            "not with --oof-folds, which tunes on out-of-fold questions instead).",
        ),
        null_threshold: Optional[float] = typer.Option(
            None, help="Fixed null threshold (default: tuned on the validation contexts)."
        ),
        verifier: bool = typer.Option(
            False,
            "--verifier/--no-verifier",
            help="SQuAD v2.0: Read+Verify's answer verifier (logistic regression on the reader's scores) "
            "decides answer vs no answer, fitted on held-out questions.",
        ),
        oof_folds: int = typer.Option(
            0,
            help="SQuAD v2.0: fit the null threshold / verifier on out-of-fold predictions of K readers over "
            "the training contexts (K >= 2, K extra trainings) instead of on --val-fraction; 0: off.",
        ),
        oof_ensemble: bool = typer.Option(
            False,
            "--oof-ensemble/--no-oof-ensemble",
            help="With --oof-folds K: the K fold readers answer as an ensemble (cross-fitting: the decision "
            "is fitted on their own out-of-fold scores) instead of a final reader trained on all contexts.",
        ),
        ensemble: int = typer.Option(
            1,
            help="Readers averaged (seeds seed, seed+1, ...): K trainings, K passes at inference; the decision "
            "is fitted on the ensemble's logits.",
        ),
        eda_copies: int = typer.Option(0, help="EDA-augmented copies of each training question."),
        eda_synonyms: Optional[bool] = typer.Option(
            None,
            "--eda-synonyms/--no-eda-synonyms",
            help="EDA synonym replacement, synonyms from the pretrained model's word embeddings "
            "(default: on with --init-from).",
        ),
        synthetic_cloze: int = typer.Option(
            0,
            help="Synthetic cloze questions made from the training paragraphs (Lewis et al., ACL 2019); 0: none.",
        ),
        cloze_unanswerable: Optional[float] = typer.Option(
            None,
            help="Fraction of the cloze questions paired with a paragraph lacking their sentence "
            "(default: 0.3 on SQuAD v2.0, 0 on v1.1).",
        ),
        cloze_epochs: int = typer.Option(
            1, help="Epochs on the cloze questions before the real ones; 0: mixed into every epoch."
        ),
        freeze_bottom: int = typer.Option(0, help="Upcycled models: freeze embeddings + first N layers."),
        span_head: str = typer.Option(
            "linear",
            help="Upcycled models: 'linear' (BERT) or 'bilinear' (DrQA's question-conditioned term).",
        ),
        independent_span: float = typer.Option(
            0.0,
            help="Upcycled models: weight of Read+Verify's independent span loss (plausible answers too); 0: off.",
        ),
        sentence_prior: bool = typer.Option(
            False,
            "--sentence-prior/--no-sentence-prior",
            help="Upcycled models: add the frozen checkpoint's question-sentence similarity to the span logits.",
        ),
        uoe: Optional[str] = typer.Option(
            None,
            "--uoe",
            help="Union-of-Experts layers instead of Switch ones (scratch model), e.g. 'attn=2/4,mlp=4/8': "
            "head-group and MLP experts kept per token / experts.",
        ),
    ) -> None:
        """Train the QA model and print held-out EM/F1."""
        from circuitml.tasks.qa.model import SwitchQAConfig, parse_uoe
        from circuitml.tasks.qa.train import QATrainConfig, train_qa

        if val_fraction is not None and oof_folds:
            from circuitml.errors import ConfigError

            raise ConfigError(
                f"--val-fraction {val_fraction} with --oof-folds {oof_folds}: out-of-fold fitting holds out no "
                "validation contexts (it tunes on every training question); drop one of them"
            )

        model = SwitchQAConfig(
            d_model=d_model,
            num_layers=layers,
            num_heads=max(1, d_model // 32),
            d_ff=4 * d_model,
            num_experts=experts,
            router=router,
            top_k=top_k,
            init_from=str(init_from) if init_from else None,
            span_head=span_head,
            sentence_prior=sentence_prior,
            independent_span=independent_span,
            # upcycling starts from the dense model: top-k >= 2 renormalizes, top-1 uses p / stopgrad(p) so the
            # router keeps its task gradient; no token is dropped, as none skips the FFN in the dense model
            normalize_weights=init_from is not None and top_k > 1,
            unit_weight=init_from is not None and top_k == 1,
            capacity_factor=None if init_from is not None else 1.25,
            uoe=parse_uoe(uoe) if uoe is not None else None,
        )
        cfg = QATrainConfig(
            data=str(data),
            eval_data=str(eval_data) if eval_data else None,
            tokenizer=str(tokenizer) if tokenizer else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            head_lr=head_lr,
            layer_lr_decay=layer_lr_decay,
            max_length=max_length,
            stride=stride,
            seed=seed,
            split_seed=split_seed,
            threads=threads,
            device=device,
            val_fraction=0.1 if val_fraction is None else val_fraction,
            null_threshold=null_threshold,
            verifier=verifier,
            oof_folds=oof_folds,
            oof_ensemble=oof_ensemble,
            ensemble=ensemble,
            eda_copies=eda_copies,
            eda_synonyms=eda_synonyms,
            synthetic_cloze=synthetic_cloze,
            cloze_unanswerable=cloze_unanswerable,
            cloze_epochs=cloze_epochs,
            freeze_bottom=freeze_bottom,
            model=model,
        )
        with Progress(
            TextColumn("[bold]qa train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("train", total=None, loss=float("nan"))

            def on_step(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, loss=loss)

            metrics = train_qa(cfg, out, on_step=on_step)
        if "eval" in metrics:
            console.print(_table(f"held-out ({metrics['eval_questions']} questions)", metrics["eval"]))
            base = metrics["eval_baseline_no_answer"]
            console.print(f"always-no-answer baseline: EM {base['exact']:.2f}  F1 {base['f1']:.2f}")
        held = metrics.get("oof_questions") or metrics.get("val_questions")
        if held:
            where = "out-of-fold" if metrics.get("oof_questions") else "validation"
            plain = metrics.get("plain_null_threshold")
            beside = (
                f"; the reader's null threshold alone: {plain:.3f}" if verifier and plain is not None else ""
            )
            console.print(
                f"{'verifier' if verifier else 'null'} threshold {metrics['null_threshold']:.3f} "
                f"(tuned on {held} {where} questions from training contexts{beside})"
            )
        if "eval_reader" in metrics:
            r = metrics["eval_reader"]
            auc = f", answerability AUC {r['answerability_auc']:.3f}" if "answerability_auc" in r else ""
            console.print(
                f"reader before the decision: forced-answer HasAns F1 {r['forced_HasAns_f1']:.1f}{auc}"
            )
        for k, member in enumerate(metrics.get("members", [])):
            if "eval" in member:
                who, how = (
                    (f"fold reader {k}", "the out-of-fold threshold")
                    if oof_ensemble
                    else (f"ensemble member {k} (seed {seed + k})", "its own tuned threshold")
                )
                console.print(f"{who} alone: F1 {member['eval']['f1']:.2f} ({how})")
        if metrics.get("synthetic_questions"):
            console.print(f"trained on {metrics['synthetic_questions']} synthetic cloze questions too")
        console.print(f"model written to {out} ({metrics['steps']} steps, {metrics['wall_seconds']:.0f} s)")

    @qa_app.command("ensemble")
    def ensemble(
        models: list[Path] = typer.Option(
            ..., "--model", help="A reader written by `qa train` (repeat; one setting, different seeds)."
        ),
        out: Path = typer.Option(..., "--out", help="Directory to write the ensemble to."),
        threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (cuda when available)."),
    ) -> None:
        """Average the logits of trained readers; the decision is refitted on their validation contexts."""
        from circuitml.tasks.qa.train import ensemble_qa

        metrics = ensemble_qa(models, out, device=device, threads=threads)
        if "eval" in metrics:
            console.print(_table(f"held-out ({metrics['eval_questions']} questions)", metrics["eval"]))
        for seed, member in zip(metrics["member_seeds"], metrics.get("members", []), strict=False):
            if "eval" in member:
                console.print(
                    f"reader seed {seed} alone: F1 {member['eval']['f1']:.2f} (its own tuned threshold)"
                )
        console.print(f"ensemble of {len(models)} readers written to {out}")

    @qa_app.command("eval")
    def evaluate(
        model: Path = typer.Option(..., "--model", help="Directory written by `circuitml qa train`."),
        data: Path = typer.Option(..., "--data", help="SQuAD-format JSON file."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the metrics JSON here."),
        threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (cuda when available)."),
    ) -> None:
        """Official SQuAD EM/F1 of a trained model on a file."""
        from circuitml.tasks.qa.train import evaluate_qa

        scores = evaluate_qa(model, data, device=device, threads=threads)
        console.print(_table(str(data), scores))
        if out is not None:
            atomic_write(out, json.dumps(scores, indent=2))
