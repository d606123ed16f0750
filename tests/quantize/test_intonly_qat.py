"""QAT preparation: graph matching, BN folding equivalence (batch and running statistics), freezing, training."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn as cn
from compactnn.errors import ModelError
from compactnn.quantize.intonly.fakequant import ActQuant
from compactnn.quantize.intonly.qat import QAdd, QCat, QConv2d, QLinear, QuantInput, prepare, set_fake_quant


def _types(gm):
    return [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]


def test_prepare_lenet5_and_resnet20():
    gm = prepare(cn.models.create("lenet5", input_shape=(1, 8, 8)))
    assert _types(gm) == ["QuantInput", "QConv2d", "MaxPool2d", "QConv2d", "MaxPool2d", "Flatten", "QLinear",
                          "QLinear"]
    assert gm.fc1.activation == "relu" and gm.fc2.activation == "none"
    r = prepare(cn.models.create("resnet20", input_shape=(1, 8, 8), widths=(4, 8, 8)))
    types = _types(r)
    assert types.count("QConv2d") == 21 and types.count("QAdd") == 9 and "BatchNorm2d" not in types
    assert "ReLU" not in types
    assert r.conv1.bn is not None and r.conv1.activation == "relu"
    assert r.get_submodule("layer1.0.add").activation == "relu" and r.get_submodule("layer1.0.conv2").activation == "none"
    assert isinstance(r.get_submodule("layer2.0.shortcut.0"), QConv2d) and r.get_submodule("layer2.0.shortcut.0").bn is not None


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x):
        y = F.relu6(self.a(x))
        z = torch.relu(self.b(x) + y)
        c = torch.cat([y, z], dim=1)
        c = F.max_pool2d(c, 2)
        return self.fc(c.view(c.size(0), -1))


def test_prepare_functional_ops():
    gm = prepare(Functional())
    mods = {type(m).__name__ for m in gm.modules()}
    assert {"QConv2d", "QAdd", "QCat", "QLinear", "QuantInput"} <= mods
    assert gm.a.activation == "relu6" and gm.b.activation == "none" and gm.add_0.activation == "relu"
    x = torch.randn(3, 2, 4, 4)
    gm.eval()
    set_fake_quant(gm, False, weights=False)
    assert torch.allclose(gm(x), _sync(gm)(x), atol=1e-6)


def _sync(gm):
    """A float Functional sharing gm's parameters."""
    f = Functional()
    f.a, f.b, f.fc = gm.a.conv, gm.b.conv, gm.fc.linear
    return f


def _conv_bn(seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


def test_bn_fold_equivalence_eval():
    conv, bn = _conv_bn()
    ref = nn.Sequential(conv, bn, nn.ReLU()).eval()
    q = QConv2d(conv, bn, "relu").eval()
    set_fake_quant(q, False, weights=False)
    x = torch.randn(4, 3, 6, 6)
    assert torch.allclose(q(x), ref(x), atol=1e-5)


def test_bn_fold_uses_batch_stats_then_running_stats():
    conv, bn = _conv_bn(1)
    conv2, bn2 = _conv_bn(1)  # identical copies for the float reference
    q = QConv2d(conv, bn, "none", freeze_bn_after=2).train()
    set_fake_quant(q, False, weights=False)
    ref = nn.Sequential(conv2, bn2).train()
    x = torch.randn(8, 3, 5, 5)
    for _ in range(2):  # batch statistics, running statistics updated exactly as BatchNorm2d does
        assert torch.allclose(q(x), ref(x), atol=1e-5)
        assert torch.allclose(bn.running_mean, bn2.running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var, bn2.running_var, atol=1e-6)
    assert q.bn_frozen
    ref.eval()
    before = bn.running_mean.clone()
    assert torch.allclose(q(x), ref(x), atol=1e-5)  # frozen: running statistics even in training mode
    assert torch.equal(bn.running_mean, before)


def test_folded_weights_are_fake_quantized_per_channel():
    conv, bn = _conv_bn(2)
    q = QConv2d(conv, bn, "none", per_channel=True).eval()
    q.out_quant.enabled = False
    w, b = q.folded()
    x = torch.randn(2, 3, 4, 4)
    s = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    wq = torch.clamp(torch.sign(w / s) * torch.floor((w / s).abs() + 0.5), -127, 127) * s
    assert torch.allclose(q(x), F.conv2d(x, wq, b, padding=1), atol=1e-5)


def test_unsupported_layer_is_named():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.Softmax(dim=1)

        def forward(self, x):
            return self.act(self.conv(x))

    with pytest.raises(ModelError, match=r"'act' of type Softmax"):
        prepare(Bad())

    class Lonely(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2)
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(self.pool(x))

    with pytest.raises(ModelError, match="'bn' of type BatchNorm2d does not follow a Conv2d"):
        prepare(Lonely())


def test_prepared_model_trains_with_fit():
    data = cn.data.load("digits")
    small = dataclasses.replace(data, train=data.train.subset(256), test=data.test.subset(128))
    torch.manual_seed(0)
    model = cn.models.create("resnet20", data=small, widths=(4, 4, 8))
    gm = prepare(model, act_delay=3, freeze_bn_after=6)
    w0 = gm.conv1.conv.weight.detach().clone()
    cn.train.fit(gm, small, epochs=1, lr=0.05, batch_size=32, max_steps=8, quiet=True)
    assert not torch.equal(w0, gm.conv1.conv.weight)
    assert gm.conv1.bn_frozen and int(gm.conv1.steps) == 8
    obs = [m for m in gm.modules() if isinstance(m, ActQuant)]
    assert all(m.observed and int(m.steps) == 8 for m in obs)
    assert isinstance(gm.input_quant, QuantInput) and gm.input_quant.min_val < 0 < gm.input_quant.max_val
    acc = cn.train.evaluate(gm, small)["accuracy"]
    assert 0.0 <= acc <= 1.0
    assert isinstance(gm.fc, QLinear) and isinstance(gm.get_submodule("layer1.0.add"), QAdd)
    assert QCat  # exported


def test_prepare_uses_the_shared_tracer_and_its_markers():
    """The Add and Concat markers of compactnn.graph stay leaves of the one shared tracer and become QAdd / QCat
    under their own names; the converted model is bit-exact between engines."""
    from compactnn.graph import Add, Concat
    from compactnn.quantize.intonly.calibrate import calibrate
    from compactnn.quantize.intonly.convert import convert

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)
            self.join, self.cat = Add(), Concat(1)
            self.fc = nn.Linear(6 * 16, 4)

        def forward(self, x):
            y = self.a(x)
            z = self.cat(self.join(y, self.b(x)), y)
            return self.fc(z.flatten(1))

    torch.manual_seed(0)
    gm = prepare(Net())
    assert isinstance(gm.get_submodule("join"), QAdd) and isinstance(gm.get_submodule("cat"), QCat)
    x = torch.randn(32, 2, 4, 4)
    calibrate(gm, [x])
    im = convert(gm, (2, 4, 4))
    assert [op.kind for op in im.ops] == ["conv2d", "conv2d", "add", "concat", "flatten", "linear"]
    assert [op.name for op in im.ops][2:4] == ["join", "cat"]
    q = im.quantize_input(x)
    assert torch.equal(im.run_int(q, "fast"), im.run_int(q, "reference"))
