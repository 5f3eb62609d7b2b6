"""The ``compress`` command."""
from __future__ import annotations

import argparse
import sys
import time

import torch

EXAMPLES = """examples:
  compress inspect resnet50                 groups, blocks and their share of FLOPs/params
  compress inspect vit_tiny_patch16_224 --all
  compress list 'convnext*'                 known model names (torchvision, then timm)
"""


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from .space import trace
    from .zoo import create_model, example_input

    model = create_model(args.model).eval()
    x = example_input(args.model, model, size=args.size)
    t0 = time.perf_counter()
    space = trace(model, x)
    seconds = time.perf_counter() - t0
    cost = space.cost
    flops, params = float(cost.flops()), float(cost.params())
    fshare, pshare = cost.breakdown("flops"), cost.breakdown("params")
    prunable = [g for g in space.groups if g.prunable]
    print(f"{args.model}: input {'x'.join(map(str, x.shape))}, traced in {seconds:.1f} s")
    print(f"total: {_fmt(flops)} FLOPs (multiply-accumulates, fvcore convention + attention), "
          f"{_fmt(params)} params")
    print(f"\nchannel groups: {len(space.groups)} ({len(prunable)} prunable, "
          f"{len(space.groups) - len(prunable)} frozen)")
    print(f"  {'group':<44} {'units':>6} {'ch/unit':>7} {'FLOPs%':>7} {'params%':>7}  status")
    shown = space.groups if args.all else sorted(space.groups, key=lambda g: -fshare.get(space.groups.index(g), 0))[:40]
    for g in shown:
        i = space.groups.index(g)
        status = "prunable" if g.prunable else "frozen"
        print(f"  {g.name[:44]:<44} {g.size:>6} {int(g.channels[0]):>7} {100 * fshare.get(i, 0):>6.1f}% "
              f"{100 * pshare.get(i, 0):>6.1f}%  {status}")
    if not args.all and len(space.groups) > len(shown):
        print(f"  ... {len(space.groups) - len(shown)} smaller groups (--all lists them)")
    print(f"\nresidual blocks: {len(space.blocks)}")
    if space.blocks:
        keep = torch.ones(space.num_units, dtype=torch.double)
        print(f"  {'block':<44} {'stage':<24} {'FLOPs%':>7} {'params%':>7}")
        for i, b in enumerate(space.blocks):
            bk = torch.ones(len(space.blocks), dtype=torch.double)
            bk[i] = 0
            df = 1 - float(cost.flops(keep, bk)) / flops
            dp = 1 - float(cost.params(keep, bk)) / params
            print(f"  {b.name[:44]:<44} {b.stage[:24]:<24} {100 * df:>6.1f}% {100 * dp:>6.1f}%")
    frozen = [g for g in space.groups if not g.prunable]
    if frozen:
        print("\nfrozen groups:")
        for g in frozen:
            print(f"  {g.name}: {g.frozen}")
    if space.dropped_blocks:
        print("\nresidual adds that are not removable blocks:")
        for name, why in space.dropped_blocks.items():
            print(f"  {name}: {why}")
    if space.skipped_owners:
        print("\nmodules with residual adds that fx could not trace (no depth gates there):")
        for owner, why in space.skipped_owners.items():
            print(f"  {owner or '<root>'}: {why}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import list_models

    for name in list_models(args.filter):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="compress", description="Make vision models smaller and faster.",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show what can change in a model", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a torchvision or timm model name")
    p.add_argument("--size", type=int, help="input resolution (default: the model's own)")
    p.add_argument("--all", action="store_true", help="list every group, not only the 40 largest")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("list", help="list known model names")
    p.add_argument("filter", nargs="?", default="*", help="glob, e.g. 'resnet*'")
    p.set_defaults(func=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    from .space import TraceError
    from .zoo import UnknownModelError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UnknownModelError as exc:
        print(f"compress: error: {exc}", file=sys.stderr)
        return 2
    except TraceError as exc:
        print(f"compress: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `compress inspect ... | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
