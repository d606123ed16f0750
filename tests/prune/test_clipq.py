"""CLIP-Q operator: clip thresholds per sign, interval means vs brute force, returning weights, STE, baking, storage."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune, to_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.prune.clipq import ClipQ, clip_quantized
from compactnn.prune.clipq_ops import (ClipQuantize, clip_quantize, clip_quantize_ste,
                                   clip_thresholds, stored_bits)
from compactnn.layers import resolve


def test_clip_thresholds_count_per_sign_on_hand_example():
    # 10 positives 1..10 and 4 negatives -1..-4, plus two exact zeros
    w = torch.tensor([3.0, -1.0, 0.0, 7.0, -4.0, 1.0, 10.0, 2.0, -3.0, 0.0, 5.0, 4.0, 9.0, -2.0, 6.0, 8.0])
    c_minus, c_plus = clip_thresholds(w, 0.5)
    assert (c_minus, c_plus) == (-2.0, 5.0)
    assert int(((w > 0) & (w <= c_plus)).sum()) == 5  # half of the 10 positives
    assert int(((w < 0) & (w >= c_minus)).sum()) == 2  # half of the 4 negatives
    q = clip_quantize(w, 0.5, 8)  # 255 intervals: every survivor keeps its own value
    assert q.tolist() == [0, 0, 0, 7, -4, 0, 10, 0, -3, 0, 0, 0, 9, 0, 6, 8]
    assert clip_thresholds(w, 0.0) == (0.0, 0.0)
    assert torch.equal(clip_quantize(w, 0.0, 8), w)
    assert clip_thresholds(w, 0.25) == (-1.0, 3.0)  # round(2.5) -> 3 positives, round(1.0) -> 1 negative
    assert clip_thresholds(torch.tensor([1.0, 2.0]), 0.9) == (0.0, 2.0)  # no negatives: c- stays 0


def brute_force(w: np.ndarray, p: float, bits: int) -> np.ndarray:
    """Clip, partition and quantize with plain Python loops."""
    flat = w.reshape(-1).astype(np.float64)
    pos, neg = sorted(v for v in flat if v > 0), sorted((v for v in flat if v < 0), reverse=True)
    kp, kn = int(p * len(pos) + 0.5), int(p * len(neg) + 0.5)
    c_plus = pos[kp - 1] if kp else 0.0
    c_minus = neg[kn - 1] if kn else 0.0
    keep = [i for i, v in enumerate(flat) if v > c_plus or v < c_minus]
    out = np.zeros_like(flat)
    if not keep:
        return out.reshape(w.shape)
    k = 2**bits - 1
    lo, hi = min(flat[keep]), max(flat[keep])
    edges = [lo + j * (hi - lo) / k for j in range(k + 1)]
    members = {j: [] for j in range(k)}
    for i in keep:
        j = next(j for j in range(k) if edges[j] <= flat[i] < edges[j + 1] or (j == k - 1 and flat[i] <= hi))
        members[j].append(i)
    for j, idx in members.items():
        for i in idx:
            out[i] = sum(flat[t] for t in idx) / len(idx)
    return out.reshape(w.shape)


@pytest.mark.parametrize("p,bits,seed", [(0.5, 2, 0), (0.8, 3, 1), (0.3, 4, 2), (0.95, 2, 3), (0.0, 1, 4)])
def test_partition_and_interval_means_match_brute_force(p, bits, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 17, generator=g) + 0.3 * torch.rand(12, 17, generator=g)  # skewed: signs differ in count
    q = clip_quantize(w, p, bits)
    ref = brute_force(w.numpy(), p, bits)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-6, atol=0)
    assert torch.equal(q == 0, torch.from_numpy(ref == 0))
    nonzero = q[q != 0].unique()
    assert nonzero.numel() <= 2**bits - 1
    assert q.dtype == w.dtype and not q.requires_grad


def test_ste_gradient_is_the_upstream_gradient():
    w = torch.randn(6, 9, requires_grad=True)
    upstream = torch.randn(6, 9)
    out = clip_quantize_ste(w, 0.7, 2)
    assert torch.equal(out.detach(), clip_quantize(w, 0.7, 2))
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)  # clipped weights too: zero in the forward pass, full gradient back


def test_clipped_weight_comes_back_as_shadow_weights_train():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.01, 1.0, -1.0, 2.0], [-2.0, 0.5, -0.5, 3.0]]))
    parametrize.register_parametrization(layer, "weight", ClipQuantize(0.5, 3))
    assert float(layer.weight.detach()[0, 0]) == 0.0  # the smallest positive weight is clipped at p = 0.5
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    seen_zero_steps = 0
    for _ in range(10):
        opt.zero_grad()
        (-layer.weight[0, 0]).backward()  # pushes the shadow weight up although its forward value is 0
        seen_zero_steps += int(float(layer.weight.detach()[0, 0]) == 0.0)
        opt.step()
    shadow = layer.parametrizations.weight.original
    assert float(shadow.detach()[0, 0]) == pytest.approx(0.01 + 10 * 0.5)
    assert seen_zero_steps >= 1 and float(layer.weight.detach()[0, 0]) > 0  # it was clipped, and now it is back
    assert float(layer.weight.detach()[0, 0]) == float(layer.weight.detach().max())


@pytest.fixture(scope="module")
def trained():
    bundle = cn.data.load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    cn.train.fit(model, bundle, epochs=8, lr=0.05, batch_size=64, quiet=True)
    return model, bundle


def test_finetuned_model_is_baked_plain_and_keeps_accuracy(trained):
    model, bundle = trained
    dense = cn.train.evaluate(model, bundle)["accuracy"]
    cfg = ClipQ(sparsity={"1": 0.8, "3": 0.5}, bits={"1": 2, "3": 3}, finetune=FineTune(epochs=3, lr=0.01))
    small = cn.compress(model, cfg, data=bundle)
    for name, bits in (("1", 2), ("3", 3)):
        layer = small.get_submodule(name)
        assert type(layer) is nn.Linear and not parametrize.is_parametrized(layer)
        w = layer.weight.detach()
        assert w[w != 0].unique().numel() <= 2**bits - 1
    assert list(small.state_dict()) == list(model.state_dict())
    assert float((small[1].weight == 0).float().mean()) == pytest.approx(0.8, abs=0.02)
    assert cn.train.evaluate(small, bundle)["accuracy"] >= dense - 0.05
    direct = cn.compress(model, ClipQ(sparsity={"1": 0.8, "3": 0.5}, bits={"1": 2, "3": 3}, finetune=None))
    assert torch.equal(direct[1].weight, clip_quantize(model[1].weight, 0.8, 2))  # no fine-tuning: Q applied once


def test_stored_bits_equal_the_packed_files_bytes(trained):
    model, _ = trained
    small = cn.compress(model, ClipQ(sparsity=0.7, bits=3, finetune=None))
    exact = cn.pack.tensor_bytes(small, level=0)
    zipped = cn.pack.tensor_bytes(small, level=19)
    for key in ("1.weight", "3.weight"):
        bits = stored_bits(small.state_dict()[key])
        assert bits == 8 * exact[key]
        assert 8 * zipped[key] <= bits
    assert 8 * exact["1.weight"] < 32 * 64 * 64 / 4  # sparse + 3-bit codes beat fp32 by far


def test_context_manager_bakes_even_on_error():
    layer = nn.Linear(5, 5)
    with pytest.raises(RuntimeError, match="boom"):
        with clip_quantized({"l": layer}, {"l": (0.5, 2)}):
            assert parametrize.is_parametrized(layer)
            raise RuntimeError("boom")
    assert not parametrize.is_parametrized(layer) and type(layer) is nn.Linear
    assert layer.weight[layer.weight != 0].unique().numel() <= 3


@pytest.mark.parametrize("kwargs", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(sparsity={"1": 1.5}), dict(bits=0),
                                    dict(bits=17), dict(ratio=0.5), dict(ratio=0.0), dict(sparsity_range=(0.5, 1.0)),
                                    dict(p=0.5), dict(target_ratio=0.1),
                                    dict(bits_range=(4, 2)), dict(heldout=1.0), dict(trials=0), dict(lam=-1.0),
                                    dict(sampler="cma"), dict(storage="study.db")])
def test_bad_config_is_a_config_error(kwargs):
    with pytest.raises(ConfigError, match="clip-q"):
        ClipQ(**kwargs)


def test_unknown_layer_is_a_model_error(trained):
    model, bundle = trained
    with pytest.raises(ModelError, match="sparsity names 'fc9', which matches none"):
        cn.compress(model, ClipQ(sparsity={"fc9": 0.5}, finetune=None))
    with pytest.raises(ModelError, match="matches no"):
        cn.compress(model, ClipQ(layers=("fc*",), finetune=None))
    with pytest.raises(ConfigError, match="needs data"):
        cn.compress(model, ClipQ(sparsity=0.5))


def test_config_round_trips_and_per_layer_values_resolve():
    cfg = from_dict({"method": "clip-q", "sparsity": {"1": 0.9, "*": 0.5}, "bits": 3, "sparsity_range": [0.6, 0.95]})
    assert isinstance(cfg, ClipQ) and cfg.sparsity == {"1": 0.9, "*": 0.5} and cfg.sparsity_range == (0.6, 0.95)
    assert from_dict(to_dict(cfg)) == cfg
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    target = resolve(model, cfg)
    assert target.values == {"sparsity": {"1": 0.9, "3": 0.5}, "bits": {"1": 3, "3": 3}}
    only = resolve(model, ClipQ(sparsity=0.6, bits={"3": 5}))  # a layer no key names is left alone
    assert list(only.layers) == ["3"] and only.values == {"sparsity": {"3": 0.6}, "bits": {"3": 5}}
