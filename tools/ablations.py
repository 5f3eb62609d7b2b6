"""SCS ablations at equal budget and equal epochs (DESIGN 5.1): per-gate temperature counters
against the global schedule (t = epoch), on the embedded data, several seeds.

    python tools/ablations.py                       # resnet18, 50% FLOPs, seeds 0-2
    python tools/ablations.py --models mobilenet_v2 --budgets 0.25
    python tools/ablations.py --scs init=importance # both variants with scs's other settings

It is tools/accuracy.py with the variants fixed; every other option of that tool applies.
"""
from __future__ import annotations

import argparse
import sys

try:  # as part of the tools package (tests) or as a script (python tools/X.py)
    from tools import accuracy
except ModuleNotFoundError:
    import accuracy

TEMPERATURES = ("per_gate", "global")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)  # the rest, --help included, is tools/accuracy.py's
    ap.add_argument("--scs", action="append", default=[], metavar="KEY=VALUE", help="added to both variants")
    args, argv = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    extra = args.scs
    defaults = {"--models": "resnet18", "--budgets": "0.5", "--csv": "ablations.csv"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    variants = [f"--variant=scs:{','.join([*extra, f'temperature={t}'])}" for t in TEMPERATURES]
    return accuracy.main([*argv, "--variants", "", *variants])


if __name__ == "__main__":
    sys.exit(main())
