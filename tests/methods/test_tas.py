import numpy as np
import pytest
import torch
from torch import nn

from compressor.gates.outputs import gated_output
from compressor.decision import Decision
from compressor.gates import ControlledModel, attach_gates
from compressor.methods.base import SearchContext
from compressor.methods.tas import TasConfig, TasMethod
from compressor.methods.tas_space import TasArchitecture, channel_sites, depth_candidates, width_candidates
from compressor.recipe import BudgetConfig, RunConfig, TrainConfig
from compressor.frontend import trace
from compressor.train import Trainer
from tests.tiny import TinyNet


def _tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    return model, trace(model, torch.randn(1, 3, 16, 16))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 10)


def test_candidate_sets():
    assert width_candidates(16, TasConfig().ratios) == [4, 6, 8, 9, 11, 12, 14, 16]
    assert width_candidates(64, TasConfig().ratios, round_to=16) == [32, 48, 64]
    assert width_candidates(3, TasConfig().ratios) == [1, 2, 3]
    assert width_candidates(10, [0.3, 0.5], pinned=4) == [4, 5]
    # TAS's depth rule, counting the fixed first block of a stage: n removable blocks, m = n + 1
    assert depth_candidates(1) == [0, 1]
    assert depth_candidates(2) == [0, 1, 2]          # m = 3: {1, 2, 3}
    assert depth_candidates(5) == [0, 2, 4, 5]       # m = 6: odd counts plus 6
    assert depth_candidates(8) == [0, 2, 4, 6, 8]    # ResNet-56's 9 blocks: {1, 3, 5, 7, 9}


def _arch(model, space, **cfg):
    gates = attach_gates(model, space)
    return ControlledModel(gates, arch := _architecture(space, TasConfig(**cfg), np.arange(space["channels"].size,
                                                                                          dtype=float), gates.mixable)), arch


def _architecture(space, cfg, scores, mixable=None, head_start=None):
    return TasArchitecture(space, cfg, channel_sites(space, cfg, scores, None, mixable), head_start=head_start)


@pytest.mark.parametrize("mixture", ["cwi", "pad"])
def test_one_candidate_gives_the_width_logits_no_gradient(mixture):
    model, space = _tiny()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    grads = {}
    for k in (1, 2):
        torch.manual_seed(1)
        net, arch = _arch(model, space, candidates=k, mixture=mixture)
        net.train()
        loss = nn.functional.cross_entropy(net(x), y)
        grads[k] = torch.autograd.grad(loss, arch.alpha)[0]
        net.release()
    assert float(grads[1].abs().max()) == 0.0  # the renormalised weight of one candidate is 1
    assert float(grads[2].abs().max()) > 1e-6


def test_argmax_at_full_width_is_the_original_and_eval_is_the_argmax():
    model, space = _tiny()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        y0 = model(x)
    net, arch = _arch(model, space)
    with torch.no_grad():
        arch.alpha.copy_(torch.where(arch.widths == arch.widths.max(1, keepdim=True).values, 9.0, -9.0))
        arch.beta.copy_(torch.where(arch.depths == arch.depths.max(1, keepdim=True).values, 9.0, -9.0))
        assert float((net.eval()(x) - y0).abs().max()) < 1e-5
        arch.alpha.normal_()
        arch.beta.normal_()
        keep = {k: v.numpy() for k, v in arch.argmax_keep().items()}
        y_eval = net.eval()(x)
    net.release()
    decision = Decision.from_keep(space, keep)
    assert torch.allclose(y_eval, gated_output(model, space, decision, x), atol=1e-5)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 10), nn.Linear(10, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_cwi_mixture_is_channel_wise_interpolation():
    torch.manual_seed(0)
    model = MLP().eval()
    space = trace(model, torch.randn(1, 5))
    scores = torch.randn(space["channels"].size).double().numpy()
    gates = attach_gates(model, space)
    arch = _architecture(space, TasConfig(mixture="cwi"), scores, gates.mixable)
    assert arch.cwi_group.tolist() == [True]
    x = torch.randn(6, 5)
    cands = arch.widths[0].tolist()   # [3, 4, 5, 6, 7, 8, 9, 10]
    for a, b, wa in [(0, 7, 0.3), (2, 3, 0.6), (5, 5, 1.0)]:
        sel, w = torch.tensor([[a, b]]), torch.tensor([[wa, 1 - wa]])
        gates.values.mix = arch._cwi_mix(sel, w)
        with torch.no_grad():
            got = gates.model(x)
        # by hand: rank the hidden units, average each narrower prefix onto the widest one
        g = space["channels"].groups[0]
        order = np.lexsort((-scores[g.offset:g.offset + g.size], ~g.pinned))
        h = torch.relu(model.fc1(x))[:, torch.from_numpy(order)]
        c_max = max(cands[a], cands[b])
        aligned = torch.zeros(6, c_max)
        for c, wj in ((cands[a], wa), (cands[b], 1 - wa)):
            for k in range(c_max):
                lo, hi = (k * c) // c_max, -((-(k + 1) * c) // c_max)
                aligned[:, k] += wj * h[:, lo:hi].mean(1)
        want = aligned @ model.fc2.weight[:, torch.from_numpy(order[:c_max])].T + model.fc2.bias
        assert torch.allclose(got, want, atol=1e-5), (a, b)
    gates.values.mix = None
    gates.remove()


def _search(cfg: TasConfig, budget=0.5, epochs=1):
    model, space = _tiny()
    method = TasMethod(cfg, space)
    ctx = SearchContext(Trainer(RunConfig(progress=False)), _data(), None, 16, BudgetConfig(flops=budget), None, 0,
                        num_classes=10, epochs=TrainConfig(epochs=epochs, lr=0.05))
    result = method.search(model, ctx)
    return method, space, result.decision, result.summary


def test_arch_steps_move_the_width_logits_only_with_two_candidates(monkeypatch):
    import compressor.methods.tas as tas

    initial = []

    class Recording(tas.ArchitectureStep):
        def __init__(self, params, **kw):
            initial.append(params[0].detach().clone())
            super().__init__(params, **kw)

    monkeypatch.setattr(tas, "ArchitectureStep", Recording)
    moved = {}
    for k in (1, 2):
        cfg = TasConfig(candidates=k, cost_weight=0.0, arch_weight_decay=0.0, depth=False)
        method, *_ = _search(cfg)
        moved[k] = float((method.arch.alpha.detach() - initial[-1]).abs().max())
    assert moved[1] == 0.0 and moved[2] > 1e-5


def test_search_decides_within_the_budget_band():
    method, space, decision, summary = _search(TasConfig(mixture="cwi", self_distill={"enabled": True, "warmup": 0.0}),
                                               epochs=2)
    decision.validate(space)
    fraction = decision.flops(space) / float(space.cost.flops())
    assert 0.5 - 0.05 - 1e-9 <= fraction <= 0.5
    assert summary["searched_groups"] == len(summary["widths"]) == 5 and summary["cwi_groups"] == 5
    assert summary["voting_teachers_mb"] > 0
    assert set(summary["depths"]) == {b.stage for b in space["depth"].blocks}
    assert "argmax_cost" in summary and isinstance(summary["fitted_to_budget"], bool)


def test_second_order_search_runs():
    _, space, decision, _ = _search(TasConfig(order=2))
    assert decision.flops(space) / float(space.cost.flops()) <= 0.5


def test_budget_init_starts_at_the_one_shot_fit_and_full_depth():
    from compressor.budget import decide
    from compressor.importance import get_importance

    model, space = _tiny()
    scores = get_importance("magnitude")(model, space)
    fit = decide(space, scores, 0.3)
    head = {n: len(k) for n, k in fit["channels"].items()}
    arch = _architecture(space, TasConfig(), scores["channels"], head_start=head)
    argmax = arch.widths.gather(1, arch.alpha.argmax(1, keepdim=True)).squeeze(1).tolist()
    for name, w, cands, valid in zip(arch.site_names, argmax, arch.widths.tolist(), arch.width_valid.tolist()):
        want = head.get(name, space["channels"].group(name).size)
        assert abs(w - want) == min(abs(c - want) for c, ok in zip(cands, valid) if ok)
    assert any(head.get(n, space["channels"].group(n).size) < space["channels"].group(n).size for n in arch.site_names)
    assert (arch.depths.gather(1, arch.beta.argmax(1, keepdim=True)) == arch.depths.max(1, keepdim=True).values).all()
    plain = _architecture(space, TasConfig(), scores["channels"])
    assert plain.alpha.abs().max() < 0.1   # the paper's N(0, 0.01)


def test_movement_counts_groups_whose_argmax_left_the_start_and_the_summary_says_when_none_did():
    model, space = _tiny()
    arch = _architecture(space, TasConfig(), np.ones(space["channels"].size))
    assert arch.movement() == {"logit_move_max": 0.0, "groups_moved": f"0/{len(arch.site_names)}",
                               "stages_moved": f"0/{len(arch.stage_names)}"}
    with torch.no_grad():
        first = arch.alpha[0].masked_fill(~arch.width_valid[0], -1e9).argmin()
        arch.alpha[0, first] += 3.0   # the worst candidate of group 0 becomes its argmax
    assert arch.movement()["groups_moved"] == f"1/{len(arch.site_names)}"
    assert arch.movement()["logit_move_max"] == pytest.approx(3.0)
    *_, still = _search(TasConfig(init="budget", arch_lr=1e-9))
    assert still["groups_moved"].startswith("0/") and "ended where it started" in still["note"]
