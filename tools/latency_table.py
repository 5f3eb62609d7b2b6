"""The latency table (compressor/latency): what it costs to build, and how well it predicts.

For each model at ``--size`` px (random-init weights: latency depends on shapes only):

1. build its layer table in a fresh cache directory with the budget's settings (batch, threads)
   and time it, then build it again and time the reuse (nothing measured the second time);
2. draw ``--decisions`` random decisions (random channel scores, a quarter of the residual blocks
   removed, a FLOPs target uniform in [0.2, 0.9]; widths rounded up to the channel block measured
   on this CPU, as a latency budget rounds them, or to ``--round-to``), predict each one's latency fraction from the
   table, and measure it: the sliced model exported and timed side by side with the original in
   onnxruntime (compressor.latency.Meter: one session at a time, turns alternate, medians of
   ``--repeats`` runs).  The error is predicted / measured - 1.

Prints one row per model (build seconds, error quantiles, share within +-10%, the published
nn-Meter figure beside it) and writes every decision to ``--csv``.

    python tools/latency_table.py                                  # resnet50, mobilenet_v2, deit_small
    python tools/latency_table.py --models resnet18 --size 64 --decisions 5 --repeats 6 --csv t.csv
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from compressor.budget import BudgetError, decision_for_budget
from compressor.frontend import trace
from compressor.latency import Meter, Settings, attach_latency, correctable_kinds
from compressor.surgery import slice_model
from compressor.zoo import create_model_for_size

try:
    from tools.bench import write_csv
except ImportError:  # run as a script
    from bench import write_csv

NN_METER = "nn-Meter (published): 99.0% within +-10% on a mobile CPU, 83.4% on a VPU"


def build_seconds(model, x, settings: Settings) -> tuple[object, object, float, float]:
    """The space with latency attached, its cost, and the seconds of a first build and of a reuse."""
    t0 = time.perf_counter()
    space = trace(model, x)
    kinds = correctable_kinds(space)  # the smallest decision measured too, as a latency budget's run does
    cost = attach_latency(space, model, x, settings, progress=True, smallest_of=kinds)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = attach_latency(trace(model, x), model, x, settings, smallest_of=kinds)
    if again.table.measured:
        raise RuntimeError("the second build measured layers: the cache was not reused")
    return space, cost, first, time.perf_counter() - t0


def random_decisions(space, n: int, seed: int, round_to: int):
    rng = np.random.default_rng(seed)
    made = 0
    while made < n:
        try:
            d = decision_for_budget(space, float(rng.uniform(0.2, 0.9)), seed=int(rng.integers(1 << 30)))
            yield d.rounded(space, round_to) if round_to > 1 else d
            made += 1
        except BudgetError:
            continue


def run_model(name: str, size: int, settings: Settings, decisions: int, repeats: int, seed: int,
              round_to: int | None) -> tuple[dict, list]:
    torch.manual_seed(seed)
    model, _ = create_model_for_size(name, size)
    model.eval()
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["COMPRESSOR_CACHE"] = cache
        space, cost, first, reuse = build_seconds(model, x, settings)
    round_to = round_to or cost.block or 1
    meter = Meter(model, x, batch=settings.batch, threads=settings.threads, repeats=repeats)
    rows = []
    try:
        for i, d in enumerate(random_decisions(space, decisions, seed, round_to)):
            predicted = d.cost(space, "latency") / space.cost.full("latency")
            original_ms, compressed_ms = meter(slice_model(model, space, d))
            measured_ratio = compressed_ms / original_ms
            rows.append({"model": name, "decision": i, "flops_fraction": round(d.flops(space) / space.cost.full("flops"), 4),
                         "predicted": round(predicted, 4), "measured": round(measured_ratio, 4),
                         "error": round(predicted / measured_ratio - 1, 4), "original_ms": round(original_ms, 3),
                         "compressed_ms": round(compressed_ms, 3)})
            print(f"  {name} #{i}: flops {rows[-1]['flops_fraction']:.3f} predicted {predicted:.3f} "
                  f"measured {measured_ratio:.3f}", file=sys.stderr, flush=True)
    finally:
        meter.close()
    err = np.abs([r["error"] for r in rows])
    summary = {"model": name, "round_to": round_to, "layers": cost.table.measured, "build_s": round(first, 1), "reuse_s": round(reuse, 1),
               "decisions": len(rows), "median_abs_error": float(np.median(err)),
               "p90_abs_error": float(np.quantile(err, 0.9)), "within_10pct": float((err <= 0.10).mean()),
               "mean_error": float(statistics.mean(r["error"] for r in rows))}
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2,deit_small_patch16_224")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--decisions", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", type=int, default=None, help="channel multiple of the random decisions "
                   "(default: the block measured on this CPU)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    settings = Settings(batch=args.batch, threads=args.threads)
    summaries, rows = [], []
    for name in args.models.split(","):
        s, r = run_model(name, args.size, settings, args.decisions, args.repeats, args.seed, args.round_to)
        summaries.append(s)
        rows += r
        if args.csv:
            write_csv(args.csv, rows)
    print(f"\nsize {args.size}, batch {args.batch}, threads {args.threads or 'default'}, "
          f"{args.decisions} random decisions per model, {args.repeats} timed runs each\n")
    print("| model | widths round to | layer shapes | table build | reuse | median abs error | p90 abs error "
          "| within +-10% | mean error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summaries:
        print(f"| {s['model']} | {s['round_to']} | {s['layers']} | {s['build_s']} s | {s['reuse_s']} s | {100 * s['median_abs_error']:.1f}% "
              f"| {100 * s['p90_abs_error']:.1f}% | {100 * s['within_10pct']:.0f}% | {100 * s['mean_error']:+.1f}% |")
    print(f"\n{NN_METER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
