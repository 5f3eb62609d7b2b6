"""Peak memory of ``build_space`` and ``trace`` (validation included) against a plain forward pass.

Each measurement runs in its own process: the model is built and loaded first, then ``VmHWM`` is
reset (``/proc/self/clear_refs``) and the call made; the figure is the peak resident set during the
call minus the resident set before it.  Linux only.

    python tools/trace_memory.py --models resnet50,vit_base_patch16_224,regnet_y_8gf
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def child(name: str, what: str, size: int | None) -> None:
    import torch

    from compressor.checks import peak_memory
    from compressor.frontend import trace
    from compressor.space import build_space
    from compressor.zoo import create_model_for_size, example_input

    torch.set_grad_enabled(False)
    model, _ = create_model_for_size(name, size)
    model.eval()
    x = example_input(name, model, size=size)
    calls = {"plain": lambda: model(x), "build": lambda: build_space(model, (x,)), "trace": lambda: trace(model, (x,))}
    _, peak = peak_memory(calls[what])
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"RESULT {weights:.0f} {peak:.0f} {x.shape[-1]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,vit_base_patch16_224,regnet_y_8gf")
    ap.add_argument("--size", type=int, default=None, help="input side (default: the model's own)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.size)
        return 0
    print("| model | input | weights | plain forward | `build_space` | `trace` incl. validation "
          "| trace / plain (weights included) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        peak = {}
        for what in ("plain", "build", "trace"):
            size = [] if args.size is None else ["--size", str(args.size)]
            out = subprocess.run([sys.executable, __file__, "--child", name, what, *size],
                                 capture_output=True, text=True, check=True).stdout
            weights, peak[what], side = (float(v) for v in out.split("RESULT ")[-1].split())
        ratio = (weights + peak["trace"]) / (weights + peak["plain"])
        print(f"| {name} | {side:.0f} px | {weights:.0f} MB | +{peak['plain']:.0f} MB | "
              f"+{peak['build']:.0f} MB | "
              f"+{peak['trace']:.0f} MB | {ratio:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
