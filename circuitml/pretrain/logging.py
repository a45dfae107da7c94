"""Training logs: a CSV of per-step losses, TensorBoard scalars, and a PNG of the loss curves.

The CSV holds only deterministic numbers (step, learning rate, losses) so that a resumed run's file is
identical to an uninterrupted one; wall-clock figures (graphs/s) go to TensorBoard and the progress bar.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from circuitml.pretrain.checkpoint import atomic_write_bytes, atomic_write_text

__all__ = ["MetricsLogger", "read_metrics", "plot_losses"]


class MetricsLogger:
    """Appends one CSV row per logged step and mirrors it to TensorBoard.

    Args:
        out: run folder; writes ``metrics.csv`` and ``tensorboard/``.
        columns: metric names after ``step``.
        resume_step: when resuming, rows after this step (written before an interruption, after the last
            checkpoint) are dropped so the file continues exactly where the checkpoint left off.
        tensorboard: also write TensorBoard events.
    """

    def __init__(
        self, out: str | Path, columns: list[str], resume_step: int | None = None, tensorboard: bool = True
    ):
        self.out = Path(out)
        self.path = self.out / "metrics.csv"
        self.columns = ["step", *columns]
        self.out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
            self._rewrite(kept)
        elif not self.path.exists() or resume_step is None:
            self._rewrite([])
        self._fh = open(self.path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=purge)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in self.columns])
        atomic_write_text(self.path, buf.getvalue())

    def log(self, step: int, metrics: dict[str, float], extra: dict[str, float] | None = None) -> None:
        """Write ``metrics`` (CSV + TensorBoard) and ``extra`` (TensorBoard only) for ``step``."""
        self._csv.writerow([step, *(_fmt(metrics.get(c)) for c in self.columns[1:])])
        self._fh.flush()
        if self._tb is not None:
            for key, value in {**metrics, **(extra or {})}.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_losses(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot every ``loss*`` column of ``metrics.csv`` against the step (matplotlib Agg) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if rows:
        steps = [int(r["step"]) for r in rows]
        for column in rows[0]:
            if column.startswith("loss"):
                pairs = [
                    (s, float(r[column]))
                    for s, r in zip(steps, rows, strict=False)
                    if r[column] not in ("", "nan")
                ]
                if pairs and any(v != 0.0 for _, v in pairs):  # e.g. loss_aux of an encoder without MoE
                    ax.plot(*zip(*pairs, strict=False), label=column, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("MGVGA pretraining")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return Path(png_path)
