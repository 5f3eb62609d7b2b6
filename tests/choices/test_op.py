"""The ``op`` kind: every candidate at every site it applies to computes, at one-hot values, what
the sliced model computes (invariant 2); costs match fvcore on the sliced model; a mixed op with
one candidate on is that candidate; the ILP's choice is optimal."""
import functools
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor.budget import BudgetError, choose_options
from compressor.choices.candidates import ITSELF, build_option, candidate_names, label
from compressor.choices.mixed_op import MixedOp, conv2d_touching, narrow_output
from compressor.decision import Decision
from compressor.export import load_compressed, save_compressed
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.gates import attach_gates
from compressor.gates.outputs import gated_output
from compressor.invariants import TOL_SLICE, relative_diff
from compressor.space import get_kind
from compressor.surgery import slice_model


class Net(nn.Module):
    """Convolutions of every shape the candidates care about, and linear layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.same = nn.Conv2d(8, 8, 3, padding=1)  # skip and pooling apply
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.wide = nn.Conv2d(16, 16, 5, padding=2)
        self.point = nn.Conv2d(16, 16, 1)  # low rank, as a linear layer over channels
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # no dense candidate
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.same(torch.relu(self.stem(x))))
        x = torch.relu(self.dw(torch.relu(self.point(torch.relu(self.wide(torch.relu(self.down(x))))))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


@functools.lru_cache(maxsize=1)
def _traced():
    """One trace for the whole file (tests do not change the model)."""
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    return model, x, trace(model, x[:1], kinds=["op"])


def test_each_site_offers_what_its_shape_allows():
    _, _, space = _traced()
    offered = {s.name: {label(o) for o in s.options} for s in space["op"].sites}
    assert {"skip", "pool(kind=avg)", "pool(kind=max)", "dw_sep", "pointwise", "factorised"} <= offered["same"]
    assert "skip" not in offered["down"] and "dw_sep(kernel=3, dilation=2)" in offered["down"]
    assert "dw_sep(kernel=3, dilation=2)" in offered["wide"]  # 5x5: the dilated 3x3 covers the same field
    assert offered["dw"] >= {ITSELF, "skip"} and "dw_sep" not in offered["dw"]
    assert {"low_rank(rank=4)", "low_rank(rank=2)"} <= offered["point"] and "dw_sep" not in offered["point"]
    assert "low_rank(rank=8)" not in offered["point"]  # 16 -> 8 -> 16 costs what 16 -> 16 does: no choice
    assert not any(o.startswith("low_rank") for o in offered["same"])  # k x k convolutions: not offered
    assert offered["fc2"] == {ITSELF, "low_rank(rank=2)", "low_rank(rank=1)"}
    assert {"skip", "low_rank(rank=4)"} <= offered["fc1"] and "low_rank(rank=8)" not in offered["fc1"]
    assert set(candidate_names("conv")) >= {"dw_sep", "pointwise", "factorised", "skip", "pool"}


def _every_option():
    _, _, space = _traced()
    return [(s.name, i) for s in space["op"].sites for i in range(1, len(s.options))]


@pytest.mark.parametrize("site, index", _every_option())
def test_every_candidate_is_exact_at_one_hot_and_priced_as_fvcore_counts(site, index):
    model, x, space = _traced()
    option = space["op"].site(site).options[index]
    decision = Decision({"op": {site: option}})
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        ys = sliced(x)
    assert ys.shape == (2, 4)
    assert relative_diff(ys, gated_output(model, space, decision, x)) <= TOL_SLICE
    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=1e-9)
    assert round(decision.params(space)) == sum(p.numel() for p in sliced.parameters())


def test_a_mixed_op_with_one_candidate_on_is_that_candidate():
    model, x, space = _traced()
    gates = attach_gates(model, space)
    site = space["op"].site("same")
    mixed = gates.model.get_submodule("same")
    assert isinstance(mixed, MixedOp) and len(mixed.ops) == len(site.options)
    for i, option in enumerate(site.options):
        values = torch.zeros(space["op"].size)
        for s in space["op"].sites:
            values[s.offset] = 1.0
        values[site.offset] = 0.0
        values[site.offset + i] = 1.0
        gates.set({"op": values})
        h = torch.randn(2, 8, 6, 6)
        want = model.same(h) if i == 0 else build_option(site.site, option)(h)
        with torch.no_grad():
            assert torch.allclose(mixed(h), want, atol=1e-6), label(option)
        if option["op"] == "skip":  # P-DARTS's dropout on the skip option, while training only
            mixed.skip_dropout = 0.5
            with torch.no_grad():
                assert torch.equal(mixed.eval()(h), h)
                dropped = mixed.train()(h)
            assert 0.3 < float((dropped == 0).float().mean()) < 0.7
            mixed.skip_dropout = 0.0
            mixed.eval()
    gates.remove()
    assert isinstance(model.same, nn.Conv2d)


def test_partial_channels_mix_one_window_and_keep_the_original_elsewhere():
    """PC-DARTS's partial channels: each candidate computed on the window only equals its whole
    output there; the mixed op is the mixture in the window and the original outside it; the
    window stays put across forwards and moves by 1/K at each advance (one search step)."""
    model, x, space = _traced()
    gates = attach_gates(model, space)
    site = space["op"].site("same")
    mixed = gates.model.get_submodule("same")
    mixed.partial = 4  # 8 channels: windows of 2
    probs = torch.softmax(torch.randn(len(site.options)), 0)
    values = torch.zeros(space["op"].size)
    values[site.offset:site.offset + len(site.options)] = probs
    gates.set({"op": values.requires_grad_(True)})
    h = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        whole = [op(h) for op in mixed.ops]
        for op, want in zip(mixed.ops, whole):
            assert torch.allclose(narrow_output(op, h, slice(2, 4)), want[:, 2:4], atol=1e-6)
        mixture = sum(p * y for p, y in zip(probs, whole))
        mixed.train()
        for turn in range(5):
            out, start = mixed(h), 2 * (turn % 4)
            assert torch.equal(mixed(h), out)  # a second forward in the same step: the same window
            mixed.advance()
            inside = torch.zeros(8, dtype=torch.bool)
            inside[start:start + 2] = True
            assert torch.allclose(out[:, inside], mixture[:, inside], atol=1e-5)
            assert torch.equal(out[:, ~inside], whole[0][:, ~inside])
    gates.remove()


@pytest.mark.parametrize("name, shape, partial", [("point", (2, 16, 3, 3), 1), ("point", (2, 16, 3, 3), 4),
                                                  ("fc1", (2, 16), 1)])
def test_low_rank_options_computed_together_equal_their_sum(name, shape, partial):
    """A site's factor pairs (its low-rank options) run as one pair of layers: the output and the
    gradients of the gate values and of every weight equal the option-by-option sum's, whole
    and on a partial-channel window."""
    model, x, space = _traced()
    gates = attach_gates(model, space)
    site = space["op"].site(name)
    mixed = gates.model.get_submodule(name)
    assert [len(g) for g in mixed.paired] == [2]
    values = torch.zeros(space["op"].size)
    values[site.offset:site.offset + len(site.options)] = torch.softmax(torch.randn(len(site.options)), 0)
    values.requires_grad_(True)
    gates.set({"op": values})
    mixed.partial = partial
    h, params = torch.randn(*shape), [values, *mixed.parameters()]
    out = {}
    for way in ("together", "one by one"):
        y = mixed(h)
        out[way] = (y, torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), params,
                                           allow_unused=True))
        mixed.paired = []
    (y0, g0), (y1, g1) = out.values()
    assert torch.allclose(y0, y1, atol=1e-5)
    assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))
    assert g0[0][site.offset:site.offset + len(site.options)].abs().min() > 0  # every option's value has a say
    gates.remove()


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 6), kernel=st.integers(1, 5), stride=st.integers(1, 2), dilation=st.integers(1, 3),
       padding=st.integers(0, 6), depthwise=st.booleans())
def test_a_convolution_cut_to_the_taps_that_touch_its_input_is_the_same_convolution(size, kernel, stride, dilation,
                                                                                   padding, depthwise):
    """conv2d_touching (what candidates run in a search) against F.conv2d: output and gradients."""
    if size + 2 * padding < dilation * (kernel - 1) + 1:
        return  # no output position
    torch.manual_seed(size * 100 + kernel * 10 + padding)
    x = torch.randn(2, 4, size, size + 1, requires_grad=True)
    weight = torch.randn(4, 1 if depthwise else 4, kernel, kernel, requires_grad=True)
    args = ((stride, stride), (padding, padding), (dilation, dilation), 4 if depthwise else 1)
    want = F.conv2d(x, weight, None, *args)
    got = conv2d_touching(x, weight, None, *args)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    probe = torch.randn_like(want)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(torch.autograd.grad((want * probe).sum(), [x, weight]),
                                                                 torch.autograd.grad((got * probe).sum(), [x, weight])))


def test_the_ilp_choice_is_optimal_against_brute_force():
    _, _, space = _traced()
    keep = {"same", "wide", "fc1"}  # three free sites: a brute force over every combination stays small
    others = {s.name: "not in this test" for s in space["op"].sites if s.name not in keep}
    space = space.replace(op=get_kind("op").freeze(space["op"], others))
    choices = space["op"]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=choices.size)
    sites = [s for s in choices.sites if s.frozen is None and len(s.options) > 1]
    full = space.cost.full("flops")
    for target in (0.3, 0.5, 0.8):
        chosen = choose_options(space, "op", scores, target)
        best = -np.inf
        for combo in itertools.product(*[range(len(s.options)) for s in sites]):
            d = Decision({"op": {s.name: s.options[i] for s, i in zip(sites, combo) if i}})
            if d.flops(space) <= target * full:
                best = max(best, sum(scores[s.offset + i] for s, i in zip(sites, combo)))
        got = sum(scores[s.offset + s.index(chosen.get("op", {}).get(s.name, {"op": ITSELF}))] for s in sites)
        assert chosen.flops(space) <= target * full and got == pytest.approx(best)
    with pytest.raises(BudgetError, match="cheapest option at every op site"):
        choose_options(space, "op", scores, 0.001)


def test_an_op_searched_model_loads_from_its_directory(tmp_path):
    model, x, space = _traced()
    sites = space["op"].sites
    decision = Decision({"op": {s.name: s.options[-1] for s in sites if len(s.options) > 1}})
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():  # trained weights differ from the deterministic initialisation
        for p in sliced.parameters():
            p.add_(0.01)
    save_compressed(sliced, tmp_path, source="tests.choices.test_op:Net", input_shape=(1, 3, 12, 12),
                    decision=decision)
    loaded = load_compressed(tmp_path, trust_source=True)
    with torch.no_grad():
        assert torch.equal(loaded(x), sliced(x))
