"""Widening (``grow_model``): with zero off-diagonal blocks the grown model is the sum of its seeds."""
import pytest
import timm
import torch
import torchvision

from compressor.surgery.widen import GrowError, grow_model, growth_gap, seed_model, shared_groups, split_halves
from compressor.frontend import trace
from compressor.models import MODELS
from compressor.methods.mixtures import attach_templates, growth_fill, materialize_templates, orthogonal_rows


def randomized(model, seed):
    """Random weights and BatchNorm statistics, so a wrong placement cannot hide behind an init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.dim() > 1 else 0.5))
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "densenet121"])
def test_grown_model_is_the_sum_of_its_seeds(name):
    torch.manual_seed(0)
    target = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    space = trace(target, x[:1])
    halves = split_halves(space)
    seed_a, seed_b = randomized(seed_model(target, space, halves), 1), randomized(seed_model(target, space, halves), 2)
    assert sum(p.numel() for p in seed_a.parameters()) < 0.3 * sum(p.numel() for p in target.parameters())
    assert growth_gap(target, space, halves, seed_a, seed_b, x) < 1e-5
    assert not shared_groups(space, halves)


def test_grown_weight_holds_both_seeds_on_the_diagonal_and_fills_the_rest():
    target = torchvision.models.resnet18(num_classes=10).eval()
    space = trace(target, torch.randn(1, 3, 32, 32))
    halves = split_halves(space)
    seed_a, seed_b = randomized(seed_model(target, space, halves), 1), randomized(seed_model(target, space, halves), 2)
    ones = grow_model(target, space, halves, seed_a, seed_b, fill=lambda n, kind, like: torch.full_like(like, 7.0))
    w, wa, wb = ones.layer1[0].conv2.weight, seed_a.layer1[0].conv2.weight, seed_b.layer1[0].conv2.weight
    ia, ib = halves.a["conv1"], halves.b["conv1"]   # the residual stream's group: conv2's output
    ja, jb = halves.a["layer1.0.conv1"], halves.b["layer1.0.conv1"]
    assert torch.equal(w[ia][:, ja], wa) and torch.equal(w[ib][:, jb], wb)
    assert (w[ia][:, jb] == 7).all() and (w[ib][:, ja] == 7).all()
    fc, fa, fb = ones.fc, seed_a.fc, seed_b.fc
    stream = next(g for g in space["channels"].groups if g.offset == space["channels"].param_slices["fc.weight"].dims[1].min())
    ia, ib = halves.a[stream.name], halves.b[stream.name]
    assert torch.equal(fc.bias, fa.bias + fb.bias)   # logits: the sum of both heads
    assert torch.equal(fc.weight[:, ia], fa.weight) and torch.equal(fc.weight[:, ib], fb.weight)


def test_odd_groups_drop_a_unit_and_layernorm_streams_are_named_as_the_limit():
    target = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    space = trace(target, x[:1])
    halves = split_halves(space)
    assert halves.dropped == {"blocks.0.attn.qkv": 2, "blocks.1.attn.qkv": 2}   # 3 heads -> 1 + 1
    seed_a, seed_b = randomized(seed_model(target, space, halves), 1), randomized(seed_model(target, space, halves), 2)
    assert seed_a.blocks[0].attn.num_heads == 1
    grown = grow_model(target, space, halves, seed_a, seed_b)
    assert grown.blocks[0].attn.num_heads == 2 and grown(x).shape == (2, 10)
    shared = shared_groups(space, halves)
    assert "layer_norm" in shared["patch_embed.proj"]   # statistics over both seeds' channels
    assert growth_gap(target, space, halves, seed_a, seed_b, x) > 1e-2


class ScalarAffine(torch.nn.Module):
    """timm's LearnableAffineBlock: one scale for every channel."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * x


@pytest.mark.parametrize("tail, why", [
    ((torch.nn.Identity(), torch.nn.ReLU()), "'3' (ReLU) gives neither the seeds' outputs side by side nor their sum"),
    ((ScalarAffine(), torch.nn.Identity()), "'1.scale' shared"),
])
def test_check_growth_names_where_the_sum_breaks(tail, why):
    """squeezenet's ReLU after its classifier conv and hgnetv2's scalar affine, as small models."""
    from compressor.checks import check_growth

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), tail[0], torch.nn.Conv2d(8, 4, 1), tail[1],
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 8, 8)
    assert why in check_growth(model, trace(model, x[:1]), x)
    plain = torch.nn.Sequential(*[m for m in model if not isinstance(m, (torch.nn.ReLU, ScalarAffine))])
    assert check_growth(plain, trace(plain, x[:1]), x) == "exact"


def test_a_model_with_nothing_to_split_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(GrowError, match="nothing to grow"):
        split_halves(trace(model, torch.randn(1, 3, 8, 8)))


def test_template_mixture_keeps_the_output_and_materializes_exactly():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    names = attach_templates(model, generator=torch.Generator().manual_seed(0))
    coefficients = [p for n, p in model.named_parameters() if n.endswith("coefficients")]
    assert len(coefficients) == len(names) > 50 and sum(p.numel() for p in coefficients) == 2 * len(names)
    assert all(p.dim() == 1 for p in coefficients)   # the trainer puts 1-d parameters in its no-decay group
    mixed = model(x)
    assert torch.allclose(mixed, before, atol=1e-5)
    conv = model.features[0][0]
    t = conv.parametrizations.weight.original
    assert t.shape[0] == 2 and not torch.allclose(t[0] / t[0].norm(), t[1] / t[1].norm(), atol=1e-2)
    materialize_templates(model)
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    assert torch.equal(model(x), mixed)


def test_orthogonal_rows_and_new_blocks_over_the_trained_templates():
    rows = orthogonal_rows(4, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(rows.T @ rows, torch.eye(2), atol=1e-6)   # orthonormal columns, as in the reference
    target = torchvision.models.resnet18(num_classes=10).eval()
    space = trace(target, torch.randn(1, 3, 32, 32))
    halves = split_halves(space)
    seeds = [seed_model(target, space, halves) for _ in range(2)]
    names = attach_templates(seeds[0], {n: rows[0] for n in ["layer1.0.conv1.weight"]})
    attach_templates(seeds[1], {n: rows[1] for n in names})
    fill = growth_fill(seeds[0], seeds[1], {n: rows for n in names})
    ta = seeds[0].layer1[0].conv1.parametrizations.weight.original
    like = seeds[0].layer1[0].conv1.weight
    assert torch.allclose(fill("layer1.0.conv1.weight", "ab", like), torch.tensordot(rows[2], ta, dims=1))
    assert torch.equal(fill("bn1.weight", "b", seeds[0].bn1.weight), seeds[0].bn1.weight)
    plain = [materialize_templates(s) for s in seeds]
    grown = grow_model(target, space, halves, plain[0], plain[1], fill=fill)
    assert grown(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_growth_check_of_the_coverage_tool():
    from compressor.checks import check_growth
    from tests.tiny import TinyNet

    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    assert check_growth(model, trace(model, x[:1]), x) == "exact"
    wrn = MODELS["cifar_wrn16_2"](num_classes=10).eval()   # pre-activation blocks: BN before each conv
    x = torch.randn(2, 3, 32, 32)
    assert check_growth(wrn, trace(wrn, x[:1]), x) == "exact"
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    message = check_growth(vit, trace(vit, x[:1]), x)
    assert message.startswith("not the sum of the seeds") and "'patch_embed.proj' shared" in message
