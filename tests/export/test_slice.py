"""Slicing details that the output-equality invariants (eval mode, no backward) do not reach."""
import torch
import torchvision

from compressor.checks import gated_output
from compressor.decision import Decision
from compressor.export import slice_model
from compressor.frontend import trace


def test_removed_block_with_in_place_ops_after_its_add_trains_and_leaves_its_input_alone():
    # torchvision's BasicBlock ends with `out += identity; out = relu(out)` (ReLU in place): with
    # the add gone, the ReLU must not run in place on the block's input.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    space = trace(model, x[:1])
    decision = Decision({}, ["layer2.1#0", "layer3.1#0"])
    sliced = slice_model(model, space, decision)
    with torch.no_grad():
        assert torch.allclose(sliced(x), gated_output(model, space, decision, x), atol=1e-5)
    sliced.train()
    torch.nn.functional.cross_entropy(sliced(x), torch.tensor([0, 1])).backward()  # raised before
    assert all(p.grad is not None for p in sliced.parameters())
