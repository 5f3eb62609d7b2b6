"""The DARTS family's discrete networks (Liu et al. ICLR 2019, section 3; its evaluation setting):
cells from a genotype stacked into a CIFAR network (20 cells, C = 36) or an ImageNet one (14
cells, C = 48), with the published genotypes of DARTS (V1: first order, V2: second order),
PC-DARTS and P-DARTS as zoo models.

    cell(s0, s1):  s0, s1 -> C channels (1x1 ReLU-conv-BN; a factorised reduction after a reduction cell)
                   node j = op_a(state_a) + op_b(state_b) for the genotype's two (op, input) pairs, j = 2..5
                   output = concat(nodes 2..5): 4C channels
    network:       stem (3C) -> cells, C doubled in the reduction cells at 1/3 and 2/3 of the depth
                   -> global pooling -> linear; an auxiliary head after the cell at 2/3 (training only)

Primitives: separable convolutions are two ReLU-depthwise-pointwise-BN stacks, dilated ones one
(dilation 2); 3x3 pooling (average pooling without the padding in its count); skip is the
identity, or a factorised reduction (two offset 1x1 stride-2 convolutions) in a reduction cell.
``drop_path`` (the evaluation setting: 0.3) zeroes whole paths per sample while training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..choices.mixed_op import window_batch_norm
from .registry import register_model


@dataclass(frozen=True)
class Genotype:
    """Two (op, input state) pairs per intermediate node, for the normal and the reduction cell;
    states 0 and 1 are the cell's inputs, state k >= 2 is node k."""

    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]
    concat: tuple[int, ...] = (2, 3, 4, 5)


GENOTYPES = {  # as published with each paper's code
    "darts_v1": Genotype(
        normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0))),
    "darts_v2": Genotype(
        normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1))),
    "pc_darts": Genotype(
        normal=(("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)),
        reduce=(("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2))),
    "p_darts": Genotype(
        normal=(("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)),
        reduce=(("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3))),
}


def relu_conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 affine: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


def dw_pw(c: int, kernel: int, stride: int, dilation: int = 1, *, affine: bool = True) -> nn.Sequential:
    """ReLU, depthwise ``kernel`` x ``kernel`` (``dilation``), pointwise, BN."""
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, kernel, stride, pad, dilation=dilation, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


class FactorizedReduce(nn.Module):
    """Half the channels from a stride-2 1x1 convolution, half from another one shifted by a
    pixel; then BN (halves the resolution without losing the odd pixels)."""

    def __init__(self, cin: int, cout: int, *, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(cin, cout // 2, 1, 2, bias=False)
        self.conv_b = nn.Conv2d(cin, cout - cout // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))

    def forward_window(self, x: torch.Tensor, window: slice) -> torch.Tensor:
        """The output channels in ``window`` from the input channels in it (``x``; cin = cout):
        PC-DARTS's partial channels on a reduction edge's skip."""
        x = self.relu(x)
        half = self.conv_a.out_channels
        a, b = slice(window.start, min(window.stop, half)), slice(max(window.start, half) - half, window.stop - half)
        parts = [F.conv2d(x, self.conv_a.weight[a, window], stride=2)] if a.start < a.stop else []
        if b.start < b.stop:
            parts.append(F.conv2d(x[:, :, 1:, 1:], self.conv_b.weight[b, window], stride=2))
        return window_batch_norm(self.bn, torch.cat(parts, dim=1), window)


def primitive(name: str, c: int, stride: int, *, affine: bool = True) -> nn.Module:
    """One of the DARTS space's operations on ``c`` channels (``none`` has no discrete use);
    ``affine`` False: the search's BN without scale and shift."""
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return nn.MaxPool2d(3, stride, 1) if name[0] == "m" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    kind, size = name.rsplit("_", 1)
    kernel = int(size.split("x")[0])
    if kind == "sep_conv":
        return nn.Sequential(*dw_pw(c, kernel, stride, affine=affine), *dw_pw(c, kernel, 1, affine=affine))
    if kind == "dil_conv":
        return dw_pw(c, kernel, stride, dilation=2, affine=affine)
    raise ValueError(f"unknown DARTS primitive {name!r}")


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero the whole path for a fraction ``p`` of the samples, rescaling the others."""
    keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.pre0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else relu_conv_bn(c_prev_prev, c, 1)
        self.pre1 = relu_conv_bn(c_prev, c, 1)
        pairs = genotype.reduce if reduction else genotype.normal
        self.inputs = [index for _, index in pairs]
        self.ops = nn.ModuleList(primitive(name, c, 2 if reduction and index < 2 else 1) for name, index in pairs)
        self.concat = genotype.concat
        self.drop_prob = 0.0

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(len(self.ops) // 2):
            total = None
            for op, index in zip(self.ops[2 * node:2 * node + 2], self.inputs[2 * node:2 * node + 2]):
                h = op(states[index])
                if self.training and self.drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, self.drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The evaluation setting's auxiliary classifier on 8x8 features (CIFAR) or 14x14 (ImageNet)."""

    def __init__(self, c: int, num_classes: int, stride: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, stride, count_include_pad=False), nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """Cells of ``genotype`` stacked ``layers`` deep from ``c`` channels; ``imagenet``: the
    three-convolution stem (stride 4 and 8 inputs to the first cell).  With ``auxiliary`` a training forward returns
    ``(logits, auxiliary logits)``; set ``drop_path`` per epoch as the evaluation setting does."""

    def __init__(self, genotype: Genotype, c: int = 36, layers: int = 20, num_classes: int = 10, *,
                 auxiliary: bool = False, imagenet: bool = False) -> None:
        super().__init__()
        self.genotype = genotype  # (a run's report draws the cells: compressor/models/cell_drawing.py)
        if imagenet:  # s0 at stride 4, s1 at stride 8: the first cell reduces s0
            self.stem = nn.Sequential(
                nn.Conv2d(3, c // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(),
                nn.Conv2d(c // 2, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
            self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
            c_pp, c_p, reduction_prev = c, c, True
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, 1, 1, bias=False), nn.BatchNorm2d(3 * c))
            self.stem1 = nn.Identity()
            c_pp, c_p, reduction_prev = 3 * c, 3 * c, False
        reductions = (layers // 3, 2 * layers // 3)
        self.cells = nn.ModuleList()
        self.auxiliary = None
        width = c
        for i in range(layers):
            reduction = i in reductions
            width *= 2 if reduction else 1
            self.cells.append(Cell(genotype, c_pp, c_p, width, reduction, reduction_prev))
            c_pp, c_p, reduction_prev = c_p, len(genotype.concat) * width, reduction
            if auxiliary and i == reductions[1]:
                self.auxiliary = AuxiliaryHead(c_p, num_classes, stride=2 if imagenet else 3)
        self.aux_after = reductions[1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    @property
    def drop_path(self) -> float:
        return self.cells[0].drop_prob

    @drop_path.setter
    def drop_path(self, p: float) -> None:
        for cell in self.cells:
            cell.drop_prob = p

    def forward(self, x: torch.Tensor):
        s0 = self.stem(x)
        s1 = self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_after and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


EVAL_RECIPE = "darts-eval-cpu"  # a CIFAR evaluation network is ~6x resnet50's FLOPs at 32 px


def _cifar(name: str):
    def build(num_classes: int = 10, c: int = 36, layers: int = 20, auxiliary: bool = False) -> DartsNetwork:
        return DartsNetwork(GENOTYPES[name], c, layers, num_classes, auxiliary=auxiliary)

    build.__name__ = name
    build.__doc__ = f"{name}'s published cell, CIFAR evaluation network (20 cells, C = 36)."
    return register_model(build, recipe=EVAL_RECIPE)


for _name in GENOTYPES:
    _cifar(_name)


@register_model
def darts_v2_imagenet(num_classes: int = 1000, c: int = 48, layers: int = 14, auxiliary: bool = False) -> DartsNetwork:
    """DARTS V2's cell, ImageNet evaluation network (14 cells, C = 48, stride-8 stem)."""
    return DartsNetwork(GENOTYPES["darts_v2"], c, layers, num_classes, auxiliary=auxiliary, imagenet=True)


@register_model(recipe=EVAL_RECIPE)
def darts_network(genotype: str = "darts_v2", num_classes: int = 10, c: int = 36, layers: int = 20,
                  auxiliary: bool = False) -> DartsNetwork:
    """A discrete DARTS network from ``genotype``: a published one by name (darts_v1, darts_v2,
    pc_darts, p_darts) or a found one as JSON, e.g. a search report's ``method_summary.genotype``
    (``{"normal": [[op, input state], ...], "reduce": [...]}``)."""
    return DartsNetwork(parse_genotype(genotype), c, layers, num_classes, auxiliary=auxiliary)


OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def parse_genotype(text: str) -> Genotype:
    """A published genotype's name, or a genotype as JSON (checked: 2 known operations per node,
    each from an earlier state); raises ValueError saying what is wrong."""
    if text in GENOTYPES:
        return GENOTYPES[text]
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"genotype {text[:40]!r} is neither a published genotype ({', '.join(GENOTYPES)}) "
                         "nor JSON") from None
    cells = {}
    for kind in ("normal", "reduce"):
        pairs = raw.get(kind) if isinstance(raw, dict) else None
        if not isinstance(pairs, list) or not pairs or len(pairs) % 2:
            raise ValueError(f"genotype.{kind}: expected a list of [operation, input state] pairs, two per node")
        for i, pair in enumerate(pairs):
            ok = isinstance(pair, list) and len(pair) == 2 and pair[0] in OPS and isinstance(pair[1], int)
            if not ok or not 0 <= pair[1] < 2 + i // 2:
                raise ValueError(f"genotype.{kind}[{i}]: expected [operation, input state] with an operation in "
                                 f"{', '.join(OPS)} and a state before node {2 + i // 2}, got {pair!r}")
        cells[kind] = tuple((op, state) for op, state in pairs)
    nodes = len(cells["normal"]) // 2
    if len(cells["reduce"]) != 2 * nodes:
        raise ValueError(f"genotype: the normal cell has {nodes} nodes and the reduction cell "
                         f"{len(cells['reduce']) // 2}: both cells need the same number")
    return Genotype(cells["normal"], cells["reduce"], tuple(range(2, 2 + nodes)))
