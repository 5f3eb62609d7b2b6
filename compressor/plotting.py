"""Matplotlib for the report's figures: imported on first use, drawing to files (the Agg
backend), so that a run on a machine without a display, or without matplotlib, still reports."""
from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend; ImportError where matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
