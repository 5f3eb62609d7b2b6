"""Whole ``compress`` pipelines side by side: test accuracy, training wall-clock and FLOPs.

Each pipeline is a built-in recipe (or a recipe file) with optional overrides; for every model and
seed the pipelines run one after the other in this process (they take turns, so machine noise hits
them alike).  Training wall-clock is the sum of the base, search and fine-tune stages as the report
times them.  Prints a mean ± std table with each pipeline's training time relative to the first
pipeline's (per seed, then averaged) and writes every run to CSV.

    python tools/pipelines.py                                   # scs grow mode vs the prune-mode default
    python tools/pipelines.py --models resnet18 --seeds 0 --pipelines default,scs-grow,default:sparse_epochs=true
    python tools/pipelines.py --pipelines default --pipeline scs-grow:search.epochs=12,finetune.epochs=0
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from compressor import compress, load_recipe

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools.bench import QUIET, mean_std, parse_overrides, parse_sets, write_csv
except ModuleNotFoundError:
    from bench import QUIET, mean_std, parse_overrides, parse_sets, write_csv

STAGES = ("base", "search", "finetune")


def run_pipeline(model: str, spec: str, seed: int, common: dict, out: Path) -> dict:
    """One ``compress`` run of pipeline ``spec`` (``recipe[:key=value,...]``); its row."""
    source, _, rest = spec.partition(":")
    recipe = load_recipe(source, {**common, "model": model, "run.seed": seed, **parse_overrides(rest)})
    t0 = time.perf_counter()
    r = compress(model, recipe, out=out).report
    seconds = r["seconds"]
    return {"model": model, "seed": seed, "pipeline": spec, "method": recipe.method.name,
            "test_acc": round(r["compressed"]["test_accuracy"], 4),
            "flops_fraction_fvcore": round(r["compressed"]["flops_fraction_fvcore"], 4),
            "epochs": sum(getattr(recipe, s).epochs for s in STAGES),
            **{f"{s}_s": round(seconds.get(s, 0.0), 1) for s in STAGES},
            "training_s": round(sum(seconds.get(s, 0.0) for s in STAGES), 1),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--pipelines", default="default,scs-grow", help="comma-separated recipe[:key=value;...]")
    ap.add_argument("--pipeline", action="append", default=[], help="one more, recipe:key=value,key=value")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for all runs")
    ap.add_argument("--csv", default="pipelines.csv")
    args = ap.parse_args(argv)
    common = {**QUIET, **parse_sets(args.set)}
    pipelines = [p for p in args.pipelines.split(",") if p] + args.pipeline
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                first = None
                for spec in pipelines:
                    row = run_pipeline(model, spec, seed, common, Path(tmp) / f"{model}-{seed}-{len(rows)}")
                    first = first or row
                    row["training_vs_first"] = round(row["training_s"] / max(first["training_s"], 1e-9), 3)
                    rows.append(row)
                    print(row, flush=True)
    write_csv(args.csv, rows)
    print(f"\n| model | pipeline | epochs | test acc | training wall-clock | vs {pipelines[0]} | FLOPs (fvcore) | seeds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, spec in dict.fromkeys((r["model"], r["pipeline"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["pipeline"]) == (model, spec)]
        print(f"| {model} | {spec} | {sel[0]['epochs']} | {mean_std([100 * r['test_acc'] for r in sel])} | "
              f"{mean_std([r['training_s'] for r in sel], 0)} s | {mean_std([r['training_vs_first'] for r in sel])} | "
              f"{statistics.mean(r['flops_fraction_fvcore'] for r in sel):.3f} | {len(sel)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
