"""Wall-clock of an scs search epoch with a share of the units drawn on: the whole gated network
(zeros in it) against the sliced active network (``method.sparse_epochs``), beside a plain epoch.

Each variant trains one epoch through the project's Trainer on random data; the draw ``q`` is
fixed to the requested share of every group's free units (seeded, the same for both scs variants),
blocks all on.  The figure per variant is the median over ``--repeats`` epochs, the variants taking
turns (plain, whole@s, sliced@s, ... per repeat), so machine noise hits them alike.  The sliced
variant's time includes building the sub-network and writing its weights back.

    python tools/sparse_epochs.py                                   # resnet18 at 32 px, batch 64
    python tools/sparse_epochs.py --models resnet18,mobilenet_v2 --shares 1,0.5,0.25 --repeats 3 --csv e.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from compressor.frontend import trace
from compressor.methods.base import SearchContext
from compressor.methods.scs import ScsConfig, ScsMethod
from compressor.recipe import BudgetConfig, RunConfig, TrainConfig
from compressor.train import Stage, Trainer
from compressor.zoo import create_model_for_size

try:
    from tools.bench import share_of_units, write_csv
except ImportError:  # run as a script from tools/
    from bench import share_of_units, write_csv


class FixedDraw(ScsMethod):
    """scs whose draw is a fixed share of every group's free units (the rest of the epoch as is)."""

    share = 1.0

    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        metrics = super().begin_epoch(epoch, epochs)
        units = self.logits["channels"]
        keep = share_of_units(self.space, self.share, seed=epoch)
        units.q.copy_(torch.from_numpy(keep[units.free.cpu().numpy()].astype(np.float32)))
        self.logits["depth"].q.fill_(1)
        return metrics


def epoch_seconds(name: str, size: int, variant: str, share: float, data, batch: int) -> float:
    torch.manual_seed(0)
    model, _ = create_model_for_size(name, size, num_classes=10)
    trainer = Trainer(RunConfig(progress=False))
    cfg = TrainConfig(epochs=1, lr=0.01)
    if variant == "plain":
        return trainer.fit(model.train(), Stage("plain", data, cfg, batch))[0].seconds
    space = trace(model.eval(), torch.randn(1, 3, size, size))
    method = FixedDraw(ScsConfig(sparse_epochs=variant == "sliced"), space)
    method.share = share
    ctx = SearchContext(trainer, data, None, batch, BudgetConfig(flops=0.5), None, 0, epochs=cfg)
    return method.search(model.train(), ctx).history[0]["seconds"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--shares", default="1,0.5,0.25")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(args.samples, 3, args.size, args.size, generator=g),
                                          torch.randint(0, 10, (args.samples,), generator=g))
    shares = [float(s) for s in args.shares.split(",")]
    rows = []
    print(f"{'model':<16}{'share on':>9}{'plain s':>9}{'whole s':>9}{'sliced s':>10}{'sliced/whole':>14}"
          f"{'sliced/plain':>14}")
    for name in args.models.split(","):
        times: dict[tuple, list[float]] = {}
        variants = [("plain", 1.0)] + [(v, s) for s in shares for v in ("whole", "sliced")]
        for _ in range(args.repeats):
            for v, s in variants:
                times.setdefault((v, s), []).append(epoch_seconds(name, args.size, v, s, data, args.batch))
        plain = statistics.median(times[("plain", 1.0)])
        for s in shares:
            whole, sliced = statistics.median(times[("whole", s)]), statistics.median(times[("sliced", s)])
            rows.append({"model": name, "share_on": s, "plain_s": round(plain, 3), "whole_s": round(whole, 3),
                         "sliced_s": round(sliced, 3), "sliced_over_whole": round(sliced / whole, 3),
                         "sliced_over_plain": round(sliced / plain, 3), "repeats": args.repeats,
                         "size": args.size, "batch": args.batch, "samples": args.samples})
            print(f"{name:<16}{s:>9.2f}{plain:>9.2f}{whole:>9.2f}{sliced:>10.2f}{sliced / whole:>14.3f}"
                  f"{sliced / plain:>14.3f}", flush=True)
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    sys.exit(main())
