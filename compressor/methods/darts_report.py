"""The ``darts`` method's report: the chosen operation per site with its distillation losses and
final probability, the found cells of a cell space (text and ``cells.png``), and ``alpha.png``."""
from __future__ import annotations

from pathlib import Path

from ..markdown import cell, table
from ..models.cell_drawing import draw_cells, genotype_lines
from ..plotting import pyplot


def section(summary: dict) -> list[str]:
    """The found cells (a cell space), then one row per site with candidates: what was chosen,
    the candidates' distillation losses and the chosen option's final probability; then the rest
    of the summary."""
    losses, chosen = summary.get("candidate_loss", {}), summary.get("chosen", {})
    alpha = summary.get("alpha_of_chosen", {})
    lines = ["| site | chosen | distillation loss, best / worst candidate | softmax(alpha) of chosen |",
             "|---|---|---:|---:|"]
    for site in losses or alpha:
        loss, p = losses.get(site), alpha.get(site)
        scores = f"{cell(loss['best'])} / {cell(loss['worst'])}" if loss else "-"
        lines.append(f"| {site} | {chosen.get(site, 'itself')} | {scores} | {cell(p[-1]) if p else '-'} |")
    rest = {k: v for k, v in summary.items() if k not in ("candidate_loss", "chosen", "alpha_of_chosen", "genotype")}
    return genotype_lines(summary.get("genotype")) + lines + [""] + table(rest)


def plots(summary: dict, out: Path) -> list[str]:
    """``alpha.png`` (per site, the chosen option's probability by epoch) and, for a cell space,
    ``cells.png`` (both cells drawn)."""
    made = []
    if summary.get("alpha_of_chosen"):
        _alpha_plot(summary["alpha_of_chosen"], out / "alpha.png")
        made.append("alpha.png")
    if summary.get("genotype"):
        draw_cells(summary["genotype"], out / "cells.png")
        made.append("cells.png")
    return made


def _alpha_plot(curves: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, ps in curves.items():
        ax.plot(range(1, len(ps) + 1), ps, alpha=0.6, label=name if len(curves) <= 12 else None)
    ax.set_xlabel("search epoch")
    ax.set_ylabel("softmax(alpha) of the chosen option")
    ax.set_ylim(0, 1.02)
    if len(curves) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
