"""nn.ConvTranspose2d(+BatchNorm2d)(+ReLU) through the generic integer-only converter (decoders, PAD-Net):
BN folded along the weight's output axis, per-channel int8 weights, PyTorch's padding/output_padding as the op's
crop, bit-exact engines, errors for what the op cannot hold."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import compactnn as cn
from compactnn import pack
from compactnn.errors import ModelError
from compactnn.quantize.intonly.method import IntegerOnly
from compactnn.quantize.intonly.qat import QConvTranspose2d


class Decoder(nn.Module):
    def __init__(self, **up):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 3, 2, 1, output_padding=1, **up), nn.BatchNorm2d(6),
                                nn.ReLU())
        self.out = nn.ConvTranspose2d(6, 3, 4, 2, 1)

    def forward(self, x):
        return self.out(self.up(self.enc(x)))


def _model(**up):
    torch.manual_seed(0)
    m = Decoder(**up).eval()
    with torch.no_grad():
        bn = m.up[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    return m


def _data(n=64):
    x = torch.rand(n, 1, 8, 8)
    return x, TensorDataset(x, torch.zeros(n, dtype=torch.long))


def test_folded_transposed_conv_equals_conv_transpose_then_bn_in_float64():
    m = _model().double()
    q = QConvTranspose2d(m.up[0], m.up[1], "relu").double().eval()
    w, b = q.folded()
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    ref = torch.relu(m.up[1](m.up[0](x)))
    got = torch.relu(torch.nn.functional.conv_transpose2d(x, w, b, 2, 1, 1))
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    assert w.shape == m.up[0].weight.shape  # (C_in, C_out, kh, kw): the BN factor ran along axis 1


def test_converts_within_one_code_of_float_and_engines_agree(tmp_path):
    m = _model()
    x, data = _data()
    q = cn.compress(m, IntegerOnly(mode="calibrate"), data=data)
    kinds = [op.kind for op in q.ops]
    assert kinds == ["conv2d", "conv_transpose2d", "conv_transpose2d"]
    up = q.ops[1]
    assert up.padding == (1, 1) and up.padding_end == (0, 0) and up.activation == "relu"
    assert tuple(q.get_buffer(up.multiplier).shape) == (6,)  # per output channel
    with torch.no_grad():
        yf, yq = m(x), q(x)
    assert yq.shape == yf.shape == (64, 3, 16, 16)
    assert float((yf - yq).abs().max()) <= 2 * q.output["scale"]
    codes = q.quantize_input(x)
    assert torch.equal(q.run_int(codes, "reference"), q.run_int(codes, "fast"))
    path = tmp_path / "d.cnz"
    pack.save(q, path)
    with torch.no_grad():
        assert torch.equal(pack.load(path)(x), yq)


@pytest.mark.parametrize("kind", ["off", "vnni", "avx2", "generic"])
def test_native_paths_are_bit_exact(kind, monkeypatch):
    from compactnn.quantize.intonly import native

    if kind in ("vnni", "avx2") and not native._cpu_has({"vnni": "avx512_vnni", "avx2": "avx2"}[kind]):
        pytest.skip(f"no {kind} on this CPU")
    m = _model()
    x, data = _data(16)
    q = cn.compress(m, IntegerOnly(mode="calibrate"), data=data)
    monkeypatch.setenv("COMPACTNN_NATIVE", kind)
    q.invalidate()
    if kind != "off" and q.fast_engine().native is None:
        pytest.skip(f"native kernels ({kind}) do not build here: {native.status()}")
    codes = q.quantize_input(x)
    a, b = q.run_values(codes, "reference"), q.run_values(codes, "fast")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_qat_trains_through_the_transposed_conv():
    m = _model().train()
    x, _ = _data(32)
    data = TensorDataset(x, torch.zeros(32, dtype=torch.long))
    cfg = IntegerOnly(mode="qat", finetune=cn.config.FineTune(epochs=1, batch_size=16, optimizer="sgd", lr=0.01,
                                                                loss=lambda model, x, y: model(x).pow(2).mean()))
    q = cn.compress(m, cfg, data=data)
    assert [op.kind for op in q.ops].count("conv_transpose2d") == 2
    assert np.isfinite(q.output["scale"])


@pytest.mark.parametrize("up,match", [({"groups": 2}, "groups=2"), ({"dilation": 2}, "dilation"),
                                      ({"padding": 0}, "output_padding")])
def test_unsupported_transposed_convs_are_one_line(up, match):
    kwargs = dict(up)
    m = Decoder.__new__(Decoder)
    nn.Module.__init__(m)
    m.enc = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
    pad = kwargs.pop("padding", 1)
    m.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 3, 2, pad, output_padding=1, **kwargs), nn.ReLU())
    m.out = nn.ConvTranspose2d(6, 3, 4, 2, 1)
    _, data = _data(8)
    with pytest.raises(ModelError, match=match) as err:
        cn.compress(m.eval(), IntegerOnly(mode="calibrate"), data=data)
    assert "\n" not in str(err.value)
    mixed = cn.compress(m.eval(), IntegerOnly(mode="calibrate", mixed=True), data=data)  # the rest still converts
    assert "up" in str(getattr(mixed, "compactnn_skipped", {}))
