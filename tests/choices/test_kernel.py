"""The ``kernel`` kind: centred windows, exact by cropping (invariant 2), priced as fvcore counts
the cropped model (invariant 3), frozen where cropping would not be exact."""
import pytest
import torch
from torch import nn

from compressor.budget import decide
from compressor.decision import Decision
from compressor.export import export_onnx
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.gates.outputs import gated_output
from compressor.importance import get_importance
from compressor.invariants import TOL_SLICE, relative_diff
from compressor.surgery import slice_model

KINDS = ["channels", "depth", "kernel"]


class Convs(nn.Module):
    """A spread of convolutions: dense, strided, dilated, depthwise, grouped, 'same', non-square,
    1-D, plus ones that cannot be cropped exactly."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(3, 8, 5, padding=2)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(8, 8, 5, padding=4, dilation=2)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.same = nn.Conv2d(8, 8, 5, padding="same")
        self.tall = nn.Conv2d(8, 8, (7, 1), padding=(3, 0))
        self.valid = nn.Conv2d(8, 8, 3)  # no padding: any cut would shrink the output
        self.short = nn.Conv2d(8, 8, 5, padding=1)  # padding 1: only the 3x3 window is exact
        self.even = nn.Conv2d(8, 8, 4, padding=2)
        self.line = nn.Conv1d(8, 8, 5, padding=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.dense(x))
        x = torch.relu(self.strided(x))
        x = torch.relu(self.dilated(x) + self.dw(x))
        x = torch.relu(self.same(self.grouped(x)))
        x = self.short(self.valid(self.tall(x)))
        x = self.even(x)
        line = self.line(x.flatten(2))
        return self.fc(line.mean(2))


def _traced(seed=0):
    torch.manual_seed(seed)
    model = Convs().eval()
    x = torch.randn(2, 3, 24, 24)
    return model, x, trace(model, x[:1], kinds=KINDS)


def test_sites_and_the_windows_each_can_keep_exactly():
    _, _, space = _traced()
    k = space["kernel"]
    sizes = {s.name: s.sizes for s in k.sites}
    assert sizes["dense"] == (5, 3, 1) and sizes["dw"] == (7, 5, 3, 1) and sizes["tall"] == (7, 5, 3, 1)
    assert sizes["dilated"] == (5, 3, 1) and sizes["same"] == (5, 3, 1) and sizes["line"] == (5, 3, 1)
    assert sizes["short"] == (5, 3)  # padding 1 covers a cut of one ring only
    frozen = {s.name: s.frozen for s in k.sites if s.frozen}
    assert "smaller than any cut" in frozen["valid"] and "even kernel" in frozen["even"]
    assert k.size == sum(s.rings for s in k.sites) and not k.free()[k.site("valid").slots].any()


@pytest.mark.parametrize("window", [1, 3, 5])
def test_cropped_model_equals_the_gated_one_and_keeps_the_output_size(window):
    model, x, space = _traced()
    payload = {s.name: max(a for a in s.sizes if a <= window) for s in space["kernel"].sites
               if s.frozen is None and min(s.sizes) <= window < s.sizes[0]}
    decision = Decision({"kernel": payload})
    sliced = slice_model(model, space, decision).eval()
    assert sliced.dw.weight.shape[-1] == min(window, 7) and sliced.dw.padding == ((min(window, 7) - 1) // 2,) * 2
    assert sliced.dilated.padding == (2 * (min(window, 5) - 1) // 2,) * 2
    with torch.no_grad():
        ys = sliced(x)
    assert relative_diff(ys, gated_output(model, space, decision, x)) <= TOL_SLICE
    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=1e-9)
    assert round(decision.params(space)) == sum(p.numel() for p in sliced.parameters())


def test_kernels_and_channels_together_match_fvcore_and_onnx(tmp_path):
    model, x, space = _traced(1)
    scores = get_importance("magnitude")(model, space)
    decision = decide(space, scores, 0.4)
    assert "kernel" in decision and "channels" in decision
    sliced = slice_model(model, space, decision).eval()
    full = fvcore_flops(model, x[:1])
    assert 0.39 <= fvcore_flops(sliced, x[:1]) / full <= 0.4
    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=1e-9)
    with torch.no_grad():
        assert relative_diff(sliced(x), gated_output(model, space, decision, x)) <= TOL_SLICE
    assert export_onnx(sliced, tmp_path / "m.onnx", x).max_rel_diff <= 1e-4


def test_a_window_no_exact_cut_allows_is_refused():
    _, _, space = _traced()
    with pytest.raises(ValueError, match="can keep a window of 5, 3, not 1"):
        Decision({"kernel": {"short": 1}}).validate(space)
    with pytest.raises(ValueError, match="unknown kernel site"):
        Decision({"kernel": {"nowhere": 1}}).validate(space)


def test_scores_keep_windows_nested():
    model, _, space = _traced()
    scores = get_importance("magnitude")(model, space)["kernel"]
    for s in space["kernel"].sites:
        assert all(a >= b for a, b in zip(scores[s.slots], scores[s.slots][1:]))
