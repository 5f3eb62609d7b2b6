"""What the benchmark tools share: variant specs, CSV output, mean ± std cells and share draws."""
from __future__ import annotations

import csv
import re
import statistics

import numpy as np
import yaml


TOP_LEVEL = ("choices", "rules", "weights", "pretrained")  # recipe keys outside any section


def parse_overrides(rest: str) -> dict:
    """``key=value,key=value`` -> recipe overrides; a key without a dot is a key of the method's
    section, but for the top-level ones (``choices=[channels,depth,kernel]``: commas inside
    brackets stay in the value)."""
    pairs = (kv.split("=", 1) for kv in re.split(r",(?![^\[\]]*\])", rest) if kv)
    return {(k if "." in k or k in TOP_LEVEL else f"method.{k}"): yaml.safe_load(v) for k, v in pairs}


# Benchmark runs measure training: no ONNX export, no latency timing, no progress bars.
QUIET = {"export.onnx": False, "export.latency_repeats": 0, "run.progress": False}


def parse_sets(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items -> recipe overrides (values parsed as YAML)."""
    return {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in items)}


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))  # rows may differ
        w.writeheader()
        w.writerows(rows)


def mean_std(values: list[float], digits: int = 2) -> str:
    """``mean ± sample std`` (std 0 for one value), ``-`` for none."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def share_of_units(space, share: float, seed: int) -> np.ndarray:
    """A 0/1 keep vector over ``space``'s units: in every group, a random ``share`` of its free
    units (at least one) stays; units that are not free always stay."""
    rng = np.random.default_rng(seed)
    choices = space["channels"]
    free = choices.free()
    keep = ~free
    for g in choices.groups:
        mine = g.offset + np.flatnonzero(free[g.offset:g.offset + g.size])
        if len(mine):
            keep[rng.choice(mine, size=max(1, round(share * len(mine))), replace=False)] = True
    return keep
