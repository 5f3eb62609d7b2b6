"""The ``darts`` method's report: the chosen operation per site with its distillation losses and
final probability, the found cells of a cell space (text and ``cells.png``), and ``alpha.png``."""
from __future__ import annotations

from pathlib import Path

from ..markdown import cell, table


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


def genotype_lines(genotype: dict | None) -> list[str]:
    """The found cells, node by node: ``node 2 <- sep_conv_3x3(state 0) + skip_connect(state 1)``."""
    if not genotype:
        return []
    lines = []
    for kind in ("normal", "reduce"):
        pairs, nodes = genotype[kind], {}
        for i, (op, source) in enumerate(pairs):
            nodes.setdefault(2 + i // 2, []).append(f"{op}(state {source})")
        lines += [f"**{kind} cell**: " + "; ".join(f"node {n} <- {' + '.join(ins)}" for n, ins in nodes.items()), ""]
    return lines + ["![cells](cells.png)", ""]


def plots(summary: dict, out: Path) -> list[str]:
    """``alpha.png`` (per site, the chosen option's probability by epoch) and, for a cell space,
    ``cells.png`` (both cells drawn)."""
    made = []
    if summary.get("alpha_of_chosen"):
        _alpha_plot(summary["alpha_of_chosen"], out / "alpha.png")
        made.append("alpha.png")
    if summary.get("genotype"):
        _cells_plot(summary["genotype"], out / "cells.png")
        made.append("cells.png")
    return made


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _alpha_plot(curves: dict[str, list[float]], path: Path) -> None:
    plt = _pyplot()
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


def _cells_plot(genotype: dict, path: Path) -> None:
    """Each cell as a graph: its two input states on the left, the nodes on a diagonal (so that
    node-to-node edges stay apart), the output (their concatenation) on the right; every kept
    edge labelled with its operation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, kind in zip(axes, ("normal", "reduce")):
        pairs = genotype[kind]
        nodes = len(pairs) // 2
        where = {0: (0.0, 0.75), 1: (0.0, 0.25)}
        where.update({2 + j: (0.3 + 0.45 * j / max(nodes - 1, 1), 1 - (j + 0.5) / nodes) for j in range(nodes)})
        out = (0.95, 0.5)
        for i, (op, source) in enumerate(pairs):
            (x0, y0), (x1, y1) = where[source], where[2 + i // 2]
            over = source >= 2 and 2 + i // 2 - source >= 2  # passes a node on the diagonal: bend round it
            ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "0.4",
                                                              "connectionstyle": f"arc3,rad={-0.4 if over else 0}"})
            ax.text((x0 + x1) / 2 + (0.12 if over else 0), (y0 + y1) / 2 + (0.06 if over else 0), op, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
        for n in genotype.get("concat", range(2, 2 + nodes)):
            ax.annotate("", out, where[n], arrowprops={"arrowstyle": "->", "color": "0.8"})
        labels = {0: "c_{k-2}", 1: "c_{k-1}", **{2 + j: str(j) for j in range(nodes)}}
        for n, (x, y) in where.items():
            ax.text(x, y, f"${labels[n]}$" if n < 2 else labels[n], ha="center", va="center",
                    bbox={"boxstyle": "circle" if n >= 2 else "round", "fc": "lightblue" if n >= 2 else "lightgreen"})
        ax.text(*out, "$c_k$", ha="center", va="center", bbox={"boxstyle": "round", "fc": "khaki"})
        ax.set_title(f"{kind} cell")
        ax.set_xlim(-0.1, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
