"""``compress`` on CUDA under each run setting, as a user runs it: fp32, bf16 and fp16 autocast,
channels_last, and DDP (``torchrun``, one process, NCCL).

Each case is one ``compress`` command in a child process (``python -m compressor``; DDP cases under
``python -m torch.distributed.run``).  Per case the table gives the exit status, training
throughput per stage (the stage's training images over each epoch's wall-clock, validation pass
included; median over the stage's epochs), the whole command's wall-clock, test accuracy, FLOPs kept
(fvcore), the ONNX check, and the GPU inference throughput of the original and the compressed model
(batch ``--batch``, input ``--infer-size``, the case's autocast dtype and memory format, CUDA
events, median of repeats, the two models taking turns).  A failed case shows its last error line.

    python tools/cuda_matrix.py                                          # resnet18, scs, every setting
    python tools/cuda_matrix.py --cases resnet50:scs:bf16,resnet18:tas:bf16 --csv cases.csv
    python tools/cuda_matrix.py --cases "" --case resnet18:prune:fp32:data.workers=0 \
        --case resnet18:prune:fp32:data.workers=4       # one setting, two recipe variants
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools.bench import write_csv
except ModuleNotFoundError:
    from bench import write_csv

# Run settings: extra ``compress`` arguments, and whether the command runs under torchrun.
SETTINGS: dict[str, tuple[list[str], bool]] = {
    "fp32": ([], False),
    "bf16": (["--set", "run.amp=bf16"], False),
    "fp16": (["--set", "run.amp=fp16"], False),
    "channels_last": (["--set", "run.channels_last=true"], False),
    "channels_last+bf16": (["--set", "run.channels_last=true", "--set", "run.amp=bf16"], False),
    "ddp-nccl": ([], True),
    "ddp-nccl+bf16": (["--set", "run.amp=bf16"], True),
}
DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def command(model: str, method: str, setting: str, out: Path, device: str, extra: list[str]) -> list[str]:
    args, ddp = SETTINGS[setting]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if ddp \
        else [sys.executable]
    return [*launcher, "-m", "compressor", model, "--method", method, "--out", str(out), "--device", device,
            "--quiet", "--set", "export.latency_repeats=0", *args, *extra]


def images_per_second(report: dict) -> dict[str, float]:
    """Median over each training stage's epochs of training images / epoch seconds."""
    n = report["data"]["train_images"]
    return {stage: round(statistics.median(n / r["seconds"] for r in rows), 1)
            for stage, rows in report["history"].items() if rows}


@torch.inference_mode()
def inference_ms(model: torch.nn.Module, x: torch.Tensor, dtype, repeats: int) -> float:
    """Median milliseconds of one forward (CUDA events, after warm-up)."""
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            model(x)
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def inference_throughput(out: Path, report: dict, batch: int, size: int | None, repeats: int) -> dict:
    """Images/s of the original and the compressed model on the GPU, taking turns."""
    from compressor.export.save import build_source, load_compressed

    arch = json.loads((out / "compressor.json").read_text())
    original = build_source(arch["source"], arch.get("source_kwargs") or {}).cuda().eval()
    compressed = load_compressed(out).cuda().eval()
    recipe = report["recipe"]["run"]
    dtype, cl = DTYPES[recipe["amp"]], recipe["channels_last"]
    shape = arch["input_shape"][1:]
    side = size or shape[-1]
    x = torch.randn(batch, shape[0], side, side, device="cuda")
    try:
        original(x[:1])
    except Exception:  # noqa: BLE001 - a model built for its training size (a ViT's patch grid)
        side = shape[-1]
        x = torch.randn(batch, *shape, device="cuda")
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
        original, compressed = (m.to(memory_format=torch.channels_last) for m in (original, compressed))
    ms = {"original": [], "compressed": []}
    for _ in range(3):  # turns, so that clock changes hit both models alike
        for name, m in (("original", original), ("compressed", compressed)):
            ms[name].append(inference_ms(m, x, dtype, repeats))
    orig, comp = statistics.median(ms["original"]), statistics.median(ms["compressed"])
    return {"infer_size": side, "infer_original_img_s": round(batch / orig * 1e3),
            "infer_compressed_img_s": round(batch / comp * 1e3), "infer_speedup": round(orig / comp, 2)}


def run_case(model: str, method: str, setting: str, sets: list[str], tmp: Path, args) -> dict:
    out = tmp / "-".join([model, method, setting, *sets])
    overrides = [a for s in args.set + sets for a in ("--set", s)]
    cmd = command(model, method, setting, out, args.device, overrides)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    row = {"model": model, "method": method, "setting": setting, "sets": ",".join(sets),
           "exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
    log = (proc.stdout + proc.stderr).strip()
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        (Path(args.logs) / f"{out.name}.log").write_text(" ".join(cmd) + "\n" + log + "\n")
    if proc.returncode != 0:
        lines = [ln for ln in log.splitlines() if ln.strip()]
        return {**row, "error": lines[-1][:300] if lines else "(no output)"}
    report = json.loads((out / "report.json").read_text())
    comp = report["compressed"]
    row.update({f"{k}_img_s": v for k, v in images_per_second(report).items()})
    row.update({"test_acc": round(100 * comp["test_accuracy"], 2),
                "flops_fvcore": round(comp["flops_fraction_fvcore"], 3),
                "onnx_max_rel_diff": f"{report['onnx']['max_rel_diff']:.1e}" if report.get("onnx") else None})
    if args.device.startswith("cuda") and args.batch:
        try:
            row.update(inference_throughput(out, report, args.batch, args.infer_size, args.repeats))
        except Exception as exc:  # noqa: BLE001 - a benchmark row records what broke
            row["error"] = f"inference timing: {type(exc).__name__}: {exc}"[:300]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(f"resnet18:scs:{s}" for s in SETTINGS),
                    help="comma-separated MODEL:METHOD:SETTING (settings: " + ", ".join(SETTINGS) + ")")
    ap.add_argument("--case", action="append", default=[], metavar="MODEL:METHOD:SETTING:KEY=VALUE,...",
                    help="one more case, with recipe overrides of its own")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for all cases")
    ap.add_argument("--batch", type=int, default=256, help="inference batch (0 = no inference timing)")
    ap.add_argument("--infer-size", type=int, default=224, help="inference input side (models fixed to their "
                    "training size are timed there)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--logs", help="directory for each case's full output")
    ap.add_argument("--keep", help="keep each case's output directory under this one (default: temporary)")
    ap.add_argument("--csv", default="cuda_matrix.csv")
    args = ap.parse_args(argv)
    specs = [c for c in args.cases.split(",") if c] + args.case
    cases = []
    for spec in specs:
        case = spec.split(":", 3)
        if len(case) < 3 or case[2] not in SETTINGS:
            ap.error(f"case {spec!r}: want MODEL:METHOD:SETTING[:KEY=VALUE,...], SETTING one of "
                     f"{', '.join(SETTINGS)}")
        cases.append((*case[:3], [kv for kv in (case[3].split(",") if len(case) > 3 else []) if kv]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        for model, method, setting, sets in cases:
            rows.append(run_case(model, method, setting, sets, where, args))
            print(rows[-1], flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(args.csv, [{k: r.get(k) for k in keys} for r in rows])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
