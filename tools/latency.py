"""onnxruntime CPU latency of compressed vs original models, side by side in one run.

For each model: trace at 224 px, a 50%-FLOPs decision (magnitude importance on the random-init
weights: latency depends on the shapes, not on the values), for each ``round_to``: slice, export
ONNX, then time the original and every compressed variant taking turns, one session alive at a time (medians of repeats) at
batch 1 and 8.  Prints a table of ratios compressed/original and writes CSV.

    python tools/latency.py                                    # resnet50, mobilenet_v2, deit_small
    python tools/latency.py --models resnet18 --round-to 1,8 --repeats 10 --csv lat.csv
    python tools/latency.py --models resnet50 --round-to 8 --decision runs/resnet50-scs-flops0.5/compressor.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

from compressor.budget import decide
from compressor.decision import Decision
from compressor.export import export_onnx
from compressor.export.flops import fvcore_flops
from compressor.export.latency import ort_latency
from compressor.importance import get_importance
from compressor.frontend import trace
from compressor.surgery import slice_model
from compressor.zoo import create_model_for_size


def measure(name: str, size: int, budget: float, round_tos: list[int], repeats: int,
            batches: tuple[int, ...], blocks_per_stage: int = 0, decision: Decision | None = None) -> list[dict]:
    torch.manual_seed(0)
    model, _ = create_model_for_size(name, size)
    model.eval()
    x = torch.randn(1, 3, size, size)
    space = trace(model, x)
    scores = get_importance("magnitude")(model, space)
    full = fvcore_flops(model, x)
    stages: dict[str, list[str]] = {}
    for b in space["depth"].blocks:
        stages.setdefault(b.stage, []).append(b.name)
    removed = [n for names in stages.values() for n in names[len(names) - blocks_per_stage:]] if blocks_per_stage else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"original": Path(tmp) / "original.onnx"}
        export_onnx(model, paths["original"], x, dynamic_batch=True, check=False)
        fractions = {}
        for r in round_tos:
            chosen = decision.rounded(space, r) if decision is not None else \
                decide(space, scores, budget, round_to=r, fixed=Decision({"depth": removed}))
            small = slice_model(model, space, chosen)
            fractions[r] = fvcore_flops(small, x) / full
            paths[f"round{r}"] = Path(tmp) / f"round{r}.onnx"
            export_onnx(small, paths[f"round{r}"], x, dynamic_batch=True)
        ms = ort_latency(paths, (3, size, size), batches=batches, repeats=repeats)
    for b, times in ms.items():
        for r in round_tos:
            rows.append({"model": name, "size": size, "batch": b, "round_to": r, "blocks_removed": len(removed),
                         "flops_fraction": round(fractions[r], 4), "original_ms": round(times["original"], 3),
                         "compressed_ms": round(times[f"round{r}"], 3),
                         "ratio": round(times[f"round{r}"] / times["original"], 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,deit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--round-to", default="1,8,16")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--blocks-per-stage", type=int, default=0, help="also remove the last K blocks of every stage")
    ap.add_argument("--decision", metavar="JSON", help="apply the decision saved in a run's compressor.json "
                    "(found by a method) instead of magnitude; with one model")
    ap.add_argument("--csv")
    args = ap.parse_args(argv)
    decision = None
    if args.decision:
        decision = Decision.from_dict(json.loads(Path(args.decision).read_text())["decision"])
    rows = []
    print(f"{'model':<26} {'batch':>5} {'round_to':>8} {'FLOPs':>6} {'orig ms':>8} {'comp ms':>8} {'ratio':>6}")
    for name in args.models.split(","):
        for row in measure(name, args.size, args.budget, [int(r) for r in args.round_to.split(",")],
                           args.repeats, tuple(int(b) for b in args.batches.split(",")), args.blocks_per_stage, decision):
            rows.append(row)
            print(f"{row['model']:<26} {row['batch']:>5} {row['round_to']:>8} {row['flops_fraction']:>6.3f} "
                  f"{row['original_ms']:>8.2f} {row['compressed_ms']:>8.2f} {row['ratio']:>6.3f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
