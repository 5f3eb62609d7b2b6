"""How an exception reads inside our one-line error messages."""
from __future__ import annotations

import math


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut to ``limit`` characters; empty messages allowed)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


def distinct_figures(a: float, b: float, least: int = 3, most: int = 9) -> tuple[str, str]:
    """``a`` and ``b`` printed with the fewest decimals (at least ``least``) that tell them apart,
    so that an error never says "0.001 ... keeps 0.001"."""
    for digits in range(least, most + 1):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            return sa, sb
    return f"{a:.{most}g}", f"{b:.{most}g}"


def figure_at_least(value: float, like: str) -> str:
    """``value`` rounded up to as many decimals as ``like`` shows (a budget that is surely enough)."""
    decimals = len(like.partition(".")[2])
    return f"{math.ceil(value * 10**decimals) / 10**decimals:.{decimals}f}"
