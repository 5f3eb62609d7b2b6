"""Coverage of the frontend/exporter round trip over the model zoo, with torch-pruning as yardstick.

For each model, in its own subprocess with a timeout and a memory cap: random init; trace; a
random decision removing about half the FLOPs over every kind of choice (channels, kernel windows
and, where the model has them, blocks);
slice; DESIGN §4 invariants 1-5; times and peak memory.  Then, in another subprocess, torch-pruning's
magnitude pruner to 50% MACs (pruned, forward, ONNX).

    python tools/coverage.py                       # torchvision classification + segmentation, the timm lists
    python tools/coverage.py --list-timm > tools/timm_per_module.txt   # one timm model per module
    python tools/coverage.py --models resnet18,vit_tiny_patch16_224 --csv out.csv --md out.md
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMM_MODELS = [
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto",
    "efficientnet_b0", "mobilenetv3_small_050", "regnetx_002", "resnext26ts", "densenet121",
    "inception_v3", "ghostnet_100", "repvgg_a0", "mixer_s16_224", "levit_128s", "efficientformer_l1",
    "poolformer_s12", "edgenext_xx_small", "rexnet_100", "coatnet_nano_rw_224", "maxvit_nano_rw_256",
    "resnet26d", "dpn68", "mixnet_s", "cspresnet50", "dla34", "res2net50_14w_8s", "resnest14d",
    "selecsls42b", "tinynet_a", "mobilevit_xxs", "mobilevitv2_050", "pit_ti_224", "nf_resnet26",
    "regnety_002", "fbnetc_100", "cait_xxs24_224", "xcit_nano_12_p16_224", "gcvit_xxtiny",
    "hiera_tiny_224", "fastvit_t8", "efficientvit_m0", "tiny_vit_5m_224", "ese_vovnet19b_dw",
    "lcnet_050", "mobileone_s0", "convit_tiny", "resmlp_12_224", "gmlp_ti16_224", "hrnet_w18_small",
    "hgnetv2_b0",
]

MEMORY_CAP = 20 * 1024**3
TIMM_PER_MODULE = Path(__file__).with_name("timm_per_module.txt")  # written by --list-timm


def torchvision_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_segmentation_models() -> list[str]:
    """torchvision's segmentation models (dict outputs: ``out``, optionally ``aux``)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models.segmentation))


def torchvision_detection_models() -> list[str]:
    """torchvision's detection models: per-image dicts out, so the round trip refuses them by name."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models.detection))


def timm_per_module() -> list[str]:
    """One timm model per architecture module (``timm.models._registry`` maps every model name to
    its module): the one with the fewest parameters, counted on the meta device (nothing is
    allocated).  Deterministic for an installed timm; ``--list-timm`` prints it."""
    from collections import defaultdict

    import timm
    import torch
    from timm.models._registry import _model_to_module

    by_module: dict[str, list[str]] = defaultdict(list)
    for name in timm.list_models():
        by_module[_model_to_module.get(name, "?")].append(name)
    chosen = []
    for _, names in sorted(by_module.items()):
        best = None
        for name in sorted(names):
            try:
                with torch.device("meta"):
                    count = sum(p.numel() for p in timm.create_model(name).parameters())
            except Exception:  # noqa: BLE001 - a model that cannot be built is not a candidate
                continue
            if best is None or count < best[0]:
                best = (count, name)
        if best is not None:
            chosen.append(best[1])
    return chosen


def timm_per_module_list() -> list[str]:
    """The list :func:`timm_per_module` wrote to ``timm_per_module.txt`` (empty if it is missing)."""
    return TIMM_PER_MODULE.read_text().split() if TIMM_PER_MODULE.exists() else []


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_child(kind: str, name: str, timeout: int, size: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--models", name]
    if size:
        cmd += ["--size", str(size)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        return {"status": "fail", "error": f"timeout after {timeout}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    if proc.returncode < 0:
        tail = [f"killed by signal {-proc.returncode} (memory cap {MEMORY_CAP >> 30} GiB?)"]
    return {"status": "fail", "error": tail[0][:300], "seconds": round(time.perf_counter() - t0, 1)}


# -- children ------------------------------------------------------------------------------------
def child_ours(name: str, size: int | None) -> dict:
    import torch

    from compressor.checks import check_round_trip

    torch.manual_seed(0)
    if name in torchvision_segmentation_models() + torchvision_detection_models():
        import torchvision  # not in the zoo: built here, without backbone weights

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        return check_round_trip(model, size=size or 224, target=0.5, source=name)
    return check_round_trip(name, size=size, target=0.5)


def child_torch_pruning(name: str, size: int | None) -> dict:
    import torch
    import torch_pruning as tp

    from compressor.export import export_onnx
    from compressor.zoo import create_model, example_input

    torch.manual_seed(0)
    model = create_model(name).eval()
    x = example_input(name, model, size=size)
    base, _ = tp.utils.count_ops_and_params(model, x)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    # Channel ratio steps of 0.1: MACs fall roughly as (1 - r)^2, so 3 steps reach 50% on most models.
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.9, iterative_steps=9, ignored_layers=head)
    macs = base
    for _ in range(9):
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, x)
        if macs <= 0.5 * base:
            break
    with torch.no_grad():
        model(x)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, Path(tmp) / "m.onnx", x)
    return {"status": "pass" if macs <= 0.55 * base else "fail", "macs_ratio": round(macs / base, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated torchvision or timm names (default: the whole list)")
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--size", type=int, help="input resolution override (default: the model's own)")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--no-yardstick", action="store_true", help="skip torch-pruning")
    ap.add_argument("--yardstick-only", action="store_true", help="run only torch-pruning")
    ap.add_argument("--combine", nargs="+", type=Path, metavar="CSV",
                    help="no runs: merge earlier --csv files (later files fill missing columns) into --md")
    ap.add_argument("--list-timm", action="store_true",
                    help=f"print one timm model per architecture module (for {TIMM_PER_MODULE.name}) and exit")
    ap.add_argument("--child", choices=["ours", "tp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list_timm:
        print("\n".join(timm_per_module()))
        return
    if args.child:
        fn = child_ours if args.child == "ours" else child_torch_pruning
        try:
            res = fn(args.models, args.size)
        except Exception as exc:  # noqa: BLE001 - reported as this model's failure
            res = {"status": "fail", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print("RESULT " + json.dumps(res), flush=True)
        return
    tv = set(torchvision_models()) | set(torchvision_segmentation_models()) | set(torchvision_detection_models())
    if args.combine:
        merged: dict[str, dict] = {}
        for path in args.combine:
            with open(path) as f:
                rows_in = csv.DictReader(f) if path.suffix == ".csv" else \
                    (_parse_line(line) for line in f if line.startswith("model="))
                for row in rows_in:
                    row["source"] = "timm" if row["model"].startswith("timm:") or row["model"] not in tv \
                        else "torchvision"
                    cur = merged.setdefault(row["model"], {})
                    if row.get("status"):  # a newer run of ours replaces every one of our columns
                        for k in COLUMNS[2:COLUMNS.index("tp_status")]:
                            cur.pop(k, None)
                    cur.update({k: v for k, v in row.items() if v not in ("", None) or k not in cur})
        _summary(list(merged.values()), args)
        return
    timm_list = list(TIMM_MODELS)
    timm_list += [n for n in timm_per_module_list() if n not in timm_list]  # plus one per timm module
    timm_names = [f"timm:{n}" if n in tv else n for n in timm_list]  # timm's densenet121, not torchvision's
    names = args.models.split(",") if args.models else \
        torchvision_models() + torchvision_segmentation_models() + torchvision_detection_models() + timm_names
    rows = []
    start = time.perf_counter()
    for name in names:
        source = "timm" if name.startswith("timm:") or name not in tv else "torchvision"
        row = {"model": name, "source": source}
        if not args.yardstick_only:
            row.update(run_child("ours", name, args.timeout, args.size))
        if not args.no_yardstick:
            tpres = run_child("tp", name, args.timeout, args.size)
            row["tp_status"] = tpres.get("status")
            row["tp_error"] = tpres.get("error", "")
            row["tp_macs_ratio"] = tpres.get("macs_ratio", "")
        rows.append(row)
        print(_line(row), flush=True)
    _summary(rows, args, minutes=(time.perf_counter() - start) / 60)


COLUMNS = ["model", "source", "status", "flops_ratio", "inv1", "inv2", "flops_vs_fvcore", "params_exact",
           "inv4", "onnx_exporter", "inv5", "grow", "groups", "prunable", "blocks", "kernel_sites", "params", "trace_s",
           "trace_mem_x", "trace_peak_mb", "slice_s", "peak_mb", "error",
           "tp_status", "tp_macs_ratio", "tp_error"]


def _parse_line(line: str) -> dict:
    """Inverse of :func:`_line` (for logs of runs that were stopped before writing their CSV)."""
    keys = list(re.finditer(r"(?:^| )(" + "|".join(COLUMNS) + r")=", line.rstrip("\n")))
    row = {}
    for m, nxt in zip(keys, keys[1:] + [None]):
        row[m.group(1)] = line[m.end(): nxt.start() if nxt else len(line.rstrip("\n"))]
    return row


def _line(row: dict) -> str:
    return " ".join(f"{k}={row.get(k)}" for k in COLUMNS if row.get(k) not in (None, ""))


def model_lists(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The lists the issue counts separately (a timm model can be on both timm lists)."""
    def pick(names, source: str) -> list[dict]:
        names = set(names)
        return [r for r in rows if r["source"] == source and r["model"].removeprefix("timm:") in names]

    return [("torchvision classification", pick(torchvision_models(), "torchvision")),
            ("torchvision segmentation", pick(torchvision_segmentation_models(), "torchvision")),
            ("torchvision detection", pick(torchvision_detection_models(), "torchvision")),
            ("timm, curated", pick(TIMM_MODELS, "timm")),
            ("timm, one per architecture module", pick(timm_per_module_list(), "timm"))]


SCALE_BINS = [0, 5e6, 2e7, 5e7, 1e8, 3e8, float("inf")]  # parameter counts


def _sized(rows: list[dict]) -> list[dict]:
    """The rows that have a parameter count and a trace peak."""
    return [r for r in rows if r.get("params") not in (None, "") and r.get("trace_peak_mb") not in (None, "")]


def _scale(rows: list[dict]) -> list[str]:
    """Trace time and trace peak memory against model size: a table by parameter count."""
    rows = _sized(rows)
    out = [("| parameters | models | trace_s median | trace_s max | trace peak MB median | trace peak MB max "
            "| trace_mem_x max |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for lo, hi in itertools.pairwise(SCALE_BINS):
        sel = [r for r in rows if lo <= float(r["params"]) < hi]
        if not sel:
            continue
        ts = [float(r["trace_s"]) for r in sel]
        mb = [float(r["trace_peak_mb"]) for r in sel]
        label = f"≥ {lo / 1e6:g}M" if hi == float("inf") else f"< {hi / 1e6:g}M" if lo == 0 \
            else f"{lo / 1e6:g}M–{hi / 1e6:g}M"
        out.append(f"| {label} | {len(sel)} | {statistics.median(ts):.1f} | {max(ts):.1f} | "
                   f"{statistics.median(mb):.0f} | {max(mb):.0f} | {max(float(r['trace_mem_x']) for r in sel):.2f} |")
    return out


def _plot_scale(rows: list[dict], path: Path) -> None:
    """Log-log scatter of trace time and trace peak memory against parameters."""
    from compressor.plotting import pyplot

    plt = pyplot()
    rows = _sized(rows)
    if not rows:
        return
    params = [float(r["params"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "trace_s", "trace time (s, validation included)"),
                           (axes[1], "trace_peak_mb", "trace peak memory (MB, weights included)")):
        ax.scatter(params, [float(r[key]) for r in rows], s=10)
        ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary(rows: list[dict], args, minutes: float | None = None) -> None:
    lines = []
    for label, sel in model_lists(rows):
        if not sel:
            continue
        ours = sum(r.get("status") == "pass" for r in sel)
        theirs = sum(r.get("tp_status") == "pass" for r in sel)
        both = sum(r.get("tp_status") == "pass" and r.get("status") == "pass" for r in sel)
        tp_only = [r["model"] for r in sel if r.get("tp_status") == "pass" and r.get("status") != "pass"]
        lines.append(f"| {label} | {len(sel)} | {ours} ({100 * ours / len(sel):.0f}%) | "
                     f"{theirs if not args.no_yardstick else '-'} | {both} | {', '.join(tp_only) or 'none'} |")
    table = ["| list | models | compressor passes | torch-pruning passes | both pass | torch-pruning only |",
             "|---|---|---|---|---|---|", *lines]
    mem = [(float(r["trace_mem_x"]), r["model"]) for r in rows if r.get("trace_mem_x") not in (None, "")]
    if mem:
        over = [f"{m} ({x:.1f}x)" for x, m in sorted(mem, reverse=True) if x > 3.0]
        table += ["", f"Trace peak memory against a plain forward pass (weights included): median "
                  f"{statistics.median(x for x, _ in mem):.2f}x, largest {max(mem)[0]:.2f}x ({max(mem)[1]}) over "
                  f"{len(mem)} models; above 3x: {', '.join(over) or 'none'}."]
    print("\n".join(table))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    if args.md:
        cmd = "python tools/coverage.py" + (f" --models {args.models}" if args.models else "") \
            + (f" --size {args.size}" if args.size else "") + (" --no-yardstick" if args.no_yardstick else "")
        took = f" The run took {minutes:.0f} minutes." if minutes is not None else ""
        plot = args.md.with_name(args.md.stem + "_scale.png")
        _plot_scale(rows, plot)
        body = ["# Coverage", "", f"Regenerate with `{cmd} --md {args.md}`.{took}", "", *table, "",
                ("Trace time and peak memory against model size "
                 f"([{plot.name}]({plot.name}): the same, one point per model):"), "", *_scale(rows), "",
                "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in rows:
            body.append("| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k in COLUMNS) + " |")
        args.md.write_text("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
