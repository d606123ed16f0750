"""Magnitude pruning without training: exact counts, threshold property, ties, config checks, handler output."""

import numpy as np
import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune, to_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.prune import MagnitudePrune, magnitude_masks


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(7, 5, generator=g), "b": 3 * torch.randn(4, 3, 2, 2, generator=g),
            "c": 0.1 * torch.randn(10, generator=g)}


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999])
def test_global_keeps_exact_count_with_one_threshold(s):
    w = weights()
    masks = magnitude_masks(w, s, "global")
    n = sum(t.numel() for t in w.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - s) * n)
    kept = np.concatenate([w[k][masks[k]].abs().numpy() for k in w])
    pruned = np.concatenate([w[k][~masks[k]].abs().numpy() for k in w])
    if kept.size and pruned.size:
        assert kept.min() >= pruned.max()
    # brute force: the same set as numpy's stable argsort of -|w| over the concatenated weights
    flat = np.concatenate([w[k].abs().reshape(-1).numpy() for k in w])
    keep = np.zeros(n, bool)
    keep[np.argsort(-flat, kind="stable")[: round((1 - s) * n)]] = True
    assert np.array_equal(keep, np.concatenate([masks[k].reshape(-1).numpy() for k in w]))


@pytest.mark.parametrize("s", [0.3, 0.75, 0.9])
def test_layer_scope_keeps_exact_count_per_layer(s):
    w = weights(1)
    masks = magnitude_masks(w, s, "layer")
    for k, t in w.items():
        assert int(masks[k].sum()) == round((1 - s) * t.numel())
        if masks[k].any() and (~masks[k]).any():
            assert t[masks[k]].abs().min() >= t[~masks[k]].abs().max()


def test_global_and_layer_scope_differ_when_layer_scales_differ():
    w = weights()
    g, l = magnitude_masks(w, 0.5, "global"), magnitude_masks(w, 0.5, "layer")
    assert int(g["b"].sum()) > int(l["b"].sum()) and int(g["c"].sum()) < int(l["c"].sum())


def test_ties_are_broken_by_position_deterministically():
    w = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    masks = magnitude_masks(w, 0.5, "global")
    assert masks["x"].reshape(-1).tolist() == [True] * 5 + [False] and not masks["y"].any()
    assert magnitude_masks(w, 0.5, "layer")["y"].tolist() == [True, True, False, False]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3))


def test_compress_one_shot_without_finetune_is_plain_and_matches_masked_model():
    model = mlp()
    cfg = MagnitudePrune(sparsity=0.8, finetune=None)
    small = cn.compress(model, cfg)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    masks = magnitude_masks({n: m.weight for n, m in layers.items()}, 0.8)
    for name, m in small.named_modules():
        if isinstance(m, nn.Linear):
            assert type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
            assert torch.equal(m.weight.detach() != 0, masks[name])  # zeros exactly where the mask says
            assert torch.equal(m.bias, layers[name].bias)  # biases untouched
    x = torch.randn(5, 16)
    with torch.no_grad():
        for name, m in layers.items():
            m.weight.mul_(masks[name])
        assert torch.equal(small(x), model(x))
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(int((m.weight == 0).sum()) for m in small.modules() if isinstance(m, nn.Linear)) == total - round(
        0.2 * total)


def test_compress_selected_layers_only():
    model = mlp()
    small = cn.compress(model, MagnitudePrune(sparsity=0.5, scope="layer", layers=("3",), finetune=None))
    assert int((small[3].weight == 0).sum()) == 128
    assert torch.equal(small[1].weight, model[1].weight) and torch.equal(small[5].weight, model[5].weight)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"sparsity": 0.5, "scope": "net"}, "scope"),
        ({"sparsity": 0.5, "schedule": "linear"}, "schedule"),
        ({"sparsity": 0.5, "layers": ()}, "layers"),
        ({"sparsity": 0.5, "agp_start": 0.8, "agp_end": 0.5}, "agp_start"),
        ({"sparsity": 0.5, "agp_every": 0}, "agp_every"),
        ({"sparsity": 0.5, "schedule": "agp", "finetune": None}, "agp"),
    ],
)
def test_bad_config_is_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MagnitudePrune(**kwargs)


def test_from_dict_builds_config_and_round_trips():
    cfg = from_dict({"method": "magnitude-prune", "sparsity": 0.9, "finetune": {"epochs": 2}})
    assert cfg == MagnitudePrune(sparsity=0.9, finetune=FineTune(epochs=2))
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict({"method": "magnitude-prune", "sparsity": 0.5, "layers": ["fc*"]}).layers == ("fc*",)
    with pytest.raises(ConfigError, match="sparsity"):
        from_dict({"method": "magnitude-prune", "sparsity": 1.0})
    assert "magnitude-prune" in cn.list_methods()


def test_unknown_layer_pattern_and_missing_data_errors():
    with pytest.raises(ModelError, match="'fc9'.*layers are: 1, 3, 5"):
        cn.compress(mlp(), MagnitudePrune(sparsity=0.5, layers=("fc9",), finetune=None))
    with pytest.raises(ConfigError, match="needs data"):
        cn.compress(mlp(), MagnitudePrune(sparsity=0.5))
