"""Latency budgets against FLOPs budgets at equal measured latency, with accuracy (issue #33).

For each model, batch size and latency target, on the default recipe and the embedded data
(``--set`` applies to every run):

1. ``compress MODEL --budget-latency T --set budget.batch=B``;
2. the FLOPs fraction whose decision measures the latency ratio run 1 reached: a bisection over
   the FLOPs target of magnitude pruning (widths rounded as a FLOPs run rounds them), each step's
   model exported and timed side by side with the original;
3. ``compress MODEL --budget-flops F`` at that fraction;
4. once every row has run, three passes over all rows, each measuring the original (its
   architecture with the runs' head, at random init: latency depends on shapes only) and both
   runs' ``model.onnx`` side by side, taking turns every 10 runs, medians of ``--repeats`` runs
   each; a row's ratio is the median of its three passes (``latency_passes`` in the CSV), which
   lie minutes apart: one measurement here moves by up to ~6% against another minutes later, more
   than three in a row show.

A target the smallest decision measures above (by more than the tolerance) is refused up front
by ``compress``; the row says so with the measured figure.  Prints a table (latency run: the final ratio, whether it is within 5% of the target, its
measure-and-correct rounds, accuracy; FLOPs run: the fraction, its ratio, accuracy) and writes
every figure to ``--csv``.

    python tools/latency_budget.py                     # resnet50, mobilenet_v2, deit_small at 0.5, 0.3; batch 1, 8
    python tools/latency_budget.py --models resnet18 --targets 0.6 --batches 8 --set search.epochs=1 ...
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from compressor import compress, load_recipe
from compressor.budget import BudgetError, decide
from compressor.export.latency import latency_vs_original
from compressor.frontend import trace
from compressor.importance import get_importance
from compressor.latency import CONFIRM, Meter
from compressor.surgery import slice_model
from compressor.zoo import create_model_for_size

try:
    from tools.bench import parse_sets, write_csv
except ImportError:  # run as a script
    from bench import parse_sets, write_csv


def flops_for_latency(name: str, size: int, classes: int, ratio: float, batch: int, round_to: int,
                      steps: int = 7) -> float:
    """The FLOPs target whose magnitude-pruned model measures ``ratio`` of the original's latency."""
    torch.manual_seed(0)
    model, _ = create_model_for_size(name, size, num_classes=classes)
    model.eval()
    x = torch.randn(1, 3, size, size)
    space = trace(model, x)
    scores = get_importance("magnitude")(model, space)
    meter = Meter(model, x, batch=batch, threads=None)
    lo, hi = 0.02, 0.99
    try:
        for _ in range(steps):
            mid = (lo + hi) / 2
            try:
                decision = decide(space, scores, mid, round_to=round_to)
            except BudgetError:  # below the smallest FLOPs decision: the answer is above mid
                lo = mid
                continue
            original_ms, ms = meter(slice_model(model, space, decision))
            lo, hi = (mid, hi) if ms / original_ms < ratio else (lo, mid)
    finally:
        meter.close()
    return round((lo + hi) / 2, 3)


def measure_pass(rows: list[dict], repeats: int) -> None:
    """One side-by-side measurement of every row's two models against the original (its
    architecture with the runs' head, at random init: latency depends on shapes only); each row's
    ratios appended to its ``_passes``."""
    for r in rows:
        if r["refused"]:
            continue
        model, _ = create_model_for_size(r["model"], r["_size"], num_classes=r["_classes"])
        x = torch.randn(1, 3, r["_size"], r["_size"])
        ms = latency_vs_original(model, x, r["_files"], batches=(r["batch"],), repeats=repeats)[r["batch"]]
        r["_passes"].append({k: ms[k] / ms["original"] for k in r["_files"]})


def finish_row(r: dict) -> dict:
    """The row without its working fields, and its final ratios (the median over its passes, and
    the passes) once it has any."""
    if r["refused"] or not r["_passes"]:
        return {k: v for k, v in r.items() if not k.startswith("_")}
    latency = [p["latency"] for p in r["_passes"]]
    ratio = statistics.median(latency)
    return {**{k: v for k, v in r.items() if not k.startswith("_")},
            "latency_ratio": round(ratio, 4), "within_5pct": abs(ratio / r["target"] - 1) <= 0.05,
            "latency_passes": " ".join(f"{v:.4f}" for v in latency),
            "flops_ratio": round(statistics.median(p["flops"] for p in r["_passes"]), 4)}


def run_row(name: str, target: float, batch: int, sets: dict, out: Path) -> dict:
    """The latency run and its FLOPs partner; the final ratios come later (:func:`measure_pass`)."""
    latency_dir, flops_dir = out / f"{name}-lat{target}-b{batch}", out / f"{name}-flops-for-lat{target}-b{batch}"
    recipe = load_recipe("default", {**sets, "budget.flops": None, "budget.latency": target, "budget.batch": batch})
    try:
        compress(name, recipe, out=latency_dir)
    except BudgetError as e:  # the smallest decision measures above the target: refused up front
        return {"model": name, "batch": batch, "target": target, "refused": str(e)}
    lat = json.loads((latency_dir / "report.json").read_text())
    size, classes = lat["input_shape"][-1], lat["data"]["classes"]  # the original as the runs built it
    round_to = load_recipe("default", sets).export.round_to
    flops = flops_for_latency(name, size, classes, lat["latency_budget"]["measured"], batch, round_to)
    compress(name, load_recipe("default", {**sets, "budget.flops": flops}), out=flops_dir)
    fl = json.loads((flops_dir / "report.json").read_text())
    return {"model": name, "batch": batch, "target": target,
            "rounds": len(lat["latency_budget"]["rounds"]), "rounds_measured": lat["latency_budget"]["measured"],
            "blocks_removed": len(lat["decision"].get("depth") or []),
            "latency_flops": round(lat["compressed"]["flops_fraction_fvcore"], 4),
            "latency_top1": lat["compressed"]["test_accuracy"], "flops_target": flops,
            "flops_top1": fl["compressed"]["test_accuracy"],
            "original_top1": lat["original"]["test_accuracy"], "refused": "",
            "_size": size, "_classes": classes, "_passes": [],
            "_files": {"latency": latency_dir / "model.onnx", "flops": flops_dir / "model.onnx"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2,deit_small_patch16_224")
    p.add_argument("--targets", default="0.5,0.3")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=200, help="final measurement: timed runs of each model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for all runs")
    p.add_argument("--csv", default="latency_budget.csv")
    args = p.parse_args(argv)
    sets = {"run.progress": False, **parse_sets(args.set)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for target in (float(t) for t in args.targets.split(",")):
                    rows.append(run_row(name, target, batch, sets, Path(tmp)))
                    write_csv(args.csv, [finish_row(r) for r in rows])
        for _ in range(CONFIRM):  # passes over all rows: a row's measurements lie minutes apart
            measure_pass(rows, args.repeats)
        rows = [finish_row(r) for r in rows]
        write_csv(args.csv, rows)
    print("| model | batch | latency target | measured | within 5% | rounds | FLOPs kept | top-1 "
          "| FLOPs budget at equal latency | measured | top-1 |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["refused"]:
            print(f"| {r['model']} | {r['batch']} | {r['target']:g} | refused | | | | | | | |")
            continue
        print(f"| {r['model']} | {r['batch']} | {r['target']:g} | {r['latency_ratio']:.3f} | "
              f"{'yes' if r['within_5pct'] else 'no'} | {r['rounds']} | {r['latency_flops']:.3f} | "
              f"{100 * r['latency_top1']:.2f}% | {r['flops_target']:g} | {r['flops_ratio']:.3f} | "
              f"{100 * r['flops_top1']:.2f}% |")
    for r in rows:
        if r["refused"]:
            print(f"{r['model']} batch {r['batch']} at {r['target']:g}: {r['refused']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
