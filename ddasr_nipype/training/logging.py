"""Progress, CSV and TensorBoard logs, image grids and loss-curve plots of a training stage.

Per stage (``dsn`` or ``srn``) in the work directory::

    logs/<stage>.csv              iteration, learning rate, seconds, it/s and every loss term
    logs/tensorboard/<stage>/     the same scalars for TensorBoard
    images/<stage>_<iter>.png     grids of (HR, synthetic LR, SR) patches
    logs/<stage>_losses.png       the loss curves (redrawn at every image step and at the end)

Progress lines go to stderr: ``[dsn]  120/1500 (8%)  3.41 it/s  13.6 slices/s  eta 6m45s  total=...``.
In a terminal a progress bar (iterations, rate, time left, the last losses) runs below them; in a log
file (SLURM, CI) there are only the lines (:mod:`ddasr_nipype.progress`). On resume the CSV keeps only the rows up to the checkpoint's iteration, so the log has no duplicates.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["TrainingLogger", "save_image_grid", "plot_loss_curves", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def save_image_grid(path: str | Path, columns: Mapping[str, np.ndarray], *, max_rows: int = 4) -> Path:
    """Save a PNG grid: one column per named image batch (``[B, 1, H, W]`` or ``[B, H, W]``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    batches = [np.asarray(columns[n], dtype=np.float32).reshape(-1, *np.shape(columns[n])[-2:]) for n in names]
    rows = min(max_rows, min(len(b) for b in batches))
    fig, axes = plt.subplots(rows, len(names), figsize=(2.2 * len(names), 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, batch) in enumerate(zip(names, batches)):
            ax = axes[r][c]
            ax.imshow(batch[r].T, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{name} {batch.shape[-2]}x{batch.shape[-1]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curves(csv_path: str | Path, png_path: str | Path, *, title: str = "") -> Path | None:
    """Plot every loss column of a training CSV log (log-scaled y where positive)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return None
    keys = [k for k in rows[0] if k.startswith("loss/")]
    it = np.array([float(r["iteration"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        values = np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
        ax.plot(it, values, label=key[5:], linewidth=1)
    if all(float(r[k]) > 0 for r in rows for k in keys if r[k] not in ("", None)):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


class TrainingLogger:
    """Writes the progress line, CSV and TensorBoard scalars of one stage."""

    def __init__(self, work_dir: str | Path, stage: str, *, total: int, batch_size: int,
                 start: int = 0, tensorboard: bool = True, stream=None, progress: bool | None = None):
        """``progress``: draw a progress bar (``None``: when ``stream`` is a terminal); advance it with
        :meth:`advance` after every iteration."""
        from ..progress import progress_bar

        self.work_dir = Path(work_dir)
        self.stage, self.total, self.batch_size = stage, total, batch_size
        self.stream = stream if stream is not None else sys.stderr
        self.bar = progress_bar(total, desc=f"[{stage}]", initial=start, stream=self.stream, enabled=progress)
        self.csv_path = self.work_dir / "logs" / f"{stage}.csv"
        self.plot_path = self.work_dir / "logs" / f"{stage}_losses.png"
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        self._truncate(start)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.work_dir / "logs" / "tensorboard" / stage), purge_step=start or None)
        self._t0, self._it0 = time.perf_counter(), start
        self.last: dict[str, float] = {}

    def _truncate(self, start: int) -> None:
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as stream:
            reader = csv.DictReader(stream)
            self._fields = reader.fieldnames
            rows = [r for r in reader if int(r["iteration"]) <= start]
        with open(self.csv_path, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self._fields or ["iteration"])
            writer.writeheader()
            writer.writerows(rows)

    def rate(self, iteration: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (iteration - self._it0) / elapsed if elapsed > 0 else 0.0

    def log(self, iteration: int, losses: Mapping[str, float], *, lr: float, extra: Mapping[str, float] | None = None) -> None:
        rate = self.rate(iteration)
        row = {"iteration": iteration, "lr": lr, "seconds": round(time.perf_counter() - self._t0, 3),
               "it_per_s": round(rate, 4)}
        row.update({f"loss/{k}": float(v) for k, v in losses.items()})
        row.update(extra or {})
        self.last = dict(row)
        new = self._fields is None or not self.csv_path.exists()
        if self._fields is None:
            self._fields = list(row)
        with open(self.csv_path, "a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self._fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            for key, value in row.items():
                if key != "iteration":
                    self._writer.add_scalar(f"{self.stage}/{key}", float(value), iteration)
        eta = (self.total - iteration) / rate if rate > 0 else float("nan")
        terms = "  ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        line = (f"[{self.stage}] {iteration:>7d}/{self.total} ({100 * iteration / self.total:3.0f}%)  "
                f"{rate:.3g} it/s  {rate * self.batch_size:.3g} slices/s  "
                f"eta {format_duration(eta) if np.isfinite(eta) else '?'}  lr={lr:.3g}  {terms}")
        if self.bar is None:
            print(line, file=self.stream, flush=True)
            return
        self.advance(iteration)
        self.bar.write(line, file=self.stream)  # above the bar: the history of the losses
        if "total" in losses:
            self.bar.set_postfix_str(f"total={float(losses['total']):.4g} lr={lr:.3g}", refresh=True)

    def advance(self, iteration: int) -> None:
        """Move the progress bar (if any) to ``iteration``; cheap enough to call every iteration."""
        if self.bar is not None and iteration > self.bar.n:
            self.bar.update(iteration - self.bar.n)

    def images(self, iteration: int, columns: Mapping[str, np.ndarray]) -> Path:
        path = save_image_grid(self.work_dir / "images" / f"{self.stage}_{iteration:07d}.png", columns)
        self.plot()
        return path

    def plot(self) -> Path | None:
        if self.csv_path.exists():
            return plot_loss_curves(self.csv_path, self.plot_path, title=f"{self.stage} losses")
        return None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    @staticmethod
    def columns_from(batches: Sequence[tuple[str, "np.ndarray"]]) -> dict[str, np.ndarray]:
        return {name: np.clip(b, 0.0, 1.0) for name, b in batches}
