"""A sub-network computes what the hard-gated whole network computes, is gated over its own
restricted space like the whole one, and gives its tensors back exactly."""
import numpy as np
import timm
import torch

from compressor.surgery.subnet import sub_network
from compressor.frontend import trace
from compressor.gates import ControlledModel, PartController, attach_gates
from compressor.gates.outputs import gated_output
from compressor.decision import Decision
from tests.conftest import rel_diff
from tests.tiny import TinyNet


def _keep(space, share, seed):
    rng = np.random.default_rng(seed)
    keep = np.ones(space["channels"].size, dtype=bool)
    for g in space["channels"].groups:
        if g.prunable:
            free = np.flatnonzero(~g.pinned)
            off = rng.choice(free, size=int(len(free) * (1 - share)), replace=False)
            keep[g.offset + off] = False
    return keep


def _decision(space, keep):
    return Decision({"channels": {g.name: np.flatnonzero(keep[g.offset:g.offset + g.size]).tolist()
                                  for g in space["channels"].groups}})


def test_sub_network_equals_hard_gates_and_soft_values_carry_over():
    torch.manual_seed(0)
    for model, x in ((TinyNet().eval(), torch.randn(2, 3, 16, 16)),
                     (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                        num_classes=5).eval(), torch.randn(2, 3, 32, 32))):
        space = trace(model, x[:1])
        keep = _keep(space, 0.5, 0)
        sub = sub_network(model, space, keep)
        with torch.no_grad():
            y_sub = sub.module.eval()(x)
        assert rel_diff(y_sub, gated_output(model, space, _decision(space, keep), x)) < 1e-5
        # soft values on the kept units: the gated part equals the gated whole (LayerNorm weighs too)
        values = torch.rand(space["channels"].size) * torch.from_numpy(keep).float()
        whole = attach_gates(model, space)
        whole.set({"channels": values})
        with torch.no_grad():
            y_whole = whole.model(x)
        whole.remove()
        part = attach_gates(sub.module, sub.space)
        part.set({"channels": values[torch.from_numpy(sub.old_units)]})
        with torch.no_grad():
            y_part = part.model(x)
        assert rel_diff(y_part, y_whole) < 1e-5


def test_scatter_puts_every_tensor_back_at_its_positions():
    torch.manual_seed(0)
    model = TinyNet().eval()
    space = trace(model, torch.randn(1, 3, 16, 16))
    keep = _keep(space, 0.25, 1)
    sub = sub_network(model, space, keep)
    whole = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for name, t in sub.module.state_dict().items():
        if name in whole:
            assert torch.equal(sub.gather(name, whole[name]), t)
            sub.scatter(name, whole[name], t + 1)
    changed = sum(int((whole[k] != v).sum()) for k, v in model.state_dict().items() if k in whole)
    assert changed == sum(t.numel() for k, t in sub.module.state_dict().items() if k in whole)


def test_part_controller_hands_the_kept_units_their_values():
    torch.manual_seed(0)
    model = TinyNet().eval()
    space = trace(model, torch.randn(1, 3, 16, 16))
    sub = sub_network(model, space, _keep(space, 0.5, 2))

    class Fixed(torch.nn.Module):
        def forward(self):
            return {"channels": torch.arange(space["channels"].size, dtype=torch.float)}

    part = ControlledModel(attach_gates(sub.module, sub.space), PartController(Fixed(), torch.from_numpy(sub.old_units)))
    part(torch.randn(1, 3, 16, 16))
    assert torch.equal(part.gates.values["channels"], torch.from_numpy(sub.old_units).float())
