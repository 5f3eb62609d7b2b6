"""What the channel gates add to a training step, with the gates on the weights or on the inputs.

For each model and share of units, the model is sliced to that share of every group's free units
(a random draw, as a sparse scs epoch trains it), then three variants take turns for ``--repeats``
rounds: the plain sliced network, the same network gated with every gate on its consumer weights
(``GateValues.gate_inputs = False``), and gated with the inputs of dense convs and linears scaled
instead whenever the input is the smaller tensor (the default).  A step is forward, cross-entropy
and backward with soft gate values that need gradients; each figure is the median over the rounds
after ``--warmup``.

    python tools/gate_cost.py                                  # resnet18 at 32 px, shares 0.5 and 0.7
    python tools/gate_cost.py --models resnet18,mobilenet_v2 --shares 1,0.5 --size 64 --batch 32
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from compressor.export.subnet import sub_network
from compressor.frontend import trace
from compressor.gates import attach_gates
from compressor.zoo import create_model

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools._bench import share_of_units
except ModuleNotFoundError:
    from _bench import share_of_units

VARIANTS = ("plain", "weights", "inputs")


def part_of(model: torch.nn.Module, x: torch.Tensor, share: float, seed: int = 0):
    """``model`` sliced to ``share`` of every group's free units (a seeded random draw)."""
    space = trace(model, x[:1])
    return sub_network(model, space, share_of_units(space, share, seed))


def measure(name: str, share: float, *, size: int, batch: int, repeats: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    sub = part_of(create_model(name, num_classes=10), x, share)
    plain = sub.module.train()
    gates = attach_gates(copy.deepcopy(plain), sub.space)
    gated = gates.model.train()
    values = torch.full((sub.space.num_units,), 0.8, requires_grad=True)

    def step(variant: str) -> float:
        net = plain
        if variant != "plain":
            gates.values.gate_inputs = variant == "inputs"
            gates.set(units=values * 1.0)
            net = gated
        t = time.perf_counter()
        F.cross_entropy(net(x), y).backward()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(warmup + repeats):
        for v in VARIANTS:
            dt = step(v)
            if r >= warmup:
                times[v].append(dt)
    return {v: statistics.median(t) * 1000 for v, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--shares", default="0.5,0.7")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"{'model':16} {'share':>5} {'plain ms':>9} {'weights ms':>11} {'inputs ms':>10} {'weights x':>10} "
          f"{'inputs x':>9}")
    for name in args.models.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            ms = measure(name, share, size=args.size, batch=args.batch, repeats=args.repeats, warmup=args.warmup)
            print(f"{name:16} {share:5.2f} {ms['plain']:9.1f} {ms['weights']:11.1f} {ms['inputs']:10.1f} "
                  f"{ms['weights'] / ms['plain']:10.3f} {ms['inputs'] / ms['plain']:9.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
