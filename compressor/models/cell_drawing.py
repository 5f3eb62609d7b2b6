"""A DARTS genotype in words and drawn: the cells a search found (the ``darts`` method's report)
or the cells a model is built from (any run's report on a model with a ``genotype``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ..plotting import pyplot


def cells_of(model: nn.Module) -> dict | None:
    """The genotype ``model`` is built from (its ``genotype`` attribute, a dataclass with normal
    and reduce cells), as a dict; None for any other model."""
    genotype = getattr(model, "genotype", None)
    if not (dataclasses.is_dataclass(genotype) and hasattr(genotype, "normal") and hasattr(genotype, "reduce")):
        return None
    return dataclasses.asdict(genotype)


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
    return lines


def draw_cells(genotype: dict, path: Path) -> None:
    """Each cell as a graph: its two input states on the left, the nodes on a diagonal (so that
    node-to-node edges stay apart), the output (their concatenation) on the right; every kept
    edge labelled with its operation."""
    plt = pyplot()
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
            ax.text((x0 + x1) / 2 + (0.12 if over else 0), (y0 + y1) / 2 + (0.06 if over else 0), op, fontsize=7,
                    ha="center", va="center", bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
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
