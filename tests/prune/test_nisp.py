"""NISP: Inf-FS against a direct computation, score propagation against hand/brute-force results, end to end."""

import copy

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune
from compactnn.errors import ConfigError, ModelError
from compactnn.models.resnet import Add
from compactnn.prune.graph import build_graph
from compactnn.prune.nisp import NISP, final_response_node, inf_fs, nisp_scores, propagate, responses, spearman


def _input(graph):
    return next(iter(graph.gm.graph.nodes)).name  # the placeholder


def _direct_inf_fs(x, alpha=0.5):
    n, d = x.shape
    std = [np.std(x[:, i], ddof=1) for i in range(d)]
    m = np.array([[max(std[i], std[j]) for j in range(d)] for i in range(d)])
    m = (m - m.min()) / (m.max() - m.min())
    a = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if std[i] == 0 or std[j] == 0:
                c = 0.0
            else:
                c = 1 - abs(scipy.stats.spearmanr(x[:, i], x[:, j]).statistic)
            a[i, j] = alpha * m[i, j] + (1 - alpha) * c
    r = 0.9 / max(abs(np.linalg.eigvals(a)))
    s = np.linalg.inv(np.eye(d) - r * a) - np.eye(d)
    return s @ np.ones(d)


def test_inf_fs_matches_direct_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    x[:, 2] = np.round(x[:, 2])  # ties in the ranks
    x[:, 4] = 2.0  # a constant feature
    x[:, 5] = 3 * x[:, 0] + 0.1 * rng.normal(size=30)  # redundant with feature 0
    got = inf_fs(x, alpha=0.5)
    np.testing.assert_allclose(got, _direct_inf_fs(x), rtol=1e-10)
    assert np.argmin(got) == 4  # the constant feature is least important
    np.testing.assert_allclose(inf_fs(x, alpha=0.2), _direct_inf_fs(x, alpha=0.2), rtol=1e-10)


def test_spearman_matches_scipy():
    x = np.random.default_rng(1).integers(0, 4, size=(25, 4)).astype(float)
    np.testing.assert_allclose(spearman(x), scipy.stats.spearmanr(x).statistic, atol=1e-12)


def test_linear_chain_is_abs_weight_products():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    g = build_graph(m, input_shape=(5,))
    name, frl = final_response_node(g)
    assert name == "4"
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    scores = propagate(g, frl, s)
    w1, w2 = (m[i].weight.detach().double().abs() for i in (0, 2))
    h2 = scores["_2"].reshape(-1)  # output of the second Linear
    torch.testing.assert_close(h2, s)  # ReLU passes
    torch.testing.assert_close(scores["_0"].reshape(-1), w2.T @ s)
    torch.testing.assert_close(scores[_input(g)].reshape(-1), w1.T @ (w2.T @ s))


class ConvNet(nn.Module):
    def __init__(self, stride, padding):
        super().__init__()
        self.input_shape = (2, 7, 6)
        self.conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, bias=False)
        self.flatten = nn.Flatten()
        out = ((7 + 2 * padding - 3) // stride + 1) * ((6 + 2 * padding - 3) // stride + 1)
        self.fc = nn.Linear(3 * out, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.conv(x)))


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (2, 0)])
def test_conv_propagation_equals_brute_force(stride, padding):
    torch.manual_seed(0)
    m = ConvNet(stride, padding)
    g = build_graph(m)
    _, frl = final_response_node(g)
    d = m.fc.in_features
    s = torch.rand(d, dtype=torch.float64)
    got = propagate(g, frl, s)[_input(g)][0]
    w = m.conv.weight.detach().double().abs()
    out = s.reshape(3, -1).reshape(3, d // 3 // ((6 + 2 * padding - 3) // stride + 1), -1)
    want = torch.zeros(2, 7, 6, dtype=torch.float64)
    for o in range(3):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                for c in range(2):
                    for kh in range(3):
                        for kw in range(3):
                            i, j = y * stride - padding + kh, x * stride - padding + kw
                            if 0 <= i < 7 and 0 <= j < 6:
                                want[c, i, j] += w[o, c, kh, kw] * out[o, y, x]
    torch.testing.assert_close(got, want)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3,)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 4)
        self.add = Add()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.fc(self.add(self.b(h), h))


def test_residual_add_sums_both_paths():
    torch.manual_seed(0)
    m = Residual()
    g = build_graph(m)
    s = torch.tensor([1.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    scores = propagate(g, final_response_node(g)[1], s)
    wb = m.b.weight.detach().double().abs()
    torch.testing.assert_close(scores["a"].reshape(-1), s + wb.T @ s)
    assert set(g.prunable()) == {"a"} and g.groups["a"].producers == ["a", "b"]
    # the group's score sums its producers' output scores: a gets s + |Wb|^T s, b gets s
    data = torch.randn(20, 3)
    got = nisp_scores(m, g, data)["a"]
    frl = torch.from_numpy(inf_fs(responses(m, "fc", data)))
    torch.testing.assert_close(got, frl + wb.T @ frl + frl)


def test_bn_pool_and_cat_rules():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = (2, 4, 4)
            self.bn = nn.BatchNorm2d(2)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            y = self.pool(self.bn(x))
            return self.fc(torch.flatten(torch.cat([y, torch.relu(y)], 1), 1))

    m = Net().eval()
    m.bn.weight.data = torch.tensor([2.0, -1.0])
    m.bn.running_var.data = torch.tensor([3.0, 0.25])
    g = build_graph(m)
    s = torch.arange(1.0, 17.0, dtype=torch.float64)
    scores = propagate(g, final_response_node(g)[1], s)
    pooled = (s[:8] + s[8:]).reshape(2, 2, 2)  # cat splits; both halves read the same pooled map
    torch.testing.assert_close(scores["pool"][0], pooled)
    spread = pooled.repeat_interleave(2, 1).repeat_interleave(2, 2) / 4  # max pool: uniform over each window
    torch.testing.assert_close(scores["bn"][0], spread)
    scale = (torch.tensor([2.0, 1.0]) / torch.sqrt(torch.tensor([3.0, 0.25]) + 1e-5)).double()
    torch.testing.assert_close(scores[_input(g)][0], spread * scale.reshape(2, 1, 1))


def test_nisp_keeps_top_inf_fs_neurons_of_the_final_response_layer():
    bundle = cn.data.load("digits")
    torch.manual_seed(0)
    m = cn.models.create("lenet300", data=bundle, hidden=(12, 8))
    cfg = NISP(sparsity={"fc2": 0.5}, samples=200, finetune=None)
    p = cn.compress(m, cfg, data=bundle)
    assert (p.fc1.out_features, p.fc2.out_features, p.fc3.in_features) == (12, 4, 4)
    x = bundle.train.subset(200).x
    top = np.sort(np.argsort(-inf_fs(responses(m, "fc3", x)), kind="stable")[:4])
    assert torch.equal(p.fc2.weight, m.fc2.weight[top])
    torch.testing.assert_close(p.fc3.weight, m.fc3.weight[:, top])


def test_nisp_end_to_end_resnet_and_finetune():
    bundle = cn.data.load("digits")
    bundle.train = bundle.train.subset(300)
    torch.manual_seed(0)
    m = cn.models.create("resnet20", data=bundle)
    p = cn.compress(m, NISP(sparsity=0.5, samples=100, finetune=FineTune(epochs=1, batch_size=100)), data=bundle)
    assert p.conv1.out_channels == 8 and p.layer3[2].conv2.out_channels == 32 and p.fc.in_features == 32
    assert sum(q.numel() for q in p.parameters()) < 0.3 * sum(q.numel() for q in m.parameters())
    assert cn.train.evaluate(p, bundle)["accuracy"] > 0.0
    assert p.fc.out_features == 10


def test_nisp_config_errors():
    for bad in (1.0, -0.2):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            NISP(sparsity=bad)
    with pytest.raises(ConfigError):
        NISP(sparsity={"conv1": 1.2})
    with pytest.raises(ConfigError, match="alpha"):
        NISP(sparsity=0.3, alpha=2.0)
    cfg = from_dict({"method": "nisp", "sparsity": {"layer1.*": 0.3}, "finetune": None})
    assert isinstance(cfg, NISP) and cfg.sparsity == {"layer1.*": 0.3}
    bundle = cn.data.load("digits")
    m = cn.models.create("lenet5", data=bundle)
    with pytest.raises(ConfigError, match="needs data"):
        cn.compress(m, NISP(sparsity=0.3))
    with pytest.raises(ModelError, match="'convX'"):
        cn.compress(m, NISP(sparsity={"convX": 0.3}, finetune=None), data=bundle)
    with pytest.raises(ModelError, match="Linear"):
        g = build_graph(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 5, 5))
        final_response_node(g)
    assert copy.deepcopy(cfg) == cfg


def test_global_budget_allocates_channels_and_macs_itself():
    """scope="global": one threshold on mean-normalized scores; the removed share of channels / MACs hits the
    budget (within one round_to step), groups keep different fractions, and each keeps at least round_to."""
    from compactnn.prune.graph import build_graph
    from compactnn.prune.surgery import total_macs

    bundle = cn.data.load("digits")
    m = cn.models.create("resnet20", data=bundle, seed=0)
    g = build_graph(m, bundle.input_shape)
    sizes = {n: gr.size for n, gr in g.prunable().items()}
    p = cn.compress(m, NISP(sparsity=0.4, scope="global", samples=100, finetune=None), data=bundle)
    g2 = build_graph(p, bundle.input_shape)
    kept = {n: gr.size for n, gr in g2.prunable().items()}
    removed = 1 - sum(kept.values()) / sum(sizes.values())
    assert abs(removed - 0.4) <= 0.02
    fractions = {round(kept[n] / sizes[n], 3) for n in sizes if n in kept}
    assert len(fractions) > 1  # not a uniform ratio: the scores decide
    dense = total_macs(m, bundle.input_shape)
    q = cn.compress(m, NISP(sparsity=0.45, scope="global", budget="macs", round_to=8, samples=100, finetune=None),
                    data=bundle)
    assert abs(1 - total_macs(q, bundle.input_shape) / dense - 0.45) < 0.05
    widths = [c.out_channels for c in q.modules() if isinstance(c, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)
    with pytest.raises(ConfigError, match="per-layer sparsity mapping needs scope 'layer'"):
        NISP(sparsity={"conv1": 0.3}, scope="global")
