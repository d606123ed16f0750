"""The inference form of factorized models: same function, TorchScript, ONNX Runtime equal to torch, plans named."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.decompose import TRConv2d, TRLinear, TuckerConv2d, inference_form, plans
from compactnn.decompose.inference import FROZEN, FrozenConv, FrozenConv2d, FrozenDenseLinear, FrozenLinear
from compactnn.errors import ModelError


class Small(nn.Module):
    """A LeNet-like model with a TR conv, a Tucker conv and a TR linear layer."""

    input_shape = (2, 10, 10)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = TRConv2d((2,), (2, 3), 3, 2, padding=1)
        self.conv2 = TuckerConv2d(6, 8, 3, (3, 2), stride=2, padding=1)
        self.fc = TRLinear((4, 5, 2, 4), (2, 5), 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1)[:, :160])


def _model():
    torch.manual_seed(0)
    m = Small().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("mode", [None, "dense", "merged"])
def test_inference_form_computes_the_same_function(batch_size, mode):
    m = _model()
    f = inference_form(m, batch_size=batch_size, mode=mode)
    got = plans(f)
    assert set(got) == {"conv1", "conv2", "fc"}
    assert all(isinstance(getattr(f, n), FROZEN) for n in ("conv1", "conv2", "fc"))
    for name, plan in got.items():  # a dense plan is the plain torch layer; the others are graphs of their steps
        assert isinstance(getattr(f, name), (FrozenDenseLinear, FrozenConv2d)) == (plan == "dense")
    assert isinstance(f.fc, (FrozenLinear, FrozenDenseLinear)) and isinstance(f.conv1, (FrozenConv, FrozenConv2d))
    if mode is not None:
        assert set(got.values()) == {mode}
    x = torch.randn(5, *Small.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in f.parameters())
    assert isinstance(m.fc, TRLinear)  # the original is untouched


def test_torchscript_and_onnx_runtime_match_torch():
    ort = pytest.importorskip("onnxruntime")
    m = _model()
    x = torch.randn(3, *Small.input_shape)
    for mode in ("merged", "dense", None):
        f = inference_form(m, batch_size=8, mode=mode)
        with torch.no_grad():
            ref = f(x)
            scripted = torch.jit.script(f)
            torch.testing.assert_close(scripted(x), ref, rtol=1e-6, atol=1e-6)
            buf = io.BytesIO()
            torch.onnx.export(f, (x,), buf, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}},
                              dynamo=False)
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        for b in (3, 7):  # the batch axis is dynamic
            xb = torch.randn(b, *Small.input_shape)
            with torch.no_grad():
                want = f(xb)
            got = torch.from_numpy(sess.run(None, {"x": xb.numpy()})[0])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_factorized_linear_plan_exports_too():
    ort = pytest.importorskip("onnxruntime")
    from compactnn.decompose.inference import freeze_linear

    torch.manual_seed(1)
    layer = TRLinear((4, 5, 2), (3, 4), 3)
    frozen = freeze_linear(layer, 4, "factorized")
    assert frozen.plan == "factorized"
    x = torch.randn(4, 40)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), torch.nn.functional.linear(x, layer.full_weight(), layer.bias))
        torch.testing.assert_close(torch.jit.script(frozen)(x), frozen(x))
        buf = io.BytesIO()
        torch.onnx.export(frozen, (x,), buf, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), frozen(x), rtol=1e-5,
                               atol=1e-6)


def test_clip_model_inference_form():
    torch.manual_seed(2)
    m = cn.models.create("clip-bt-lstm", input_shape=(4, 8, 8), hidden=16, ranks=2).eval()
    tt = cn.models.create("clip-tt-lstm", input_shape=(4, 8, 8), hidden=16).eval()
    x = torch.randn(3, 4, 8, 8)
    for model in (m, tt):
        f = inference_form(model, batch_size=2)
        assert set(plans(f)) == {"rnn.ih"}
        with torch.no_grad():
            torch.testing.assert_close(f(x), model(x), rtol=1e-5, atol=1e-6)


def test_inference_form_errors():
    with pytest.raises(ModelError, match="input_shape"):
        inference_form(nn.Sequential(TRLinear((2, 2), (2,), 1)))
    with pytest.raises(ModelError, match="expects 4 features"):  # the layer's own one-line error
        inference_form(nn.Sequential(TRLinear((2, 2), (2,), 1)), input_shape=(5,))
    with pytest.raises(ModelError, match="dry run"):
        inference_form(nn.Sequential(nn.Linear(3, 2), TRLinear((2, 2), (2,), 1)), input_shape=(5,))
    with pytest.raises(ModelError, match="batch_size"):
        inference_form(_model(), batch_size=0)


@pytest.mark.slow
def test_torch_compile():
    m = _model()
    f = inference_form(m, batch_size=4)
    compiled = torch.compile(f, dynamic=False)
    x = torch.randn(4, *Small.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "merged"])
def test_inference_form_packs_and_loads(tmp_path, mode):
    m = _model()
    f = inference_form(m, batch_size=4, mode=mode)
    path = tmp_path / "frozen.cnz"
    cn.pack.save(f, path)
    # a user's model class is not on the allow-list, and a merged plan's graph is code, never rebuilt from a file:
    # both load into a skeleton made the same way (its tensors are replaced by the file's)
    torch.manual_seed(5)
    skeleton = inference_form(Small().eval(), batch_size=4, mode=mode)
    back = cn.pack.load(path, model=skeleton)
    assert plans(back) == plans(f)
    x = torch.randn(2, *Small.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(back(x), f(x))
