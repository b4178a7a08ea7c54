"""A training run's record (rank 0): metrics.csv, TensorBoard scalars in tb/, loss_curves.png.

metrics.csv has one row per log_every steps and one per epoch end (the one with val_loss).
A resumed run first drops the rows (and TensorBoard events) past its checkpoint's step, so the
stretch between the checkpoint and the kill is not recorded twice.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from uniskel.core.files import atomic_write, write_text


class RunLog:
    """metrics.csv rows and TensorBoard scalars of one run directory."""

    def __init__(self, out: Path, teachers: list[str], resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.csv = out / "metrics.csv"
        self.columns = (["epoch", "step", "total", "gt"] + [f"kd/{t}" for t in teachers]
                        + ["val_loss", "lr", "samples_per_s"])
        rows = []
        if resume_step is not None and self.csv.is_file():
            with open(self.csv, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns)
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in self.columns} for r in rows)
        write_text(self.csv, buf.getvalue())
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step)

    def scalars(self, step: int, means: dict[str, float], lr: float, rate: float) -> None:
        """TensorBoard: the epoch's running mean of each loss term, lr, samples/s."""
        for k, v in means.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.add_scalar("train/lr", lr, step)
        self.tb.add_scalar("train/samples_per_s", rate, step)

    def row(self, epoch: int, step: int, means: dict[str, float], lr: float, rate: float,
            val_loss: float | None = None) -> None:
        """One metrics.csv row (empty cells for missing values)."""
        row = {**means, "epoch": epoch, "step": step, "val_loss": val_loss, "lr": lr,
               "samples_per_s": f"{rate:.2f}"}
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(
                {c: ("" if row.get(c) is None else row.get(c)) for c in self.columns})

    def epoch_end(self, step: int, val_loss: float | None) -> None:
        """Validation loss to TensorBoard, events flushed, loss_curves.png redrawn."""
        if val_loss is not None:
            self.tb.add_scalar("val/loss", val_loss, step)
        self.tb.flush()
        plot_curves(self.csv, self.csv.with_name("loss_curves.png"))

    def close(self) -> None:
        self.tb.close()


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss terms (train) and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in rows[0]:
        if col in ("total", "gt", "val_loss") or col.startswith("kd/"):
            pts = [(int(r["step"]), float(r[col])) for r in rows if r[col] not in ("", None)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if col == "val_loss" else None, label=col)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
