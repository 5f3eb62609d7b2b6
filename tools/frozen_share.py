"""What the frontend can change in each model: prunable groups, the FLOPs share of frozen groups,
the FLOPs fraction of the smallest channel-only decision (one unit per group, pinned units kept)
and the time ``trace`` took (validation included), one markdown row per model.

    python tools/frozen_share.py --models nf_resnet26,resnetv2_50x1_bit --size 128
"""
from __future__ import annotations

import argparse

from compressor.choices.channels import cost_shares
from compressor.decision import random_decision
from compressor.frontend import trace
from compressor.zoo import create_model, example_input


def row(name: str, size: int | None) -> dict:
    model = create_model(name).eval()
    x = example_input(name, model, size=size)
    space = trace(model, x)
    groups = space["channels"].groups
    share = cost_shares(space, space["channels"], "flops")
    frozen = sum(share.get(i, 0.0) for i, g in enumerate(groups) if not g.prunable)
    smallest = random_decision(space, 0.0, blocks=False).flops(space) / float(space.cost.flops())
    return {"model": name, "prunable": sum(g.prunable for g in groups), "groups": len(groups),
            "frozen_flops": frozen, "smallest": smallest, "trace_s": space.trace_seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated torchvision or timm names")
    ap.add_argument("--size", type=int, default=None, help="input resolution (default: the model's own)")
    args = ap.parse_args(argv)
    print("| model | prunable groups | frozen FLOPs | smallest channel decision | trace s |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name in args.models.split(","):
        r = row(name, args.size)
        rows.append(r)
        print(f"| {r['model']} | {r['prunable']}/{r['groups']} | {100 * r['frozen_flops']:.1f}% | "
              f"{r['smallest']:.3f} | {r['trace_s']:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
