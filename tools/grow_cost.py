"""``grow`` against training its target from scratch for the same total epochs, side by side in one run.

Each run is one ``compress MODEL --method grow`` with ``method.scratch_baseline`` on: the grow path
(seed A, seed B, growth, fine-tune) and, in the same process right after it, the same target
re-initialised and trained for the same total epochs.  Prints a mean ± std table of test accuracy,
wall-clock and counted training FLOPs (grow / scratch) and writes every run to CSV.

    python tools/grow_cost.py                                            # the docs/grow.md table
    python tools/grow_cost.py --models resnet18 --seeds 0 --variants grow,grow:new_coefficients=copy
    python tools/grow_cost.py --variants grow,grow:fusion=false,grow:second_seed=0.8   # ablations
    python tools/grow_cost.py --set method.scratch_baseline=false ...   # ablations without the baseline
    python tools/grow_cost.py --set method.equal_time_baselines=true    # + target and seed at grow's wall-clock
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


def parse_variant(spec: str) -> tuple[str, dict]:
    """``grow`` or ``grow:fusion=false,new_coefficients=random`` -> (label, method overrides)."""
    return spec, parse_overrides(spec.partition(":")[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--budget", type=float, default=0.5, help="FLOPs budget of the target (method.target=budget)")
    ap.add_argument("--variants", default="grow", help="comma-separated, each grow[:key=value;...]")
    ap.add_argument("--variant", action="append", default=[], help="one more variant, grow:key=value,key=value")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for all runs")
    ap.add_argument("--csv", default="grow_cost.csv")
    args = ap.parse_args(argv)
    common = {"method": {"name": "grow", "scratch_baseline": True}, "budget": {"flops": args.budget},
              **QUIET, **parse_sets(args.set)}
    variants = [v for v in args.variants.split(",") if v] + args.variant
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                for label, extra in map(parse_variant, variants):
                    t0 = time.perf_counter()
                    recipe = load_recipe("default", {**common, "model": model, "run.seed": seed, **extra})
                    r = compress(model, recipe, out=Path(tmp) / f"{model}-{seed}-{len(rows)}").report
                    b = r["method_summary"].get("baseline")  # absent with method.scratch_baseline=false
                    grow_s = r["seconds"].get("search", 0.0) + r["seconds"].get("finetune", 0.0)
                    row = {"model": model, "seed": seed, "variant": label,
                           "grow_acc": round(r["compressed"]["test_accuracy"], 4),
                           "scratch_acc": round(b["test_top1"], 4) if b else "",
                           "grow_seconds": round(grow_s, 1), "scratch_seconds": b["seconds"] if b else "",
                           "wall_clock_ratio": b["wall_clock_ratio"] if b else "",
                           "training_flops_ratio": b["training_flops_ratio"] if b else "",
                           "val_top1_after_growth": r["method_summary"].get("val_top1", {}).get("grown", ""),
                           "flops_fraction_fvcore": round(r["compressed"]["flops_fraction_fvcore"], 4),
                           **_equal_time(b),
                           "epochs": sum(r["method_summary"]["seed_epochs"]) + recipe.finetune.epochs,
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(row, flush=True)
    write_csv(args.csv, rows)
    print("\n| model | variant | grow test acc | val acc right after growth | scratch test acc | "
          "wall-clock grow/scratch | training FLOPs grow/scratch | target FLOPs (fvcore) | seeds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["variant"]) == (model, variant)]

        def ms(key, scale=1.0, digits=2, sel=sel):
            return mean_std([scale * r[key] for r in sel if r[key] != ""], digits)

        print(f"| {model} | {variant} | {ms('grow_acc', 100)} | {ms('val_top1_after_growth', 100, 1)} | "
              f"{ms('scratch_acc', 100)} | {ms('wall_clock_ratio')} | {ms('training_flops_ratio', 1, 3)} | "
              f"{statistics.mean(r['flops_fraction_fvcore'] for r in sel):.3f} | {len(sel)} |")
    if any(r["equal_time_target_acc"] != "" for r in rows):
        print("\nAt the grow path's wall-clock (epochs that fit, each at its own measured epoch time):\n\n"
              "| model | variant | grow test acc | target from scratch | its epochs | seed alone | its epochs |"
              " seeds |\n|---|---|---:|---:|---:|---:|---:|---:|")
        for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in rows):
            sel = [r for r in rows if (r["model"], r["variant"]) == (model, variant)
                   and r["equal_time_target_acc"] != ""]
            if sel:
                print(f"| {model} | {variant} | {mean_std([100 * r['grow_acc'] for r in sel])} | "
                      f"{mean_std([100 * r['equal_time_target_acc'] for r in sel])} | "
                      f"{'/'.join(str(r['equal_time_target_epochs']) for r in sel)} | "
                      f"{mean_std([100 * r['equal_time_seed_acc'] for r in sel])} | "
                      f"{'/'.join(str(r['equal_time_seed_epochs']) for r in sel)} | {len(sel)} |")
    return 0


def _equal_time(baseline: dict | None) -> dict:
    """The equal-wall-clock columns (empty without ``method.equal_time_baselines``)."""
    eq = (baseline or {}).get("equal_wall_clock", {})
    t, s = eq.get("target from scratch", {}), eq.get("seed alone", {})
    return {"equal_time_target_acc": round(t["test_top1"], 4) if t else "", "equal_time_target_epochs": t.get("epochs", ""),
            "equal_time_seed_acc": round(s["test_top1"], 4) if s else "", "equal_time_seed_epochs": s.get("epochs", "")}


if __name__ == "__main__":
    sys.exit(main())
