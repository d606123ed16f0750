"""Dependency graph: channel groups, flatten mapping, residual and concat ties, clear errors on unsupported ops."""

import numpy as np
import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ModelError
from compactnn.prune.graph import build_graph


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(3, 5, 1)
        self.dw = nn.Conv2d(11, 11, 3, padding=1, groups=11)
        self.c = nn.Conv2d(11, 7, 3, stride=2)
        self.fc = nn.Linear(7 * 3 * 3, 4)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bn(self.a(x))), self.b(x)], 1)
        y = self.dw(y) + y
        return self.fc(torch.flatten(self.c(y), 1))


def test_lenet5_groups_and_flatten_mapping():
    g = build_graph(cn.models.create("lenet5", input_shape=(1, 8, 8)))
    assert {n: (gr.size, gr.pinned) for n, gr in g.groups.items()} == {
        "conv1": (20, False), "conv2": (50, False), "fc1": (500, False), "fc2": (10, True)}
    assert set(g.prunable()) == {"conv1", "conv2", "fc1"}
    # flatten after conv2 (50 x 2 x 2): feature f of fc1 is channel f // 4 of conv2
    fc1_in = g.root(g.layers["fc1"].in_ids)
    conv2_out = g.root(g.layers["conv2"].out_ids)
    assert len(fc1_in) == 200
    assert np.array_equal(fc1_in, np.repeat(conv2_out, 4))
    assert g.groups["conv2"].members == ["conv2", "fc1"]


def test_resnet20_residual_groups():
    g = build_graph(cn.models.create("resnet20", input_shape=(1, 8, 8)))
    prunable = g.prunable()
    assert len(prunable) == 12  # 9 inner block groups + 3 residual stage groups
    assert prunable["conv1"].producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    stage2 = prunable["layer2.0.conv2"]
    assert set(stage2.producers) == {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"}
    assert "layer2.0.bn2" in stage2.members and "layer2.0.shortcut.1" in stage2.members
    assert "layer3.0.conv1" in stage2.members  # consumer of the stage output
    # every member of an add shares the same 32 channels
    for p in stage2.producers:
        assert np.array_equal(g.root(g.layers[p].out_ids), stage2.roots)
    assert prunable["layer1.0.conv1"].members == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]
    assert g.groups["fc"].pinned


def test_concat_offsets_and_depthwise_coupling():
    g = build_graph(CatNet())
    assert set(g.prunable()) == {"a", "b", "c"}
    a, b = g.root(g.layers["a"].out_ids), g.root(g.layers["b"].out_ids)
    assert np.array_equal(g.root(g.layers["c"].in_ids), np.concatenate([a, b]))
    dw = g.layers["dw"]
    assert dw.kind == "depthwise" and np.array_equal(g.root(dw.out_ids), np.concatenate([a, b]))
    assert "dw" in g.groups["a"].members and "dw" in g.groups["b"].members
    assert g.groups["a"].members == ["a", "bn", "dw", "c"]


def test_group_sum_adds_producers_per_channel():
    g = build_graph(cn.models.create("resnet20", input_shape=(1, 8, 8)))
    grp = g.groups["conv1"]
    per_layer = {p: torch.arange(16.0) * (i + 1) for i, p in enumerate(grp.producers)}
    assert torch.equal(g.group_sum(grp, per_layer), torch.arange(16.0, dtype=torch.float64) * 10)


class Wrap(nn.Module):
    def __init__(self, body, shape=(3, 8, 8)):
        super().__init__()
        self.input_shape = shape
        self.body = body

    def forward(self, x):
        return self.body(x)


class Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (4, 5)
        self.rnn = nn.LSTM(5, 3, batch_first=True, proj_size=2)  # outputs are projections, not hidden units
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.roll(self.conv(x), 1, 1)


class OddView(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).view(x.size(0), 2, 16, 8)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


@pytest.mark.parametrize("model, words", [
    (Lstm(), ["LSTM", "proj_size"]),
    (Roll(), ["'roll'", "call_function"]),
    (OddView(), ["'view'", "reshape"]),
    (Wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(6))), ["LayerNorm"]),
])
def test_unsupported_ops_are_kept_whole_with_their_channels_pinned(model, words):
    graph = build_graph(model)
    reasons = " ".join(graph.kept_whole.values())
    assert "\n" not in reasons
    for w in words:
        assert w in reasons
    assert not graph.prunable()  # every channel reaching the op is pinned, so nothing around it changes


def test_a_linear_on_conv_maps_reads_features_along_the_last_dim():
    graph = build_graph(Wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(6, 2))))
    assert not graph.prunable()  # the conv's channels are not the Linear's features: both are kept as they are


@pytest.mark.parametrize("model, words", [
    (Wrap(nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 6, 3, groups=2))), ["groups=2", "Conv2d"]),
    (Branchy(), ["trace"]),
])
def test_what_cannot_be_kept_whole_raises_model_error_naming_it(model, words):
    with pytest.raises(ModelError) as err:
        build_graph(model)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_pruning_goes_on_around_an_op_kept_whole():
    class Rolled(nn.Module):  # torch.roll along the channels: an op the graph does not see through
        def __init__(self):
            super().__init__()
            self.input_shape = (3, 8, 8)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1 = nn.Conv2d(8, 4, 1)
            self.fc2 = nn.Conv2d(4, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = torch.roll(self.conv(x), 1, 1)
            return self.head(self.fc2(torch.relu(self.fc1(x))).mean((2, 3)))

    graph = build_graph(Rolled())
    assert set(graph.kept_whole) == {"roll"}
    assert graph.kept_whole["roll"].endswith("test_prune_graph.py:" + graph.kept_whole["roll"].split(":")[-2] +
                                             ": x = torch.roll(self.conv(x), 1, 1)")
    assert list(graph.prunable()) == ["fc1", "fc2"]  # conv's channels reach the roll: pinned


def test_missing_input_shape_is_model_error():
    with pytest.raises(ModelError, match="input_shape"):
        build_graph(nn.Sequential(nn.Linear(3, 2)))
    g = build_graph(nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)), input_shape=(3, 2, 2))
    assert set(g.prunable()) == {"1"}


def test_transformer_mlp_hidden_units_are_pruned_exactly():
    """A Linear on tokens x features (a ViT's MLP): its hidden units form a group; removing them equals zeroing
    them in the dense model (GELU(0) = 0)."""
    import copy

    from compactnn.prune import L1Filter

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = (5, 8)
            self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            x = x + self.fc2(self.act(self.fc1(x)))
            return self.head(x.mean(1))

    torch.manual_seed(0)
    model = Mlp()
    graph = build_graph(model)
    assert list(graph.prunable()) == ["fc1"] and graph.prunable()["fc1"].members == ["fc1", "fc2"]
    out = cn.compress(model, L1Filter(sparsity=0.5, finetune=None))
    assert (out.fc1.out_features, out.fc2.in_features) == (8, 8)
    kept = [i for i in range(16) if any(torch.equal(model.fc1.weight[i], r) for r in out.fc1.weight)]
    dense = copy.deepcopy(model)
    with torch.no_grad():
        drop = [i for i in range(16) if i not in kept]
        dense.fc1.weight[drop] = 0
        dense.fc1.bias[drop] = 0
    x = torch.randn(4, 5, 8)
    torch.testing.assert_close(out(x), dense(x), rtol=1e-5, atol=1e-6)
