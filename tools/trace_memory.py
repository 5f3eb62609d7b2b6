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


def child(name: str, what: str, size: int) -> None:
    import torch

    from compressor.checks import peak_memory
    from compressor.frontend import trace
    from compressor.space import build_space
    from compressor.zoo import create_model_for_size

    torch.set_grad_enabled(False)
    model, _ = create_model_for_size(name, None)
    model.eval()
    x = torch.randn(1, 3, size, size)
    calls = {"plain": lambda: model(x), "build": lambda: build_space(model, (x,)), "trace": lambda: trace(model, (x,))}
    _, peak = peak_memory(calls[what])
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"RESULT {weights:.0f} {peak:.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,vit_base_patch16_224,regnet_y_8gf")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.size)
        return 0
    print("| model | weights | plain forward | `build_space` | `trace` incl. validation | trace / plain (weights included) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        peak = {}
        for what in ("plain", "build", "trace"):
            out = subprocess.run([sys.executable, __file__, "--child", name, what, "--size", str(args.size)],
                                 capture_output=True, text=True, check=True).stdout
            weights, peak[what] = (float(v) for v in out.split("RESULT ")[-1].split())
        ratio = (weights + peak["trace"]) / (weights + peak["plain"])
        print(f"| {name} | {weights:.0f} MB | +{peak['plain']:.0f} MB | +{peak['build']:.0f} MB | "
              f"+{peak['trace']:.0f} MB | {ratio:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
