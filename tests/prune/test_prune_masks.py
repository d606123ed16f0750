"""Masks while training: masked weights are zero in every forward, get zero gradient, and bake to plain layers."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compactnn.prune.masks import masked, sparsity


def test_masked_forward_gradient_and_bake():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    original = layer.weight.detach().clone()
    mask = torch.rand(4, 6) > 0.5
    x = torch.randn(8, 6)
    with masked({"fc": layer}, {"fc": mask}) as handle:
        assert torch.equal(layer.weight, torch.where(mask, original, torch.zeros(())))
        layer(x).square().sum().backward()
        grad = layer.parametrizations.weight.original.grad
        assert torch.all(grad[~mask] == 0) and torch.any(grad[mask] != 0)
        assert torch.equal(handle.masks()["fc"], mask)
        assert sparsity(handle.layers) == pytest.approx(float((~mask).float().mean()))
        expected = layer(x).detach()
    assert type(layer) is nn.Linear and not parametrize.is_parametrized(layer)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert torch.equal(layer(x).detach(), expected)  # the pruned module computes what the masked one did
    zeros = layer.weight.detach()[~mask]
    assert torch.all(zeros == 0) and not torch.any(torch.signbit(zeros))  # +0.0, never -0.0


def test_update_changes_mask_and_optimizer_keeps_pruned_at_zero():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3)
    opt_mask = torch.ones_like(conv.weight, dtype=torch.bool)
    with masked({"c": conv}, {}) as handle:
        opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        new = opt_mask.clone()
        new[0] = False
        handle.update({"c": new})
        for _ in range(5):
            opt.zero_grad()
            conv(torch.randn(4, 2, 5, 5)).sum().backward()
            opt.step()
            assert torch.all(conv.weight[0] == 0)
    assert torch.all(conv.weight[0] == 0) and torch.all(conv.weight[1:] != 0)


def test_masks_are_baked_even_when_training_fails():
    layer = nn.Linear(3, 3)
    with pytest.raises(RuntimeError):
        with masked({"l": layer}, {"l": torch.eye(3, dtype=torch.bool)}):
            raise RuntimeError("boom")
    assert type(layer) is nn.Linear
    assert torch.equal(layer.weight.detach() != 0, torch.eye(3, dtype=torch.bool))


def test_mask_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="mask shape"):
        with masked({"l": nn.Linear(3, 3)}, {"l": torch.ones(2, 3, dtype=torch.bool)}):
            pass
