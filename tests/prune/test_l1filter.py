"""L1-norm filter pruning: smallest-norm filters go, residual groups sum norms, FLOPs matching, errors."""

import copy

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.config import FineTune
from compactnn.errors import ConfigError, ModelError
from compactnn.prune.graph import build_graph
from compactnn.prune.l1filter import L1Filter
from compactnn.prune.nisp import NISP
from compactnn.prune.structured import l1_importance
from compactnn.prune.surgery import total_macs


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (2, 5, 5)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.fc = nn.Linear(27, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(torch.relu(self.bn(self.conv1(x)))), 1))


def test_smallest_l1_filters_are_removed_and_weights_copied():
    torch.manual_seed(0)
    m = Small()
    with torch.no_grad():
        m.conv1.weight.copy_(torch.ones_like(m.conv1.weight) * torch.tensor([0.3, -2.0, 0.1, 1.0]).view(4, 1, 1, 1))
        m.conv2.weight[1] *= 100  # filter 1 of conv2 has the largest norm
    ref = copy.deepcopy(m)
    p = cn.compress(m, L1Filter(sparsity={"conv1": 0.5, "conv2": 0.6}, finetune=None), inplace=True)
    assert p.conv1.out_channels == 2 and p.bn.num_features == 2 and p.conv2.in_channels == 2
    assert torch.equal(p.conv1.weight, ref.conv1.weight[[1, 3]])  # |-2| and |1| are the largest
    assert torch.equal(p.bn.running_mean, ref.bn.running_mean[[1, 3]])
    assert p.conv2.out_channels == 1 and torch.equal(p.conv2.weight, ref.conv2.weight[[1]][:, [1, 3]])
    assert p.fc.in_features == 9 and torch.equal(p.fc.weight, ref.fc.weight[:, 9:18])


def test_residual_group_sums_member_norms():
    torch.manual_seed(0)
    m = cn.models.create("resnet20", input_shape=(1, 8, 8))
    g = build_graph(m)
    norms = l1_importance(m, g)
    grp = g.groups["layer2.0.conv2"]
    want = sum(m.get_submodule(p).weight.detach().abs().flatten(1).sum(1).double() for p in grp.producers)
    torch.testing.assert_close(norms["layer2.0.conv2"], want)
    assert set(norms) == set(g.prunable())


def test_macs_budget_matches_nisp_flops():
    bundle = cn.data.load("digits")
    m = cn.models.create("resnet20", data=bundle, seed=0)
    nisp = cn.compress(m, NISP(sparsity=0.3, samples=100, finetune=None), data=bundle)
    target = total_macs(nisp, bundle.input_shape)
    removed = 1 - target / total_macs(m, bundle.input_shape)
    l1 = cn.compress(m, L1Filter(sparsity=removed, budget="macs", finetune=None), data=bundle)
    assert total_macs(l1, bundle.input_shape) == target
    assert 0.4 < removed < 0.6


def test_compress_with_finetune_and_errors():
    bundle = cn.data.load("digits")
    bundle.train = bundle.train.subset(200)
    torch.manual_seed(0)
    m = cn.models.create("lenet5", data=bundle)
    p = cn.compress(m, L1Filter(sparsity=0.5, finetune=FineTune(epochs=1, batch_size=100)), data=bundle)
    assert (p.conv1.out_channels, p.conv2.out_channels, p.fc1.out_features, p.fc2.out_features) == (10, 25, 250, 10)
    assert 0.0 <= cn.train.evaluate(p, bundle)["accuracy"] <= 1.0
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        L1Filter(sparsity=1.0)
    with pytest.raises(ConfigError, match="renamed: use sparsity"):
        L1Filter(ratio=0.5)
    with pytest.raises(ConfigError, match="needs data"):
        cn.compress(m, L1Filter(sparsity=0.5))
    with pytest.raises(ModelError, match="'conv9'"):
        cn.compress(m, L1Filter(sparsity={"conv9": 0.5}, finetune=None))
    q = cn.compress(m, L1Filter(sparsity={"conv2": 0.2}, finetune=None))  # input_shape from the model
    assert q.conv2.out_channels == 40 and q.conv1.out_channels == 20
