"""Cost of the invariant-1 check inside ``trace``, side by side with a plain forward and the whole
``trace`` (validation included): resnet50 and vit_base at 224 px, batch 1, medians of 3.
Prints the rows of the table in docs/frontend.md.

    python tools/trace_cost.py
"""
import statistics
import time

import timm
import torch
import torchvision

from compressor.frontend import trace
from compressor.validate import check_gates_at_one

MODELS = {"resnet50": lambda: torchvision.models.resnet50(),
          "vit_base_patch16_224": lambda: timm.create_model("vit_base_patch16_224")}


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(repeats: int = 3) -> None:
    torch.manual_seed(0)
    print("| model | plain forward | `trace` incl. validation | invariant-1 check | share of `trace` |")
    print("|---|---:|---:|---:|---:|")
    for name, build in MODELS.items():
        model, x = build().eval(), torch.randn(1, 3, 224, 224)
        forward, whole, check = [], [], []
        for _ in range(repeats):
            with torch.no_grad():
                forward.append(seconds(lambda: model(x)))
            whole.append(seconds(lambda: trace(model, x)))
            space = trace(model, x, validate=False)
            check.append(seconds(lambda: check_gates_at_one(model, space, (x,))))
        f, w, c = (statistics.median(v) for v in (forward, whole, check))
        print(f"| {name} | {f:.2f} s | {w:.2f} s | {c:.2f} s | {c / w:.0%} |", flush=True)


if __name__ == "__main__":
    main()
