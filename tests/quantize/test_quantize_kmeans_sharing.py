"""KMeansQuantize: shared-weight parametrization, exact codebook gradient, baking, fine-tuning on digits, config."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune, to_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.prune import MagnitudePrune
from compactnn.quantize import KMeansQuantize
from compactnn.quantize.kmeans import cluster_weight, codebook_of, share_weights
from compactnn.train import evaluate, fit


def test_codebook_gradient_is_exact_per_cluster_sum():
    layer = nn.Linear(5, 4)
    index = torch.tensor([[0, 1, 2, 3, 1], [2, 2, 0, 1, 3], [3, 0, 0, 2, 1], [1, 1, 1, 0, 2]])
    codebook = torch.tensor([-0.5, 0.25, 1.0])
    share_weights(layer, index, codebook)
    with torch.no_grad():
        codebook_of(layer).copy_(codebook)
    assert torch.equal(layer.weight, torch.cat([torch.zeros(1), codebook])[index])
    g = torch.arange(20, dtype=torch.float32).reshape(4, 5) - 7.0  # dL/dweight, exact in float32
    (layer.weight * g).sum().backward()
    expected = [sum(float(g[i, j]) for i in range(4) for j in range(5) if index[i, j] == c) for c in (1, 2, 3)]
    assert codebook_of(layer).grad.tolist() == expected
    assert isinstance(codebook_of(layer), nn.Parameter) and codebook_of(layer).requires_grad


def test_initial_codebook_is_cluster_means_and_zeros_are_kept():
    torch.manual_seed(0)
    w = torch.randn(30, 20)
    w[w.abs() < 0.5] = 0.0
    index, codebook = cluster_weight(w, bits=3)
    assert torch.equal(index == 0, w == 0)
    assert codebook.shape == (8,) and int(index.max()) <= 8
    layer = nn.Linear(20, 30)
    with torch.no_grad():
        layer.weight.copy_(w)
    share_weights(layer, index, codebook)
    for c in range(1, 9):
        members = w[index == c]
        if members.numel():
            assert codebook_of(layer)[c - 1].item() == pytest.approx(members.double().mean().item(), rel=1e-6)
    assert cluster_weight(torch.zeros(3, 3), 2) is None


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_compress_without_finetune_shares_weights_and_keeps_zeros(bits, init):
    pruned = cn.compress(mlp(), MagnitudePrune(sparsity=0.5, finetune=None))
    small = cn.compress(pruned, KMeansQuantize(bits=bits, init=init, finetune=None))
    for name in ("1", "3"):
        before, after = pruned.get_submodule(name), small.get_submodule(name)
        assert type(after) is nn.Linear and not parametrize.is_parametrized(after)
        assert torch.equal(after.weight == 0, before.weight == 0)  # zeros preserved, no new zeros
        values = torch.unique(after.weight[after.weight != 0])
        assert values.numel() <= 2**bits
        assert torch.equal(after.bias, before.bias)
        index, codebook = cluster_weight(before.weight, bits, init)  # each weight became its centroid
        assert torch.equal(after.weight, torch.cat([torch.zeros(1), codebook])[index])


def test_finetune_trains_codebooks_and_bakes_plain_layers(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, digits, epochs=8, lr=0.1, batch_size=64, quiet=True)
    base = evaluate(model, digits)["accuracy"]
    pruned = cn.compress(model, MagnitudePrune(sparsity=0.8, finetune=FineTune(epochs=2)), data=digits)
    clustered = cn.compress(pruned, KMeansQuantize(bits=2, finetune=None))
    tuned = cn.compress(pruned, KMeansQuantize(bits=2, finetune=FineTune(epochs=3)), data=digits)
    assert list(tuned.state_dict()) == list(model.state_dict())
    for name in ("1", "3"):
        layer = tuned.get_submodule(name)
        assert type(layer) is nn.Linear and not parametrize.is_parametrized(layer)
        assert torch.equal(layer.weight == 0, pruned.get_submodule(name).weight == 0)
        assert torch.unique(layer.weight[layer.weight != 0]).numel() <= 4
        # the assignments stayed; only the shared values moved
        c, t = clustered.get_submodule(name).weight, layer.weight
        for v in torch.unique(c[c != 0]):
            assert torch.unique(t[c == v]).numel() == 1
        assert not torch.equal(c, t)
    assert evaluate(tuned, digits)["accuracy"] >= base - 0.05
    with torch.no_grad():
        pruned[3].weight.zero_()  # an all-zero layer stays all zero through codebook fine-tuning
    tuned = cn.compress(pruned, KMeansQuantize(bits=2, finetune=FineTune(epochs=1)), data=digits)
    assert torch.all(tuned[3].weight == 0) and type(tuned[3]) is nn.Linear


def test_default_finetune_is_adam_and_a_diverging_sgd_says_why(digits, monkeypatch):
    """Summed cluster gradients (the paper's update) make plain SGD's step grow with the cluster size: an unset
    optimizer/lr trains codebooks with Adam at 1e-4; a diverging SGD fine-tune names the cause in its one line."""
    import compactnn.quantize.kmeans as km

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    fit(model, digits, epochs=2, lr=0.1, batch_size=64, quiet=True)
    seen = []
    real = km.run_finetune
    monkeypatch.setattr(km, "run_finetune", lambda m, d, ft, method: seen.append(ft) or real(m, d, ft, method))
    cn.compress(model, KMeansQuantize(bits=2, finetune=FineTune(epochs=1)), data=digits)
    cn.compress(model, KMeansQuantize(bits=2, finetune=FineTune(epochs=1, lr=0.001)), data=digits)
    assert (seen[0].optimizer, seen[0].lr) == ("adam", 1e-4)
    assert (seen[1].optimizer, seen[1].lr) == (None, 0.001)  # a set lr keeps the general rule
    with pytest.raises(ConfigError, match=r"diverged.*sum over its cluster.*~4,096 weights per centroid"):
        cn.compress(model, KMeansQuantize(bits=2, finetune=FineTune(epochs=1, lr=100.0, optimizer="sgd")),
                    data=digits)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"bits": 0}, "bits"), ({"bits": 9}, "bits"), ({"init": "kmeans++"}, "init"), ({"layers": ()}, "layers"),
     ({"iterations": 0}, "iterations")],
)
def test_bad_config_is_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        KMeansQuantize(**kwargs)


def test_from_dict_errors_and_registration():
    cfg = from_dict({"method": "kmeans-quantize", "bits": 3, "layers": ["1"], "finetune": None})
    assert cfg == KMeansQuantize(bits=3, layers=("1",), finetune=None) and from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="bits"):
        from_dict({"method": "kmeans-quantize", "bits": 0})
    with pytest.raises(ModelError, match="'conv\\*'.*layers are: 1, 3"):
        cn.compress(mlp(), KMeansQuantize(layers=("conv*",), finetune=None))
    with pytest.raises(ConfigError, match="needs data"):
        cn.compress(mlp(), KMeansQuantize())
    assert "kmeans-quantize" in cn.list_methods()


def test_pruned_and_shared_model_packs_smaller_and_loads_equal(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 200), nn.ReLU(), nn.Linear(200, 10))
    pruned = cn.compress(model, MagnitudePrune(sparsity=0.9, finetune=None))
    shared = cn.compress(pruned, KMeansQuantize(bits=4, finetune=None))
    sizes = {}
    for name, m in {"dense": model, "pruned": pruned, "shared": shared}.items():
        path = tmp_path / f"{name}.cnz"
        cn.pack.save(m, path)
        sizes[name] = path.stat().st_size
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(cn.pack.load(path)(x), m(x))
    assert sizes["shared"] < sizes["pruned"] < sizes["dense"] / 4
