"""What the channel gates add to a training step, with the gates on the weights or on the inputs.

For each model and share of units, the model is sliced to that share of every group's free units
(a random draw, as a sparse scs epoch trains it), then three variants take turns for ``--repeats``
rounds: the plain sliced network, the same network gated with every gate on its consumer weights
(``GateValues.gate_inputs = False``), and gated with the inputs of dense convs and linears scaled
instead whenever the input is the smaller tensor (the default).  A step is forward, cross-entropy
and backward with soft gate values that need gradients; each figure is the median over the rounds
after ``--warmup``.

With ``--blocks-off N``, N of the model's residual blocks (a seeded random choice) are drawn off
too: the plain network goes without them, the two gated variants compute them at gate value 0
(as a sparse scs epoch did before bc50cda), and a fourth, ``cut``, is ``inputs`` with their
branches cut out of the graph (``attach_gates(cut=...)``, what a sparse epoch trains now).

    python tools/gate_cost.py                                  # resnet18 at 32 px, shares 0.5 and 0.7
    python tools/gate_cost.py --models resnet18,mobilenet_v2 --shares 1,0.5 --size 64 --batch 32
    python tools/gate_cost.py --shares 0.7 --blocks-off 1      # a drawn-off block: computed or cut
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from compressor.decision import Decision
from compressor.surgery import slice_model
from compressor.surgery.subnet import sub_network
from compressor.frontend import trace
from compressor.gates import attach_gates
from compressor.zoo import create_model

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools.bench import share_of_units
except ModuleNotFoundError:
    from bench import share_of_units

VARIANTS = ("plain", "weights", "inputs", "cut")


def part_of(model: torch.nn.Module, x: torch.Tensor, share: float, seed: int = 0):
    """``model`` sliced to ``share`` of every group's free units (a seeded random draw)."""
    space = trace(model, x[:1])
    return sub_network(model, space, share_of_units(space, share, seed))


def measure(name: str, share: float, *, size: int, batch: int, repeats: int, warmup: int,
            blocks_off: int = 0) -> dict[str, float]:
    """Median milliseconds of a step per variant (``cut`` only when ``blocks_off``)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    sub = part_of(create_model(name, num_classes=10), x, share)
    n_blocks = len(sub.space["depth"].blocks)
    off = sorted(random.Random(0).sample(range(n_blocks), min(blocks_off, n_blocks)))
    plain = sub.module
    if off:  # the plain network simply goes without them (every unit kept)
        plain = slice_model(plain, sub.space, Decision({"depth": [sub.space["depth"].blocks[i].name for i in off]}))
    plain = plain.train()
    nets = {"weights": attach_gates(copy.deepcopy(sub.module), sub.space)}
    nets["inputs"] = nets["weights"]
    if off:
        nets["cut"] = attach_gates(copy.deepcopy(sub.module), sub.space, cut=off)
    values = torch.full((sub.space["channels"].size,), 0.8, requires_grad=True)
    blocks = torch.ones(n_blocks)
    blocks[off] = 0

    def step(variant: str) -> float:
        net = plain
        if variant != "plain":
            gates = nets[variant]
            gates.values.gate_inputs = variant != "weights"
            gates.set({"channels": values * 1.0, "depth": blocks})
            net = gates.model.train()
        t = time.perf_counter()
        F.cross_entropy(net(x), y).backward()
        return time.perf_counter() - t

    variants = [v for v in VARIANTS if v == "plain" or v in nets]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(warmup + repeats):
        for v in variants:
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
    ap.add_argument("--blocks-off", type=int, default=0, help="residual blocks drawn off (a seeded choice)")
    args = ap.parse_args(argv)
    shown = [v for v in VARIANTS if v != "cut" or args.blocks_off]
    print(f"{'model':16} {'share':>5} " + " ".join(f"{v + ' ms':>10}" for v in shown) + " "
          + " ".join(f"{v + ' x':>10}" for v in shown[1:]))
    for name in args.models.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            ms = measure(name, share, size=args.size, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                         blocks_off=args.blocks_off)
            print(f"{name:16} {share:5.2f} " + " ".join(f"{ms[v]:10.1f}" for v in shown) + " "
                  + " ".join(f"{ms[v] / ms['plain']:10.3f}" for v in shown[1:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
