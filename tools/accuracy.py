"""Methods against the ``prune`` baseline at equal budget and equal epochs, on the embedded data.

For each model and seed the original is trained once (``base`` epochs) and shared by every run of
that seed.  Each method then gets the same total number of epochs: scs trains ``search`` epochs
and fine-tunes ``finetune``; prune fine-tunes ``search + finetune`` epochs.  Prints a mean ± std
table of test accuracy and fvcore FLOPs fraction, and writes every run to CSV.

    python tools/accuracy.py                                        # the docs/accuracy.md table
    python tools/accuracy.py --models resnet18 --budgets 0.5 --seeds 0 --methods scs,prune
    python tools/accuracy.py --variants scs:temperature=global      # ablations: method:key=value
    python tools/accuracy.py --variants tas,tas:distill.teacher=none,prune,prune:distill.teacher=original
    python tools/accuracy.py --variants prune --variant tas:mixture=pad,final_init=original
    python tools/accuracy.py --base-set base.epochs=8 --base-set data.limit_train=null   # converged original
    python tools/accuracy.py --epochs 6,12,24                       # accuracy against total epochs

The CSV is rewritten after every run, so an interrupted benchmark keeps what it measured; ``--resume``
reads it back and runs only the missing (model, seed, budget, variant) rows.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from compressor import compress, load_recipe
from compressor.prepare import build_original, datasets
from compressor.recipe import method_override
from compressor.train import Stage, Trainer

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools.bench import QUIET, mean_std, parse_overrides, parse_sets, write_csv
except ModuleNotFoundError:
    from bench import QUIET, mean_std, parse_overrides, parse_sets, write_csv


def base_weights(model: str, recipe, seed: int, directory: Path) -> tuple[Path, float]:
    """Train the original once per (model, seed); return its weights file and test accuracy."""
    torch.manual_seed(seed)
    train, val, test, n = datasets(recipe, None, model)
    net, _, _, _ = build_original(model, recipe, n)
    trainer = Trainer(recipe.run)
    trainer.fit(net, Stage("base", train, recipe.base, recipe.data.batch_size, val_set=val))
    path = directory / f"{model}-seed{seed}.pt"
    torch.save(net.state_dict(), path)
    return path, trainer.evaluate(net, test, recipe.data.batch_size)[1]


def read_rows(path: str) -> list[dict]:
    """The rows of an earlier (interrupted) run of this tool, typed as it writes them; none if no file."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [{**r, "seed": int(r["seed"]), "budget": float(r["budget"]),
                 **{k: float(r[k]) for k in ("original_acc", "test_acc", "flops_fraction_fvcore",
                                             "params_fraction", "seconds")}} for r in csv.DictReader(f)]


def parse_variant(spec: str) -> tuple[str, str, dict]:
    """``scs``, ``scs:temperature=global,layers=false`` or ``prune:distill.teacher=original`` ->
    (label, method, overrides); a key without a dot is a key of the method's section.  A trailing
    ``@E`` (the ``--epochs`` schedule) stays in the label only."""
    method, _, rest = spec.partition("@")[0].partition(":")
    return spec, method, parse_overrides(rest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--budgets", default="0.5,0.25")
    ap.add_argument("--variants", default="scs,prune", help="comma-separated methods, each with at most one "
                    "key=value (method:key=value)")
    ap.add_argument("--variant", action="append", default=[], help="one more variant, method:key=value,key=value")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for all runs")
    ap.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides for training the shared original only (e.g. data.limit_train=null and "
                    "base.epochs=8: a converged teacher, as a user's pretrained model is)")
    ap.add_argument("--epochs", default="", help="comma-separated total epochs per variant (e.g. 6,12,24), split "
                    "2:1 into search and fine-tune as the default 4 + 2; each variant's label gets @E")
    ap.add_argument("--csv", default="accuracy.csv")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --csv and run only the others")
    args = ap.parse_args(argv)
    common = {"data.limit_train": 4000, "base.epochs": 3, "search.epochs": 4, "finetune.epochs": 2,
              **QUIET, **parse_sets(args.set)}
    base_only = parse_sets(args.base_set)
    variants = [v for v in args.variants.split(",") if v] + args.variant
    budgets = [float(b) for b in args.budgets.split(",")]
    schedules = {"": {}}  # label suffix -> epoch overrides
    if args.epochs:
        search = {int(e): round(2 * int(e) / 3) for e in args.epochs.split(",")}
        schedules = {f"@{e}": {"search.epochs": s, "finetune.epochs": e - s} for e, s in search.items()}
    rows = read_rows(args.csv) if args.resume else []
    done = {(r["model"], r["seed"], r["budget"], r["variant"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                todo = [(budget, *parse_variant(v + at), epochs) for budget in budgets
                        for at, epochs in schedules.items() for v in variants
                        if (model, seed, budget, v + at) not in done]
                if not todo:
                    continue
                base = load_recipe("default", {**common, "model": model, "run.seed": seed, **base_only})
                weights, base_acc = base_weights(model, base, seed, tmp)
                for budget, label, method, extra, epochs in todo:
                    o = {**common, **epochs, "run.seed": seed, "budget": {"flops": budget},
                         "weights": str(weights), **method_override(base, method), **extra}
                    t0 = time.perf_counter()
                    r = compress(model, load_recipe("default", o), out=tmp / f"{model}-{seed}-{budget}-{label}").report
                    row = {"model": model, "seed": seed, "budget": budget, "variant": label,
                           "original_acc": round(base_acc, 4),
                           "test_acc": round(r["compressed"]["test_accuracy"], 4),
                           "flops_fraction_fvcore": round(r["compressed"]["flops_fraction_fvcore"], 4),
                           "params_fraction": round(r["compressed"]["params_fraction"], 4),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(row, flush=True)
                    write_csv(args.csv, rows)
    print("\n| model | budget | variant | test accuracy (mean ± std) | FLOPs kept (fvcore) | seeds |")
    print("|---|---:|---|---:|---:|---:|")
    keys = sorted({(r["model"], r["budget"], r["variant"]) for r in rows}, key=lambda k: (k[0], -k[1], k[2]))
    for model, budget, variant in keys:
        sel = [r for r in rows if (r["model"], r["budget"], r["variant"]) == (model, budget, variant)]
        flops = statistics.mean(r["flops_fraction_fvcore"] for r in sel)
        print(f"| {model} | {budget:g} | {variant} | {mean_std([100 * r['test_acc'] for r in sel])} | {flops:.3f} "
              f"| {len(sel)} |")
    originals = {(r["model"], r["seed"]): r["original_acc"] for r in rows}
    for model in args.models.split(","):
        accs = [100 * a for (m, _), a in originals.items() if m == model]
        print(f"\noriginal {model}: {statistics.mean(accs):.2f}% test accuracy (mean of {len(accs)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
