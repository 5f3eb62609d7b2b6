"""Slicing details that the output-equality invariants (eval mode, no backward) do not reach."""
import torch
import torchvision

from compressor.gates.outputs import gated_output
from compressor.decision import Decision
from compressor.surgery import slice_model
from compressor.frontend import trace


def test_removed_block_with_in_place_ops_after_its_add_trains_and_leaves_its_input_alone():
    # torchvision's BasicBlock ends with `out += identity; out = relu(out)` (ReLU in place): with
    # the add gone, the ReLU must not run in place on the block's input.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    space = trace(model, x[:1])
    decision = Decision({"depth": ["layer2.1#0", "layer3.1#0"]})
    sliced = slice_model(model, space, decision)
    with torch.no_grad():
        assert torch.allclose(sliced(x), gated_output(model, space, decision, x), atol=1e-5)
    sliced.train()
    torch.nn.functional.cross_entropy(sliced(x), torch.tensor([0, 1])).backward()  # raised before
    assert all(p.grad is not None for p in sliced.parameters())


class WideGroupsOnTheInput(torch.nn.Module):
    """A two-group convolution reading the image: its inputs cannot be pruned, its outputs can
    (the same positions in both groups)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 16, 3, padding=1, groups=2)  # few wide groups: 2 < 6 / 2
        self.head = torch.nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_a_grouped_conv_whose_inputs_stay_keeps_its_groups():
    """Half the rows of every group kept and no input removed: the weight's shape looks like
    whole groups removed, but the groups stay (cpubone_nano's seed model broke on this)."""
    model, x = WideGroupsOnTheInput().eval(), torch.randn(2, 6, 8, 8)
    space = trace(model, x[:1])
    (group,) = [g for g in space["channels"].groups if g.prunable]
    decision = Decision({"channels": {group.name: list(range(group.size // 2))}})
    sliced = slice_model(model, space, decision).eval()
    assert sliced.conv.groups == 2 and sliced.conv.in_channels == 6 and sliced.conv.out_channels == 8
    with torch.no_grad():
        ys = sliced(x)
    yg = gated_output(model, space, decision, x)
    assert float((ys - yg).abs().max()) <= 1e-5 * float(yg.abs().max())
