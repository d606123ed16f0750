"""The tensor-ring method: compress() replaces Linear/Conv2d with TR layers whose output equals the dense model with
the rebuilt weights (float64), ranks from a target ratio, bad input, fine-tuning on digits, and packing."""

import math

import pytest
import torch
from torch import nn

pytest.importorskip("tensorly")

import compactnn  # noqa: E402
import compactnn.pack as pack  # noqa: E402
from compactnn.api import from_dict
from compactnn.config import FineTune  # noqa: E402
from compactnn.decompose.method import (  # noqa: E402
    TensorRing, default_modes, plan_layers, prime_count, rank_for_ratio, ring_params,
)
from compactnn.decompose.tensor_ring import TRConv2d, TRLinear  # noqa: E402
from compactnn.errors import ConfigError, ModelError  # noqa: E402


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 24), nn.ReLU(), nn.Linear(24, 10),
    )


def dense_twin(compressed: nn.Module) -> nn.Module:
    """The compressed model with every TR layer swapped back for a dense layer holding its rebuilt weight."""
    layers = []
    for m in compressed:
        if isinstance(m, TRLinear):
            d = nn.Linear(m.in_features, m.out_features)
        elif isinstance(m, TRConv2d):
            d = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation)
        else:
            layers.append(m)
            continue
        with torch.no_grad():
            d.weight.copy_(m.full_weight())
            d.bias.copy_(m.bias)
        layers.append(d)
    return nn.Sequential(*layers)


def test_compress_replaces_layers_and_equals_rebuilt_dense(f64):
    model = small_cnn()
    out = compactnn.compress(model, TensorRing(rank=2, finetune=None, als_sweeps=3))
    kinds = [type(m) for m in out if not isinstance(m, (nn.ReLU, nn.Flatten))]
    assert kinds == [TRConv2d, TRConv2d, TRLinear, TRLinear]
    assert isinstance(model[0], nn.Conv2d)  # compress works on a copy
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(out(x), dense_twin(out)(x), rtol=1e-10, atol=1e-12)
    assert out[5].in_modes == default_modes(128, 3) and out[0].in_modes == (1,)


def test_more_als_sweeps_fit_better(f64):
    model = small_cnn()
    errs = []
    for sweeps in (0, 6):
        out = compactnn.compress(model, TensorRing(rank=2, layers=("5",), finetune=None, als_sweeps=sweeps, init="svd"))
        errs.append(float((out[5].full_weight() - model[5].weight).detach().norm()))
    assert errs[1] < errs[0]


def test_ratio_picks_largest_rank():
    for dense, ins, outs, kernel, ratio in [(784 * 300, (4, 7, 4, 7), (3, 4, 5, 5), None, 20.0),
                                            (64 * 64 * 9, (4, 4, 4), (4, 4, 4), 9, 5.0),
                                            (24 * 10, (4, 6), (2, 5), None, 1.0)]:
        r = rank_for_ratio(dense, ins, outs, kernel, ratio)
        assert dense / ring_params(ins, outs, kernel, r) >= ratio
        assert dense / ring_params(ins, outs, kernel, r + 1) < ratio
    assert ring_params((4, 7, 4, 7), (3, 4, 5, 5), None, 10) == 3900  # fc1: 39 R^2 of the paper's 91 R^2


def test_ratio_in_compress_meets_target(f64):
    model = small_cnn()
    cfg = TensorRing(ratio=3.0, layers=("5",), init="random", als_sweeps=2, finetune=None)
    out = compactnn.compress(model, cfg)
    layer = out[5]
    params = sum(c.numel() for c in layer.cores)
    assert model[5].weight.numel() / params >= 3.0
    r = layer.ranks[0]
    assert model[5].weight.numel() / ring_params(layer.in_modes, layer.out_modes, None, r + 1) < 3.0


def test_unreachable_ratio_is_clear():
    with pytest.raises(ModelError, match="out of reach.*ratio <="):
        rank_for_ratio(24 * 10, (4, 6), (2, 5), None, 100.0, "layer 'fc'")


def test_prime_count_and_default_modes():
    assert [prime_count(n) for n in (1, 2, 12, 784, 97)] == [0, 1, 3, 6, 1]
    assert default_modes(10, 3) == (2, 5) and default_modes(1, 3) == (1,) and math.prod(default_modes(784, 3)) == 784


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank: expected int in"),
    ({"rank": -2}, "rank: expected int in"),
    ({}, "exactly one of rank"),
    ({"rank": 2, "ratio": 4.0}, "exactly one of rank"),
    ({"ratio": 0.5}, "ratio"),
    ({"rank": 2, "init": "random", "als_sweeps": 0}, "als_sweeps >= 1"),
    ({"rank": 2, "in_modes": {"fc": [0, 3]}}, r"in_modes\['fc'\]\[0\] must be in \[1, "),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        TensorRing(**kwargs)
    assert "\n" not in str(err.value)


def test_from_dict_roundtrip():
    cfg = from_dict({"method": "tensor-ring", "rank": 3, "layers": ["5"], "in_modes": {"5": [8, 16]},
                     "finetune": None})
    assert cfg == TensorRing(rank=3, layers=("5",), in_modes={"5": (8, 16)}, finetune=None)
    assert cfg.in_modes["5"] == (8, 16)
    hash(cfg)


def test_bad_modes_propose_factorization():
    with pytest.raises(ModelError, match=r"in_modes\['5'\].*multiply to 120, not 128.*such as") as err:
        plan_layers(small_cnn(), TensorRing(rank=2, in_modes={"5": (8, 15)}))
    assert "\n" not in str(err.value)


def test_modes_for_unknown_layer():
    with pytest.raises(ConfigError, match="'fc9'.*factored layers are"):
        plan_layers(small_cnn(), TensorRing(rank=2, out_modes={"fc9": (2, 5)}))


def test_svd_rank_too_large_suggests_als(f64):
    model = small_cnn()
    with pytest.raises(ModelError, match="layer '7'.*init='random'.*or a rank <=") as err:
        compactnn.compress(model, TensorRing(rank=4, layers=("7",), init="svd", finetune=None))
    assert "\n" not in str(err.value)
    out = compactnn.compress(model, TensorRing(rank=4, layers=("7",), init="random", als_sweeps=3, finetune=None))
    assert out[7].ranks == (4,) * 5  # modes (2, 3, 4) -> (2, 5)
    auto = compactnn.compress(model, TensorRing(rank=4, init="auto", als_sweeps=3, finetune=None))
    assert auto[7].ranks == (4,) * 5  # the layer TR-SVD refuses starts from random cores; the others from TR-SVD


def test_grouped_conv_skipped_or_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 6))
    out = compactnn.compress(model, TensorRing(rank=1, finetune=None))
    assert isinstance(out[0], nn.Conv2d) and isinstance(out[2], TRLinear)
    with pytest.raises(ModelError, match="groups=2"):
        compactnn.compress(model, TensorRing(rank=1, layers=("0",), finetune=None))


def test_finetune_needs_data():
    with pytest.raises(ConfigError, match="needs data"):
        compactnn.compress(small_cnn(), TensorRing(rank=2))


def test_finetune_on_digits_and_pack_roundtrip(tmp_path):
    from compactnn.data import load
    from compactnn.train import evaluate, fit

    bundle = load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, bundle, epochs=3, lr=0.05, batch_size=64, quiet=True)
    dense_acc = evaluate(model, bundle)["accuracy"]
    cfg = TensorRing(rank=3, init="random", finetune=None)
    before = evaluate(compactnn.compress(model, cfg), bundle)["accuracy"]
    out = compactnn.compress(model, TensorRing(rank=3, init="random", finetune=FineTune(epochs=3, batch_size=64)),
                             data=bundle)
    after = evaluate(out, bundle)["accuracy"]
    assert dense_acc > 0.85 and after > before + 0.1 and after > 0.75
    out.eval()
    path = tmp_path / "tr.cnz"
    pack.save(out, path)
    back = pack.load(path)
    assert [type(m) for m in back] == [type(m) for m in out]
    assert isinstance(back[1], TRLinear) and back[1].ranks == out[1].ranks
    x = bundle.test.x[:16]
    assert torch.equal(back(x), out(x))
    stored = pack.tensor_bytes(out)
    assert "1.core_0" in stored and not any(k.endswith("weight") for k in stored)
