import numpy as np
import pytest
import torch

from compressor.budget import decide
from compressor.decision import Decision
from compressor.methods.base import SearchContext
from compressor.importance import get_importance
from compressor.methods.scs import ScsConfig, ScsMethod
from compressor.methods.scs_logits import ScsLogits, importance_prior
from compressor.recipe import BudgetConfig, RecipeError, RunConfig, TrainConfig, load_recipe
from compressor.frontend import trace
from compressor.train import Trainer
from tests.tiny import TinyNet


def _space():
    torch.manual_seed(0)
    model = TinyNet().eval()
    return model, trace(model, torch.randn(1, 3, 16, 16))


def test_grow_mode_seeds_one_unit_per_group_and_one_block_per_stage():
    _, space = _space()
    lg = ScsLogits(space, ScsConfig(mode="grow"), epochs=10)
    on = lg["channels"].s.detach() > 0
    group_of = space["channels"].unit_group()[lg["channels"].free.numpy()]
    assert int(on.sum()) == len(set(group_of.tolist()))
    assert all(on[torch.from_numpy(group_of == g)].sum() == 1 for g in set(group_of.tolist()))
    stages = {b.stage for b in space["depth"].blocks}
    assert int((lg["depth"].s.detach() > 0).sum()) == len(stages)


def test_epoch_updates_temperature_lambda_and_masks():
    model, space = _space()
    method = ScsMethod(ScsConfig(), space)
    method.budget, method.seed = BudgetConfig(flops=0.5), 0
    method.logits = ScsLogits(space, method.config, epochs=4)
    metrics = method.begin_epoch(0, 4)
    # all gates start on (s = 3): u(q) is small, so du = 0.5 - u > 0 and the penalty prunes
    assert method.lambda1 > 0 and metrics["sampled_cost"] > 0.5
    q_first = method.logits["channels"].q.clone()
    method.begin_epoch(0, 4)
    assert torch.equal(q_first, method.logits["channels"].q)  # the same (seed, epoch) draws the same masks
    method.end_epoch(0, 4)
    assert torch.equal(method.logits["channels"].t, q_first)  # per-gate counters count on-epochs
    beta = method.logits.beta0 * torch.exp(method.logits.log_gamma * method.logits["channels"].t)
    assert torch.allclose(beta[q_first > 0], torch.tensor(100.0 ** 0.25))
    # too sparse: the penalty changes sign and grows the model
    with torch.no_grad():
        method.logits["channels"].s.fill_(-3.0)
    method.begin_epoch(1, 4)
    assert method.lambda1 < 0
    method.config = ScsConfig(temperature="global")
    method.end_epoch(1, 4)
    assert torch.all(method.logits["channels"].t == 2)


def test_grow_epochs_paces_the_target_of_each_draw():
    """grow_epochs k: during epoch e the penalty aims the next draw at budget * min(1, (e+1)/k);
    the draw of epoch 0 is the seed, so the penalty grows it towards budget / k, not the budget."""
    _, space = _space()
    method = ScsMethod(ScsConfig(mode="grow", grow_epochs=4), space)
    method.budget, method.seed = BudgetConfig(flops=0.6), 0
    assert [method.target(e) for e in range(6)] == pytest.approx([0, 0.15, 0.3, 0.45, 0.6, 0.6])
    method.logits = ScsLogits(space, method.config, epochs=8)
    method.begin_epoch(0, 8)
    paced = method.lambda1
    assert paced == pytest.approx(method.config.lambda1 * (method.kept - 0.15)) and paced < 0
    method.config = ScsConfig(mode="grow")  # unpaced: the whole budget at once, a stronger push
    method.begin_epoch(0, 8)
    assert method.lambda1 == pytest.approx(method.config.lambda1 * (method.kept - 0.6))
    assert method.lambda1 < paced
    with pytest.raises(ValueError, match="grow_epochs paces the growth of grow mode"):
        ScsConfig(grow_epochs=3)
    method.config = ScsConfig(mode="grow", grow_epochs=4)
    method.begin_epoch(0, 2)  # a search shorter than grow_epochs still aims at the budget by its end
    assert [method.target(e) for e in range(3)] == pytest.approx([0, 0.3, 0.6])


def test_controller_measures_the_next_draw_at_the_next_temperatures():
    """soft(ahead=True) is what soft() gives once end_epoch has advanced the counters, for both
    temperature schedules: the controller prices the draw the next epoch will really make."""
    _, space = _space()
    for temperature in ("per_gate", "global"):
        method = ScsMethod(ScsConfig(temperature=temperature), space)
        method.budget, method.seed = BudgetConfig(flops=0.5), 0
        method.logits = ScsLogits(space, method.config, epochs=4)
        with torch.no_grad():
            method.logits["channels"].s.uniform_(-1, 1)
        method.begin_epoch(1, 4)
        method.end_epoch(0, 4)
        ahead = method.logits.soft(ahead=True)
        assert not torch.allclose(ahead["channels"], method.logits.soft()["channels"])
        method.end_epoch(1, 4)
        for kind, values in method.logits.soft().items():
            torch.testing.assert_close(ahead[kind], values)


def test_search_meets_budget_and_decides_from_logits(tmp_path):
    model, space = _space()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    trainer = Trainer(RunConfig(progress=False))
    ctx = SearchContext(trainer, data, None, 16, BudgetConfig(flops=0.4), None, 0, epochs=TrainConfig(epochs=2, lr=0.01))
    method = ScsMethod(ScsConfig(), space)
    result = method.search(model.train(), ctx)
    plain, decision, summary = result.model, result.decision, result.summary
    assert not any("parametrizations" in k for k in plain.state_dict())  # gates are gone
    frac = decision.flops(space) / float(space.cost.flops())
    assert 0.3 < frac <= 0.4
    # the kept units are the best-ranked logits: fitting the same scores again gives the same decision
    scores = np.zeros(space["channels"].size)
    scores[method.logits["channels"].free.numpy()] = method.logits["channels"].s.detach().numpy()
    removed = [b.name for b, s in zip(space["depth"].blocks, method.logits["depth"].s.tolist()) if s <= 0]
    assert decide(space, {"channels": scores}, 0.4, fixed=Decision({"depth": removed})) == decision
    assert summary["units_kept"] <= summary["units_free"] and len(result.history) == 2


def test_grow_mode_search_draws_fresh_weights_for_new_units():
    model, space = _space()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    ctx = SearchContext(Trainer(RunConfig(progress=False)), data, None, 16, BudgetConfig(flops=0.5), None, 0,
                        epochs=TrainConfig(epochs=2, lr=0.01))
    method = ScsMethod(ScsConfig(mode="grow", init_logit=0.5), space)
    before = model.stem[0].weight.detach().clone()
    result = method.search(model.train(), ctx)
    plain, decision = result.model, result.decision
    lg = method.logits
    seeds = len(set(space["channels"].unit_group()[lg["channels"].free.numpy()].tolist()))  # one per group at the start
    assert int(lg["channels"].ever_on.sum()) > seeds
    decision.validate(space)
    assert decision.flops(space) / float(space.cost.flops()) <= 0.5
    # stem units that were off at the start and got switched on were re-drawn, not trained from the old values
    stem = space["channels"].group("stem.0")
    newly = [u - stem.offset for u in range(stem.offset, stem.offset + stem.size)
             if bool(lg["channels"].ever_on[(lg["channels"].free == u).nonzero()].any()) and u != stem.offset]
    assert newly, "sigma(0.5) = 0.62: some stem units must have been drawn on in two epochs"
    after = plain.stem[0].weight.detach()
    assert not torch.allclose(after[newly], before[newly])


def test_importance_init_starts_from_the_prune_decision():
    """init: importance: the logits' signs are magnitude pruning's decision at the budget, their
    sizes grow away from the cut, so ranking them again gives that same decision."""
    model, space = _space()
    budget = 0.4
    prior = importance_prior(model, space, budget)
    free = np.flatnonzero(space["channels"].free())
    scores = get_importance("magnitude")(model, space)
    pruned = decide(space, scores, budget)
    kept = pruned.keep(space)["channels"][free] > 0.5
    assert np.array_equal(prior["channels"] > 0, kept) and (prior["channels"] != 0).all()
    assert np.abs(prior["channels"]).max() == 1
    lg = ScsLogits(space, ScsConfig(init="importance"), epochs=4, prior=prior)
    assert torch.equal(lg["channels"].s.detach() > 0, torch.from_numpy(kept))
    # only the units next to the cut start undecided: the farthest sit at 100, blocks too
    assert lg["channels"].s.detach().abs().max() == 100 and (lg["depth"].s.detach() == 100).all()
    assert ScsConfig().start_logit == ScsConfig(init="importance", init_logit=3).start_logit == 3
    logits = np.zeros(space["channels"].size)
    logits[free] = lg["channels"].s.detach().numpy()
    assert decide(space, {"channels": logits}, budget) == pruned
    # inside the kept side, a higher normalised magnitude never gets a smaller logit
    group_of = space["channels"].unit_group()
    for gi, g in enumerate(space["channels"].groups):
        mine = kept & (group_of[free] == gi)
        if mine.sum() > 1:
            order = np.argsort(scores["channels"][free][mine], kind="stable")
            assert np.all(np.diff(prior["channels"][mine][order]) > 0)
    with pytest.raises(RecipeError, match="grow mode"):
        load_recipe({"method": {"name": "scs", "mode": "grow", "init": "importance"}})


def test_channels_only_has_no_empty_parameters():
    _, space = _space()
    lg = ScsLogits(space, ScsConfig(layers=False), epochs=3)
    assert [n for n, _ in lg.named_parameters()] == ["gates.channels.s"]
    values = lg()
    assert set(values) == {"channels"} and values["channels"].shape == (space["channels"].size,)


def _one_epoch(sparse: bool, **train):
    model, space = _space()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    ctx = SearchContext(Trainer(RunConfig(progress=False)), data, None, 16, BudgetConfig(flops=0.5), None, 0,
                        epochs=TrainConfig(epochs=1, lr=0.05, **train))
    method = ScsMethod(ScsConfig(sparse_epochs=sparse, init_logit=0.01), space)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = method.search(model.train(), ctx).model
    return space, method, before, plain


def test_sparse_epoch_equals_the_gated_epoch_and_leaves_drawn_off_units_alone():
    """One epoch on the sliced active network (sparse_epochs) trains what the whole gated network
    trains when nothing but gradients moves weights (no momentum, no weight decay); units drawn off
    keep their weights exactly, the drawn-on ones move."""
    space, dense, _, plain_dense = _one_epoch(False, momentum=0.0, weight_decay=0.0)
    _, sparse, before, plain_sparse = _one_epoch(True, momentum=0.0, weight_decay=0.0)
    assert torch.equal(dense.logits["channels"].q, sparse.logits["channels"].q) and 0 < int(sparse.logits["channels"].q.sum()) < len(sparse.logits["channels"].q)
    for name, p in plain_dense.named_parameters():
        q = dict(plain_sparse.named_parameters())[name]
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name
    assert torch.allclose(dense.logits["channels"].s, sparse.logits["channels"].s, atol=1e-5)
    stem = space["channels"].group("stem.0")
    on = torch.ones(space["channels"].size, dtype=torch.bool)
    on[sparse.logits["channels"].free] = sparse.logits["channels"].q.bool()
    on = on[stem.offset:stem.offset + stem.size]
    w0, w1 = before["stem.0.weight"], plain_sparse.stem[0].weight.detach()
    assert torch.equal(w1[~on], w0[~on]) and not torch.allclose(w1[on], w0[on])


def test_sparse_epoch_freezes_drawn_off_units_under_momentum_and_weight_decay():
    """With momentum and weight decay the two differ only where units were drawn off: those do not
    move at all in a sparse epoch."""
    space, sparse_method, before, plain = _one_epoch(True, momentum=0.9, weight_decay=5e-4)
    stem = space["channels"].group("stem.0")
    on = torch.ones(space["channels"].size, dtype=torch.bool)
    on[sparse_method.logits["channels"].free] = sparse_method.logits["channels"].q.bool()
    on = on[stem.offset:stem.offset + stem.size]
    assert torch.equal(plain.stem[0].weight.detach()[~on], before["stem.0.weight"][~on])
    # blocks drawn off are cut out of the epoch's network: their branches do not move either
    off = [b for b, q in zip(space["depth"].blocks, sparse_method.logits["depth"].q.tolist()) if q == 0]
    assert off, "the test's draw should switch a block off"
    for name, p in plain.named_parameters():
        if any(b.contains(name) for b in off):
            assert torch.equal(p.detach(), before[name]), name
