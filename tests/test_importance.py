import numpy as np
import pytest
import torch

from compressor.surgery import slice_model
from compressor.export.flops import fvcore_flops
from compressor.budget import decide
from compressor.importance import get_importance
from compressor.frontend import trace
from compressor.zoo import create_model


def test_magnitude_decision_meets_the_budget_and_drops_the_weakest_channels():
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    space = trace(model, x)
    g = space["channels"].group("layer1.0.conv1")
    with torch.no_grad():
        model.layer1[0].conv1.weight[:8].mul_(1e-3)  # eight obviously useless filters
    scores = get_importance("magnitude")(model, space)
    d = decide(space, scores, 0.5)
    sliced = slice_model(model, space, d)
    ratio = fvcore_flops(sliced, x) / fvcore_flops(model, x)
    assert 0.45 <= ratio <= 0.5
    assert not set(range(8)) & set(d["channels"][g.name])


def test_taylor_scores_follow_gradients():
    model = create_model("mobilenet_v3_small").eval()
    x = torch.randn(2, 3, 64, 64)
    space = trace(model, x[:1])
    model(x).logsumexp(1).sum().backward()
    scores = get_importance("taylor")(model, space)
    units = scores["channels"]
    assert units.shape == (space["channels"].size,) and np.isfinite(units).all() and units.max() > 0


def test_impossible_budget_and_unknown_importance_are_errors():
    model = create_model("resnet18").eval()
    space = trace(model, torch.randn(1, 3, 32, 32))
    scores = get_importance("magnitude")(model, space)
    with pytest.raises(ValueError, match="cannot be met"):
        decide(space, scores, 0.001)
    with pytest.raises(ValueError, match="budget must be a fraction in"):
        decide(space, scores, 1.5)
    with pytest.raises(ValueError, match="unknown importance"):
        get_importance("random-walk")
