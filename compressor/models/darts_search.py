"""The DARTS search network (Liu et al. ICLR 2019, section 2 and its search setting), on the
``op`` kind: every edge of every cell is a :class:`CellEdge`, an operation site whose options are
the space's eight primitives, so ``--method darts`` searches it like any other model's sites.

    cell(s0, s1):  s0, s1 -> C channels (affine-free 1x1 ReLU-conv-BN; factorised after a reduction)
                   node j = sum over every earlier state i of edge_ij(state_i), j = 2..5 (14 edges)
                   output = concat(nodes 2..5)
    network:       stem (3C) -> 8 cells, C = 16, reductions at 1/3 and 2/3 -> pooling -> linear

An edge computes ``sep_conv_5x5`` (the costliest primitive: a budget is a fraction of the network
with every edge at 5x5) and offers the other seven (``none`` among them), all with affine-free BN
and pooling followed by BN, as in the search setting.  Its site declares what the papers'
discretisation needs: edges into one node form a group of which 2 keep a non-``none`` operation,
and the edge at one position in every normal (or every reduction) cell shares one row of
architecture logits (``tie``).  :meth:`DartsSearchNetwork.genotype` reads a decision back as a
:class:`~compressor.models.darts_cells.Genotype`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices.candidates import Candidate, OpSite, register_candidate
from ..choices.mixed_op import window_forward
from .darts_cells import FactorizedReduce, Genotype, primitive, relu_conv_bn
from .registry import register_model

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")
EDGE_OP = "sep_conv_5x5"  # what an edge computes before a search ("itself")
KEEP = 2  # incoming edges each node keeps (the papers' discretisation)


class Zero(nn.Module):
    """DARTS's ``none``: zeros at the edge's output size."""

    channelwise = True  # (PC-DARTS runs it on a window of the channels)

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


def search_primitive(name: str, c: int, stride: int) -> nn.Module:
    """A primitive as the search builds it: affine-free BN, pooling followed by BN."""
    if name == "none":
        return Zero(stride)
    op = primitive(name, c, stride, affine=False)
    return nn.Sequential(op, nn.BatchNorm2d(c, affine=False)) if "pool" in name else op


class CellEdge(nn.Module):
    """One edge of a search cell, from state ``source`` into node ``node`` (see the module doc)."""

    op_site_kind = "edge"

    def __init__(self, c: int, stride: int, *, cell: int, node: int, source: int, reduction: bool) -> None:
        super().__init__()
        self.c, self.stride, self.cell, self.node, self.source, self.reduction = c, stride, cell, node, source, reduction
        self.op = search_primitive(EDGE_OP, c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def forward_window(self, x: torch.Tensor, window: slice) -> torch.Tensor:
        return window_forward(self.op, x, window)

    def partial_bypass(self, x: torch.Tensor) -> torch.Tensor:
        """PC-DARTS: the channels outside the searched window pass unchanged, max-pooled 2x2 on a
        reduction edge."""
        return x if self.stride == 1 else F.max_pool2d(x, 2, 2, ceil_mode=True)

    def op_site(self) -> dict:
        """The site's arguments: what its candidates build on, its group and its tie; PC-DARTS's
        partial channels pass the unsearched channels by (``partial: bypass``)."""
        kind = "reduce" if self.reduction else "normal"
        return {"in": self.c, "out": self.c, "stride": self.stride, "primitive": EDGE_OP,
                "group": f"cell{self.cell}.node{self.node}", "keep": KEEP, "off": "none",
                "tie": f"{kind}.node{self.node}.from{self.source}", "partial": "bypass"}


class _EdgePrimitive(Candidate):
    kinds = ("edge",)

    def options(self, site: OpSite) -> list[dict]:
        return [] if site.attrs["primitive"] == self.name else [{}]

    def build(self, site: OpSite) -> nn.Module:
        return search_primitive(self.name, site.attrs["out"], site.attrs["stride"])

    def is_skip(self, site: OpSite) -> bool:  # at stride 2 skip_connect is a factorised reduction
        return self.name == "skip_connect" and site.attrs["stride"] == 1


for _name in PRIMITIVES:  # one registered candidate per primitive, by its name in the genotypes
    register_candidate(type(f"Edge_{_name}", (_EdgePrimitive,), {"name": _name}))


class SearchCell(nn.Module):
    def __init__(self, index: int, nodes: int, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.pre0 = FactorizedReduce(c_prev_prev, c, affine=False) if reduction_prev else \
            relu_conv_bn(c_prev_prev, c, 1, affine=False)
        self.pre1 = relu_conv_bn(c_prev, c, 1, affine=False)
        self.nodes = nodes
        self.edges = nn.ModuleList(
            CellEdge(c, 2 if reduction and source < 2 else 1, cell=index, node=node, source=source,
                     reduction=reduction)
            for node in range(2, 2 + nodes) for source in range(node))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        edges = iter(self.edges)
        for node in range(2, 2 + self.nodes):
            states.append(sum(next(edges)(states[source]) for source in range(node)))
        return torch.cat(states[2:], dim=1)


class DartsSearchNetwork(nn.Module):
    """``layers`` search cells from ``c`` channels, reductions at 1/3 and 2/3 of the depth."""

    def __init__(self, c: int = 16, layers: int = 8, nodes: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c))
        reductions = (layers // 3, 2 * layers // 3)
        c_pp, c_p, width, reduction_prev = 3 * c, 3 * c, c, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            width *= 2 if reduction else 1
            self.cells.append(SearchCell(i, nodes, c_pp, c_p, width, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, nodes * width, reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))

    def genotype(self, chosen: dict[str, dict]) -> Genotype:
        """The cells an ``op`` payload (``{edge name: {"op": ...}}``, the edge's own op where absent)
        makes, read off the first normal and the first reduction cell: per node its non-``none``
        edges as (primitive, source state)."""
        cells = {}
        for i, cell in enumerate(self.cells):
            kind = "reduce" if cell.edges[0].reduction else "normal"
            if kind in cells:
                continue
            pairs = []
            for j, edge in enumerate(cell.edges):
                op = chosen.get(f"cells.{i}.edges.{j}", {"op": EDGE_OP})["op"]
                if op != "none":
                    pairs.append((edge.node, op, edge.source))
            cells[kind] = tuple((op, source) for _, op, source in sorted(pairs, key=lambda p: p[0]))
        return Genotype(normal=cells.get("normal", ()), reduce=cells.get("reduce", ()),
                        concat=tuple(range(2, 2 + self.cells[0].nodes)))


@register_model
def darts_search(num_classes: int = 10, c: int = 16, layers: int = 8, nodes: int = 4) -> DartsSearchNetwork:
    """The DARTS search network (8 cells, C = 16, 4 nodes): every edge an ``op`` site over the 8 primitives."""
    return DartsSearchNetwork(c, layers, nodes, num_classes)
