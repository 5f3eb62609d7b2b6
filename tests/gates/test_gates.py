"""Gates attach and detach cleanly and keep the model an ordinary nn.Module."""
import copy

import pytest
import torch
from torch.nn.utils import parametrize

from compressor.decision import random_decision
from compressor.gates import attach_gates
from compressor.frontend import trace
from compressor.zoo import create_model


def _setup():
    model = create_model("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, trace(model, x[:1])


def test_detach_restores_the_original_model_exactly():
    model, x, space = _setup()
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x)
    gates = attach_gates(model, space)
    gates.set({"channels": torch.zeros(space["channels"].size).index_fill_(0, torch.arange(0, space["channels"].size, 2), 1.0)})
    model = gates.remove()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert list(model.state_dict()) == keys
    assert not any("parametrizations" in n or "depth_gate" in n for n, _ in model.named_modules())


class PosEnc(torch.nn.Module):
    """A residual inside a residual block, run before the outer add (DaViT's ConvPosEnc)."""

    def __init__(self, c):
        super().__init__()
        self.proj = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return x + self.proj(x)


class NestedOwners(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem, self.pos, self.mlp = torch.nn.Conv2d(3, c, 3, padding=1), PosEnc(c), torch.nn.Conv2d(c, c, 1)
        self.head = torch.nn.Linear(c, 4)

    def forward(self, x):
        h = self.pos(self.stem(x))
        h = h + self.mlp(h)
        return self.head(h.mean((2, 3)))


def test_detach_restores_nested_block_owners():
    """The inner owner is rewritten first, inside the outer one: undoing in the same order left
    the inner GraphModule (and its depth gate) in the user's model."""
    model, x = NestedOwners().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    space = trace(model, x[:1])
    assert {b.owner for b in space["depth"].blocks} == {"", "pos"}
    gates = attach_gates(model, space)
    gates.set({"depth": torch.zeros(len(space["depth"].blocks))})
    model = gates.remove()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert not any("depth_gate" in n for n, _ in model.named_modules())


class Blur(torch.nn.Module):
    """A depthwise filter held in a non-persistent buffer (timm's BlurPool2d in TResNet)."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("filt", torch.ones(c, 1, 3, 3) / 9, persistent=False)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.filt, padding=1, groups=x.shape[1])


def test_detach_keeps_a_non_persistent_buffer_out_of_the_state_dict():
    """A gated buffer put back by ``remove_parametrizations`` is re-registered as persistent; a
    saved model then carried a key its reload did not expect."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), Blur(8), torch.nn.Conv2d(8, 4, 1)).eval()
    keys = sorted(model.state_dict())
    space = trace(model, torch.randn(1, 3, 8, 8))
    assert any(site.name == "1.filt" for site in space["channels"].gate_sites)
    attach_gates(model, space).remove()
    assert sorted(model.state_dict()) == keys


def test_soft_gate_values_receive_gradients():
    model, x, space = _setup()
    gates = attach_gates(model, space)
    units = torch.full((space["channels"].size,), 0.7, requires_grad=True)
    blocks = torch.full((len(space["depth"].blocks),), 0.9, requires_grad=True)
    gates.set({"channels": units, "depth": blocks})
    gates.model(x).square().mean().backward()
    prunable = torch.from_numpy(space["channels"].free())
    assert units.grad[prunable].abs().sum() > 0 and blocks.grad.abs().min() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gating_a_small_input_equals_gating_the_weight():
    """InputGate scales the input channels of deep layers at 32 px (input smaller than weight);
    outputs and the gradients of gate values and weights match weight masking everywhere."""
    model, x, space = _setup()
    gates = attach_gates(model, space)
    g = torch.Generator().manual_seed(0)
    base_units = torch.rand(space["channels"].size, generator=g)
    results = []
    for gate_inputs in (True, False):
        gates.values.gate_inputs = gate_inputs
        units = base_units.clone().requires_grad_(True)
        gates.set({"channels": units})
        model.zero_grad()
        bypassed = []
        hooks = [m.register_forward_pre_hook(lambda mod, a: bypassed.append(
                 getattr(mod.parametrizations.weight[0], "bypass", False)))
                 for m in gates.model.modules() if parametrize.is_parametrized(m, "weight")]
        out = gates.model(x)
        out.square().mean().backward()
        for h in hooks:
            h.remove()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out.detach(), units.grad.clone(), grads, sum(bypassed)))
    (out_in, gu_in, gw_in, n_in), (out_w, gu_w, gw_w, n_w) = results
    assert n_in > 0 and n_w == 0  # the input path was taken somewhere, and only when allowed
    torch.testing.assert_close(out_in, out_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gu_in, gu_w, rtol=1e-4, atol=1e-7)
    for a, b in zip(gw_in, gw_w):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert not any(getattr(m.parametrizations.weight[0], "bypass", False) for m in gates.model.modules()
                   if parametrize.is_parametrized(m, "weight"))


def test_gated_model_runs_under_bf16_autocast_and_keeps_a_state_dict():
    model, x, space = _setup()
    gates = attach_gates(model, space)
    gates.set({"channels": random_decision(space, 0.5).values(space)["channels"].float()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gates.model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    state = gates.model.state_dict()
    assert any(k.endswith("parametrizations.weight.original") for k in state)
    gates.model.load_state_dict(state)


def _ddp_worker(rank: int, world: int, port: int, result) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model, x, space = _setup()
        model.train()
        gates = attach_gates(model, space)
        gates.set({"channels": random_decision(space, 0.5).values(space)["channels"].float()})
        ddp = DistributedDataParallel(gates.model)
        torch.manual_seed(rank)
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
        grad = next(p.grad for p in ddp.parameters() if p.grad is not None)
        result[rank] = float(grad.abs().sum())
    finally:
        dist.destroy_process_group()


def test_gated_model_trains_under_ddp_with_gloo():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, result), nprocs=2, join=True)
    assert result[0] == pytest.approx(result[1]) and result[0] > 0  # gradients were all-reduced


@pytest.mark.parametrize("name, kwargs, size, cut", [
    ("resnet18", {}, 32, [1]),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32, [0, 3]),  # one of two in an owner
])
def test_cut_blocks_compute_what_a_zero_block_gate_does(name, kwargs, size, cut):
    """A block cut out while gating (a sparse scs epoch's drawn-off blocks) gives the outputs and
    the gradients of the same block at gate value 0, without its branch's modules; detaching
    restores the original model."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    space = trace(model, x[:1])
    with torch.no_grad():
        before = model(x)
    units = torch.rand(space["channels"].size, generator=torch.Generator().manual_seed(1))
    blocks = torch.ones(len(space["depth"].blocks))
    blocks[cut] = 0

    def run(gates):
        values = units.clone().requires_grad_()
        gates.set({"channels": values, "depth": blocks})
        out = gates.model(x)
        out.square().sum().backward()
        grads = {n.replace(".parametrizations", "").replace(".original", ""): p.grad
                 for n, p in gates.model.named_parameters() if p.grad is not None}
        return out.detach(), grads, values.grad

    whole = attach_gates(copy.deepcopy(model), space)
    part = attach_gates(model, space, cut=cut)
    out_w, grads_w, units_w = run(whole)
    out_p, grads_p, units_p = run(part)
    assert torch.allclose(out_w, out_p, atol=1e-5) and torch.allclose(units_w, units_p, atol=1e-5)
    in_cut = {n for n in grads_w if any(space["depth"].blocks[i].contains(n) for i in cut)}
    assert in_cut and set(grads_p) == set(grads_w) - in_cut  # the cut branches hold no parameter
    assert not any(space["depth"].blocks[i].contains(m) for i in cut for m, _ in part.model.named_modules())
    for n, g in grads_p.items():
        assert torch.allclose(g, grads_w[n], atol=1e-5), n
    model = part.remove()
    with torch.no_grad():
        assert torch.equal(model(x), before)
