"""Markdown for the report: a mapping as tables (never a raw Python dict)."""
from __future__ import annotations

from typing import Any


def table(d: dict[str, Any], depth: int = 0) -> list[str]:
    """A mapping as Markdown: scalars and short lists in one key | value table, every nested mapping
    its own sub-table under a heading (never a raw Python dict)."""
    flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
    lines = []
    if flat:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {cell(v)} |" for k, v in flat.items()]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"{'#' * min(3 + depth, 6)} {k}", ""] + (table(v, depth + 1) if v else ["(none)"])
    return lines


def cell(v: Any) -> str:
    """One table cell: floats to 4 significant digits, lists joined."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(cell(x) for x in v) if v else "-"
    return str(v)
