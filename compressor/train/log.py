"""What a stage measured per epoch, and where it is written (CSV, TensorBoard when installed)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EpochResult:
    """What one epoch measured (losses are means over samples; accuracies in [0, 1])."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float | int | None]:
        d = asdict(self)
        d.pop("extra")
        return {**d, **self.extra}


def append_csv(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if path.exists():
        rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if int(r["epoch"]) < int(row["epoch"])]
    rows.append({k: ("" if v is None else v) for k, v in row.items()})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


_WRITERS: dict[str, object] = {}


def tensorboard(log_dir: Path, stage: str, r: EpochResult) -> None:
    """Scalars to TensorBoard when it is installed (an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed
        return
    writer = _WRITERS.setdefault(str(log_dir), SummaryWriter(str(log_dir / "tensorboard")))
    for k, v in r.row().items():
        if k != "epoch" and isinstance(v, (int, float)):
            writer.add_scalar(f"{stage}/{k}", v, r.epoch)  # type: ignore[attr-defined]
    writer.flush()  # type: ignore[attr-defined]
