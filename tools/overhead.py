"""Training-step time and peak memory of a method's search step vs a plain training step.

``--method scs``: the original with every channel and depth gate attached and the scs controller
computing the gate values at each forward; a step is forward, cross-entropy plus the scs penalty,
backward and an SGD update.  ``--method tas``: a search step is TAS's architecture step on a
held-out batch (the method's own ``arch_step``: Gumbel width/depth mixtures, CWI, cost loss, Adam)
followed by the weight step on a training batch; the plain step is forward, cross-entropy,
backward and an SGD update of the original.  Step times: the two models are
stepped alternately in one process (plain, gated, plain, ...), after warm-up, and each figure is a
median.  Peak memory: each model trains in a fresh child process; on CPU the figure is the peak
resident set during the steps (Linux ``VmHWM``, reset just before them) minus the resident set
before them (after handing freed heap back to the system, so that memory left over from building
and tracing the model cannot hide what the steps use), on CUDA the growth of ``torch.cuda.max_memory_allocated``.

    python tools/overhead.py                                   # resnet50, mobilenet_v2, deit_small
    python tools/overhead.py --models resnet18 --size 64 --batch 16 --steps 5 --csv overhead.csv
    python tools/overhead.py --method tas --models resnet50 --size 32 --batch 64   # the default recipe's step
    python tools/overhead.py --method tas --method-set mixture=pad --models resnet50 --size 32 --batch 64
    python tools/overhead.py --method grow --models resnet18,mobilenet_v2 --size 32 --batch 64
    python tools/overhead.py --method darts --method-set partial_channels=4 --models resnet50 --size 32 --batch 64

``--method darts``: every convolution and linear layer with candidates is a mixed op (1/K of its
output channels mixed with ``partial_channels=K``); a search step is darts's architecture step
(first order unless ``order=2``) on a held-out batch, then the weight step.

``--method grow``: the reference ("plain") is grow's target, the model cut to half its FLOPs
keeping the same share of every group (``method.target: budget``); the method's step is a seed
(half the target's width, conv and linear weights as template mixtures) with a plain SGD step.
Their ratio is what a seed epoch costs against a target epoch, the grow path's saving per epoch.

``FLOPs x``: the convolution and matrix-multiply FLOPs of one step of each, forward and backward
(``torch.utils.flop_counter``, which counts no elementwise work): what the step costs before
any kernel's efficiency, the floor of its time ratio where those layers dominate.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import multiprocessing as mp
import statistics
import sys
import time

import torch
from torch import nn

from compressor.frontend import trace
from compressor.gates import ControlledModel, attach_gates
from compressor.methods.base import SearchContext
from compressor.methods.darts import DartsConfig, DartsMethod
from compressor.methods.grow import GrowConfig, grow_target, mixture_seed, uniform_decision
from compressor.methods.scs import ScsConfig
from compressor.methods.scs_logits import ScsLogits
from compressor.methods.tas import TasConfig, TasMethod
from compressor.recipe import BudgetConfig, RunConfig
from compressor.train import Trainer
from compressor.zoo import create_model_for_size

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools.bench import parse_sets
except ModuleNotFoundError:
    from bench import parse_sets


def build(name: str, size: int, method: str, device: str,
          options: dict | None = None) -> tuple[nn.Module, object | None]:
    """The model to train and what the method adds to a step (``method``: plain, scs, tas, grow's
    ``target`` or a ``grow`` seed;
    ``options``: fields of the method's config, e.g. ``{"mixture": "pad"}``)."""
    options = options or {}
    torch.manual_seed(0)
    model, _ = create_model_for_size(name, size)
    if method == "plain":
        return model.to(device), None
    if method == "darts":  # the op kind's mixed ops under darts's architecture step
        config = DartsConfig(**options)
        space = trace(model.eval(), torch.randn(1, 3, size, size), kinds=["op"], candidates=config.candidates)
        darts = DartsMethod(config, space)
        return darts.supernet(attach_gates(model.train(), space), _context(device)).to(device), darts
    space = trace(model.eval(), torch.randn(1, 3, size, size))
    if method in ("target", "grow"):  # grow's target (the reference) or one of its seeds
        example = torch.randn(1, 3, size, size)
        target, tspace, halves = grow_target(model, space, uniform_decision(space, 0.5), example)
        if method == "target":
            return target.to(device), None
        seed = mixture_seed(target, tspace, halves, None, init=0, templates=GrowConfig(**options).templates)
        return seed.to(device), None
    if method == "scs":
        logits = ScsLogits(space, ScsConfig(**options), epochs=10)
        return ControlledModel(attach_gates(model.train(), space), logits).to(device), logits
    tas = TasMethod(TasConfig(**options), space)
    return tas.attach(model.train(), _context(device)).to(device), tas


def _context(device: str) -> SearchContext:
    """What an architecture step needs: a trainer (its optimizer is set per step) and a budget."""
    return SearchContext(Trainer(RunConfig(device=device, progress=False)), None, None, 0, BudgetConfig(flops=0.5),
                         16, 0, num_classes=10)


def make_step(model: nn.Module, extra: object | None, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()
    batch = (x, y, torch.arange(len(y), device=x.device))
    searches = isinstance(extra, (TasMethod, DartsMethod))
    if searches:
        extra.ctx.trainer.optimizer = opt

    def step() -> None:
        if searches:  # the architecture step on a held-out batch comes first
            extra.arch_step(batch, batch)
        loss = nn.functional.cross_entropy(model(x), y)
        if isinstance(extra, ScsLogits):  # the scs penalty, with a fixed lambda
            loss = loss + extra.penalty(1e-3, 1e-3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(name: str, size: int, batch: int, steps: int, warmup: int, device: str,
               method: str = "scs", options: dict | None = None) -> dict[str, float]:
    """Median milliseconds per training step, plain and gated stepped alternately."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    fns = {"plain": make_step(*build(name, size, _reference(method), device), x, y),
           "gated": make_step(*build(name, size, method, device, options), x, y)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def step_flops(name: str, size: int, batch: int, device: str, method: str = "scs",
               options: dict | None = None) -> dict[str, int]:
    """Convolution and matrix-multiply FLOPs of one training step, plain and gated (after one
    uncounted step, so that lazily built state is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    counts = {}
    for k, kind in (("plain", _reference(method)), ("gated", method)):
        step = make_step(*build(name, size, kind, device, options if k == "gated" else None), x, y)
        step()
        with FlopCounterMode(display=False) as counter:
            step()
        counts[k] = counter.get_total_flops()
    return counts


def _reference(method: str) -> str:
    """What a method's step is measured against: the plain original, or for grow its target."""
    return "target" if method == "grow" else "plain"


def _peak_child(name: str, size: int, batch: int, method: str, device: str, steps: int, out,
                options: dict | None = None) -> None:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    step = make_step(*build(name, size, method, device, options), x, y)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, or steps would reuse it unseen
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    for _ in range(steps):
        step()
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _proc_status("VmHWM")
    out.put(peak - before)


def _proc_status(key: str) -> int:
    """A size from /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: peak CPU memory needs Linux")


def peak_memory(name: str, size: int, batch: int, method: str, device: str, steps: int = 2,
                options: dict | None = None) -> int:
    """Bytes of peak memory added by training steps (``method``: plain, scs or tas), measured in
    a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(name, size, batch, method, device, steps, q, options))
    p.start()
    value = q.get()
    p.join()
    return int(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,deit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--method", choices=["scs", "tas", "grow", "darts"], default="scs",
                    help="whose search step is measured (grow: a seed against the target)")
    ap.add_argument("--method-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a field of the method's config, e.g. mixture=pad (tas)")
    ap.add_argument("--csv")
    args = ap.parse_args(argv)
    options = parse_sets(args.method_set)
    rows = []
    print(f"{'model':<26} {'plain ms':>9} {'gated ms':>9} {'time x':>7} {'plain MiB':>10} {'gated MiB':>10} {'mem x':>6} {'FLOPs x':>8}")
    for name in args.models.split(","):
        ms = step_times(name, args.size, args.batch, args.steps, args.warmup, args.device, args.method, options)
        mem = {k: peak_memory(name, args.size, args.batch, args.method if k == "gated" else _reference(args.method),
                              args.device, options=options) for k in ("plain", "gated")}
        flops = step_flops(name, args.size, args.batch, args.device, args.method, options)
        row = {"model": name, "method": args.method, "options": ",".join(args.method_set), "size": args.size, "batch": args.batch, "device": args.device,
               "plain_ms": round(ms["plain"], 2), "gated_ms": round(ms["gated"], 2),
               "time_ratio": round(ms["gated"] / ms["plain"], 3),
               "plain_peak_mib": round(mem["plain"] / 2**20, 1), "gated_peak_mib": round(mem["gated"] / 2**20, 1),
               "memory_ratio": round(mem["gated"] / max(mem["plain"], 1), 3),
               "plain_gflops": round(flops["plain"] / 1e9, 3), "gated_gflops": round(flops["gated"] / 1e9, 3),
               "flops_ratio": round(flops["gated"] / max(flops["plain"], 1), 3)}
        rows.append(row)
        print(f"{name:<26} {row['plain_ms']:>9.1f} {row['gated_ms']:>9.1f} {row['time_ratio']:>7.3f} "
              f"{row['plain_peak_mib']:>10.1f} {row['gated_peak_mib']:>10.1f} {row['memory_ratio']:>6.3f} "
              f"{row['flops_ratio']:>8.3f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
