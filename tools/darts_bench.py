"""The DARTS family on its own cell space (issue #32): searched cells against random ones, at equal
evaluation training, on the embedded data.

For each variant and seed:

1. ``compress darts_search --recipe R`` (the variant's recipe and settings; no fine-tuning, no
   export) in a child process: its search wall-clock (the report's ``search`` stage) and the
   child's peak resident memory (``os.wait4``);
2. the genotype it found, its normal cell's skip-connections, and every grouped edge's strength
   (the weight the discretisation ranked it by);
3. that genotype's discrete network (``darts_network``, ``--eval-cells`` cells of ``--eval-c``
   channels, no auxiliary head, no drop-path) trained from scratch for ``--eval-epochs`` with one
   setting for every row (SGD lr 0.025 cosine, momentum 0.9, weight decay 3e-4, clip 5, batch
   64), its test accuracy, parameters and fvcore FLOPs.

``--random N`` adds N cells drawn by ``method.selection=random`` (seeded; the same evaluation).
Per variant: accuracy mean ± std, and Kendall tau between the edge rankings of each pair of seeds
(normal and reduction cell alike; the mean over pairs).  Rows go to ``--csv`` after each run.

    python tools/darts_bench.py                                   # the docs/darts.md table
    python tools/darts_bench.py --variants darts,pc4 --seeds 0 --random 1 --eval-epochs 1 --set model_args.c=4
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from scipy.stats import kendalltau

from compressor import load_recipe
from compressor.export.flops import fvcore_flops
from compressor.models.darts_cells import darts_network
from compressor.prepare import datasets
from compressor.recipe import RunConfig, TrainConfig
from compressor.train import Stage, Trainer

try:
    from tools.bench import mean_std, parse_overrides, parse_sets, write_csv
except ImportError:  # run as a script
    from bench import mean_std, parse_overrides, parse_sets, write_csv

VARIANTS = {  # label: (recipe, overrides)
    "darts": ("darts-cifar10-cpu", {}),
    "darts-2nd": ("darts-cifar10-cpu", {"method.order": 2}),
    "pc4": ("pc-darts-cifar10-cpu", {}),
    "pc1": ("pc-darts-cifar10-cpu", {"method.partial_channels": 1}),
    "pdarts": ("p-darts-cifar10-cpu", {}),
    "pdarts-nocap": ("p-darts-cifar10-cpu", {"method.skip_cap": None}),
    "sd": ("sd-darts-cifar10-cpu", {}),
    "random": ("darts-cifar10-cpu", {"method.selection": "random"}),
}
SEARCH_ONLY = {"finetune.epochs": 0, "export.onnx": False, "export.latency_repeats": 0, "run.progress": False}
EVAL = TrainConfig(epochs=1, lr=0.025, momentum=0.9, nesterov=False, weight_decay=3e-4, schedule="cosine", grad_clip=5.0)


def search(recipe: str, sets: dict, out: Path) -> dict:
    """One search in a child process: its report, with the child's peak memory (MB) and exit status."""
    args = [sys.executable, "-m", "compressor", "darts_search", "--recipe", recipe, "--out", str(out)]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"search {recipe} {sets} failed ({child.returncode}): {err.strip()[-400:]}")
    report = json.loads((out / "report.json").read_text())
    return {**report, "peak_mb": usage.ru_maxrss / 1024}


def evaluate(genotype: dict, seed: int, cells: int, c: int, epochs: int, data) -> dict:
    """``genotype``'s network trained from scratch as every row's is: test accuracy, params, FLOPs."""
    train, test, classes, size = data
    torch.manual_seed(seed)
    net = darts_network(json.dumps(genotype), num_classes=classes, c=c, layers=cells)
    trainer = Trainer(RunConfig(seed=seed, progress=False))
    trainer.fit(net, Stage("evaluation", train, EVAL.model_copy(update={"epochs": epochs}), 64))
    flops = fvcore_flops(net.cpu().eval(), torch.randn(1, 3, size, size))
    return {"test_acc": round(trainer.evaluate(net, test, 256)[1], 4),
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 4), "mflops": round(flops / 1e6, 2)}


def skips(genotype: dict) -> int:
    return sum(op == "skip_connect" for op, _ in genotype["normal"])


def mean_tau(strengths: list[dict[str, float]]) -> float | None:
    """Kendall tau between each pair of seeds' edge strengths (the same edges), averaged."""
    taus = []
    for a, b in itertools.combinations(strengths, 2):
        names = sorted(set(a) & set(b))
        taus.append(kendalltau([a[n] for n in names], [b[n] for n in names]).statistic)
    return statistics.mean(taus) if taus else None


def run(variant: str, spec: tuple[str, dict], seed: int, sets: dict, data, args, out: Path) -> dict:
    recipe, extra = spec
    report = search(recipe, {**SEARCH_ONLY, **sets, **extra, "run.seed": seed}, out / f"{variant}-{seed}")
    summary = report["method_summary"]
    genotype = summary["genotype"]
    row = {"variant": variant, "seed": seed, "normal_skips": skips(genotype),
           "search_s": round(report["seconds"].get("search", 0.0), 1), "peak_mb": round(report["peak_mb"]),
           **evaluate(genotype, seed, args.eval_cells, args.eval_c, args.eval_epochs, data),
           "genotype": json.dumps(genotype), "edge_strength": json.dumps(summary.get("edge_strength", {}))}
    print({k: v for k, v in row.items() if k not in ("genotype", "edge_strength")}, flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| variant | runs | test accuracy (mean ± std) | params (M) | MFLOPs | normal-cell skips "
             "| search s | peak MB | Kendall tau |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        tau = mean_tau([json.loads(r["edge_strength"]) for r in sel if r["edge_strength"] != "{}"])
        lines.append(f"| {variant} | {len(sel)} | {mean_std([100 * r['test_acc'] for r in sel])} "
                     f"| {mean_std([r['params_m'] for r in sel], 3)} | {mean_std([r['mflops'] for r in sel], 1)} "
                     f"| {mean_std([r['normal_skips'] for r in sel], 1)} | {mean_std([r['search_s'] for r in sel], 0)} "
                     f"| {max(r['peak_mb'] for r in sel)} | {'-' if tau is None else f'{tau:.2f}'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="darts,darts-2nd,pc4,pc1,pdarts,pdarts-nocap,sd",
                    help=f"comma-separated, of {', '.join(v for v in VARIANTS if v != 'random')}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--random", type=int, default=5, help="random cells (seeds 0..N-1)")
    ap.add_argument("--eval-cells", type=int, default=8)
    ap.add_argument("--eval-c", type=int, default=16)
    ap.add_argument("--eval-epochs", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for every search")
    ap.add_argument("--variant-set", action="append", default=[], metavar="VARIANT:KEY=VALUE,...",
                    help="overrides for one variant's searches")
    ap.add_argument("--csv", default="darts_bench.csv")
    args = ap.parse_args(argv)
    sets = parse_sets(args.set)
    variants = dict(VARIANTS)  # this run's, with its --variant-set overrides
    for item in args.variant_set:
        name, _, rest = item.partition(":")
        if name not in variants:
            ap.error(f"--variant-set: unknown variant {name!r}; known: {', '.join(variants)}")
        variants[name] = (variants[name][0], {**variants[name][1], **parse_overrides(rest)})
    unknown = [v for v in args.variants.split(",") if v not in variants]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; known: {', '.join(variants)}")
    recipe = load_recipe("darts-cifar10-cpu", {k: v for k, v in sets.items() if k.startswith("data.")})
    train, _, test, classes = datasets(recipe, None, "darts_search")
    data = (train, test, classes, recipe.data.input_size)
    todo = [(v, int(s)) for v in args.variants.split(",") for s in args.seeds.split(",")]
    todo += [("random", s) for s in range(args.random)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, seed in todo:
            rows.append(run(variant, variants[variant], seed, sets, data, args, Path(tmp)))
            write_csv(args.csv, rows)
    print("\n".join(["", *table(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
