"""SCS ablations at equal budget and equal epochs (DESIGN 5.1): per-gate temperature counters
against the global schedule (t = epoch), on the embedded data, several seeds.

    python tools/ablations.py                       # resnet18, 50% FLOPs, seeds 0-2
    python tools/ablations.py --models mobilenet_v2 --budgets 0.25

It is tools/accuracy.py with the variants fixed; every option of that tool applies.
"""
from __future__ import annotations

import sys

from accuracy import main as accuracy_main  # run as a script: tools/ is on the path

VARIANTS = "scs:temperature=per_gate,scs:temperature=global"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {"--models": "resnet18", "--budgets": "0.5", "--csv": "ablations.csv"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    return accuracy_main([*argv, "--variants", VARIANTS])


if __name__ == "__main__":
    sys.exit(main())
