"""Surgery: pruned models equal their masked reference, are really smaller, and bad input gives clear errors."""

import copy

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ConfigError, ModelError
from compactnn.prune.graph import build_graph
from compactnn.layers import resolve
from compactnn.prune import L1Filter
from compactnn.prune.structured import keep_top, selected_groups, uniform_counts
from compactnn.prune.surgery import keep_count, prune_channels, removed_roots, total_macs, zero_channels


class CatNet(nn.Module):
    """Conv-BN-ReLU and a 1x1 conv concatenated, a depthwise residual, a strided conv, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(3, 5, 1)
        self.dw = nn.Conv2d(11, 11, 3, padding=1, groups=11)
        self.c = nn.Conv2d(11, 7, 3, stride=2)
        self.pool = nn.AvgPool2d(1)
        self.fc = nn.Linear(7 * 3 * 3, 4)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bn(self.a(x))), torch.sigmoid(self.b(x))], 1)
        y = self.dw(y) + y
        return self.fc(self.pool(self.c(y)).view(x.size(0), -1))


def _model(name):
    torch.manual_seed(0)
    if name == "cat":
        m = CatNet()
    else:
        m = cn.models.create(name, input_shape=(1, 8, 8) if name == "lenet5" else (2, 8, 8), num_classes=7)
    for mod in m.modules():  # non-trivial BN statistics and affine
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


def _random_keep(graph, seed=1, frac=0.5):
    gen = torch.Generator().manual_seed(seed)
    return {n: sorted(torch.randperm(g.size, generator=gen)[: max(1, int(g.size * frac))].tolist())
            for n, g in graph.prunable().items()}


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "resnet20", "resnet32", "resnet56", "vgg-small", "cat"])
def test_pruned_equals_masked(name):
    m = _model(name)
    g = build_graph(m)
    keep = _random_keep(g)
    pruned = prune_channels(copy.deepcopy(m), g, keep)
    masked = zero_channels(copy.deepcopy(m), g, keep)
    x = torch.randn(5, *g.input_shape)
    with torch.no_grad():
        out_p, out_m, out_d = pruned(x), masked(x), m(x)
    assert out_p.shape == out_d.shape  # classifier outputs never pruned
    torch.testing.assert_close(out_p, out_m, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_m, out_d)  # the masking did something
    n_dense, n_pruned = (sum(p.numel() for p in mm.parameters()) for mm in (m, pruned))
    assert n_pruned < 0.6 * n_dense
    assert total_macs(pruned, g.input_shape) < 0.6 * total_macs(m, g.input_shape)
    for mod in pruned.modules():  # plain modules, no masks or hooks
        assert not mod._forward_hooks and not mod._forward_pre_hooks
        assert type(mod).__name__ != "ParametrizationList"


def test_lenet5_exact_shapes_weights_and_pack_roundtrip(tmp_path):
    m = _model("lenet5")
    g = build_graph(m)
    keep = {"conv1": [0, 3, 19], "conv2": list(range(10)), "fc1": [1, 2, 499]}
    p = prune_channels(copy.deepcopy(m), g, keep)
    assert (p.conv1.out_channels, p.conv2.in_channels, p.conv2.out_channels) == (3, 3, 10)
    assert (p.fc1.in_features, p.fc1.out_features, p.fc2.in_features, p.fc2.out_features) == (40, 3, 3, 7)
    assert torch.equal(p.conv1.weight, m.conv1.weight[[0, 3, 19]])
    assert torch.equal(p.conv2.weight, m.conv2.weight[:10][:, [0, 3, 19]])
    assert torch.equal(p.fc1.weight, m.fc1.weight[[1, 2, 499]][:, :40])  # channels 0..9 -> features 0..39
    assert torch.equal(p.fc2.weight, m.fc2.weight[:, [1, 2, 499]])
    assert torch.equal(p.fc2.bias, m.fc2.bias)
    cn.pack.save(p, tmp_path / "p.cnz")
    q = cn.pack.load(tmp_path / "p.cnz")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(q(x), p(x))


def test_resnet_bn_stats_copied_and_mode_kept():
    m = _model("resnet20").train()
    g = build_graph(m)
    keep = {"layer2.0.conv2": list(range(0, 32, 2))}
    p = prune_channels(copy.deepcopy(m), g, keep)
    for name in ("layer2.0.bn2", "layer2.1.bn2", "layer2.0.shortcut.1"):
        old, new = m.get_submodule(name), p.get_submodule(name)
        assert new.num_features == 16 and new.training
        assert torch.equal(new.running_var, old.running_var[::2])
        assert torch.equal(new.weight, old.weight[::2])
    assert p.layer3[0].conv1.in_channels == 16 and p.layer3[0].shortcut[0].in_channels == 16
    assert p.layer2[1].conv1.in_channels == 16 and p.layer2[1].conv2.out_channels == 16


def test_depthwise_pruned_keeps_groups_equal_channels():
    m = _model("cat")
    g = build_graph(m)
    p = prune_channels(copy.deepcopy(m), g, {"a": [1, 4], "b": [0]})
    assert (p.dw.in_channels, p.dw.out_channels, p.dw.groups) == (3, 3, 3)
    assert p.c.in_channels == 3


def test_sparsity_and_name_errors():
    m = _model("lenet5")
    g = build_graph(m)
    for bad in (1.0, -0.1, 1.5, "0.5", True):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            L1Filter(sparsity=bad)
    with pytest.raises(ConfigError):
        L1Filter(sparsity={"conv1": 1.0})
    with pytest.raises(ModelError, match="'nope'.*conv1"):
        resolve(m, L1Filter(sparsity={"nope": 0.5}))
    with pytest.raises(ModelError, match="model output"):
        selected_groups(g, resolve(m, L1Filter(sparsity={"fc2": 0.5})), "l1-filter")
    cfg = L1Filter(sparsity={"conv*": 0.25, "fc1": 0.5})
    assert selected_groups(g, resolve(m, cfg), "l1") == {"conv1": 0.25, "conv2": 0.25, "fc1": 0.5}
    assert selected_groups(g, resolve(m, L1Filter(sparsity=0.3)), "l1") == {"conv1": 0.3, "conv2": 0.3, "fc1": 0.3}
    with pytest.raises(ModelError, match="no channel group 'bogus'"):
        prune_channels(_model("lenet5"), g, {"bogus": [0]})
    with pytest.raises(ModelError, match="input or output"):
        removed_roots(g, {"fc2": [0]})
    for bad in ([], [0, 0], [20]):
        with pytest.raises(ModelError, match="distinct indices"):
            removed_roots(g, {"conv1": bad})


def test_keep_top_and_counts():
    assert [keep_count(10, r) for r in (0.0, 0.25, 0.5, 0.99)] == [10, 8, 5, 1]
    scores = {"a": torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1])}
    assert keep_top(scores, {"a": keep_count(5, 0.4)}) == {"a": [1, 2, 3]}
    assert keep_top(scores, {"a": keep_count(5, 0.8)}) == {"a": [1]}  # tie: lower index wins


def test_uniform_counts_hit_the_uniform_ratio_macs():
    m = _model("resnet20")
    g = build_graph(m)
    keep = {n: list(range(keep_count(gr.size, 0.3))) for n, gr in g.prunable().items()}
    target = total_macs(prune_channels(copy.deepcopy(m), g, keep), g.input_shape)
    fraction = 1 - target / total_macs(m, g.input_shape)
    counts = uniform_counts(m, g, list(g.prunable()), fraction, round_to=1, tol=1e-3)
    keep_r = {n: list(range(c)) for n, c in counts.items()}
    assert total_macs(prune_channels(copy.deepcopy(m), g, keep_r), g.input_shape) == target


def test_keep_count_round_to_snaps_to_multiples():
    assert [keep_count(64, r, 8) for r in (0.0, 0.24, 0.3, 0.7, 0.99)] == [64, 48, 48, 16, 8]
    assert keep_count(16, 0.25, 8) == 16  # 12 is halfway: halves round up
    assert keep_count(6, 0.5, 8) == 6  # groups no wider than round_to stay whole
    assert keep_count(20, 0.1, 8) == 16  # 18 is nearer 16 than 24
    assert keep_count(20, 0.3, 8) == 16
    assert keep_count(10, 0.3) == 7  # round_to=1 is the exact count


def test_round_to_in_configs_and_bad_values():
    from compactnn.prune import L1Filter, NISP

    with pytest.raises(ConfigError, match="round_to"):
        NISP(sparsity=0.3, round_to=0)
    with pytest.raises(ConfigError, match="round_to"):
        L1Filter(sparsity=0.3, round_to=2.5)
    m = cn.models.create("resnet20", input_shape=(1, 12, 12), num_classes=10)
    out = cn.compress(m, L1Filter(sparsity=0.3, round_to=8, finetune=None))
    widths = {n: c.out_channels for n, c in out.named_modules() if isinstance(c, nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths.values()), widths


def test_macs_model_equals_rebuilding_and_counting():
    from compactnn.prune.structured import MacsModel

    for name in ("resnet20", "lenet5", "cat"):
        m = _model(name)
        g = build_graph(m)
        macs = MacsModel(m, g)
        for r in (0.0, 0.3, 0.7):
            counts = {n: keep_count(gr.size, r) for n, gr in g.prunable().items()}
            keep = {n: list(range(c)) for n, c in counts.items()}
            assert macs(counts) == total_macs(prune_channels(copy.deepcopy(m), g, keep), g.input_shape), (name, r)
