"""Polino et al.: bucketed uniform quantization against NumPy, unbiased stochastic rounding, the quantized-
distillation step (gradient taken at the quantized weights, applied to the float ones), differentiable quantization
moving only the points, and the packed size at the real bit width."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn as cn
from compactnn.config import FineTune
from compactnn.distill import DifferentiableQuantize, QuantizedDistill, QuantizedLayer, decode, encode, quantize
from compactnn.distill.polino import buckets, quantile_points, scales


def numpy_quantize(w: np.ndarray, bits: int, bucket_size, scaling: str) -> np.ndarray:
    """Reference: bucket by bucket, as the paper describes (no padding tricks)."""
    flat = w.reshape(-1).astype(np.float64)
    size = len(flat) if bucket_size is None else bucket_size
    s = 2**bits - 1
    out = np.empty_like(flat)
    for start in range(0, len(flat), size):
        b = flat[start:start + size]
        if scaling == "linear":
            beta, alpha = b.min(), b.max() - b.min()
        else:
            m = np.abs(b).max()
            beta, alpha = -m, 2 * m
        sc = (b - beta) / alpha if alpha > 0 else np.zeros_like(b)
        out[start:start + size] = alpha * np.round(np.clip(sc, 0, 1) * s) / s + beta
    return out.reshape(w.shape)


@pytest.mark.parametrize("bucket_size", [None, 7, 256])
@pytest.mark.parametrize("scaling", ["linear", "absmax"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_bucketed_uniform_quantization_matches_numpy(bits, scaling, bucket_size):
    g = torch.Generator().manual_seed(bits * 10 + (bucket_size or 0))
    w = torch.randn(13, 50, generator=g, dtype=torch.float64) * 0.1
    got = quantize(w, bits, bucket_size, scaling)
    ref = numpy_quantize(w.numpy(), bits, bucket_size, scaling)
    assert np.allclose(got.numpy(), ref, rtol=0, atol=1e-12)
    size = w.numel() if bucket_size is None else bucket_size
    for start in range(0, w.numel(), size):  # at most 2^bits values per bucket
        assert len(np.unique(got.reshape(-1)[start:start + size].numpy())) <= 2**bits
    codes, alpha, beta = encode(w, bits, bucket_size, scaling)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1 and alpha.numel() == math.ceil(w.numel() / size)
    assert torch.equal(decode(codes, alpha, beta, bits, bucket_size), got)


def test_linear_scaling_keeps_each_bucket_min_and_max_and_constant_buckets():
    w = torch.cat([torch.full((256,), 0.3), torch.linspace(-1, 2, 256)])
    q = quantize(w, 2, 256, "linear")
    assert torch.all(q[:256] == 0.3)  # alpha = 0: the constant bucket decodes to itself
    assert q[256:].min() == -1 and q[256:].max() == 2
    assert torch.allclose(torch.unique(q[256:]), torch.tensor([-1.0, 0.0, 1.0, 2.0]))


def test_stochastic_rounding_is_unbiased_and_only_rounds_to_neighbours():
    w = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.91, 1.0, -0.2, 0.66])  # one bucket: min -0.2, max 1
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([quantize(w, 2, None, "linear", stochastic=True, generator=g) for _ in range(4000)])
    step = 1.2 / 3
    lo = -0.2 + torch.floor((w + 0.2) / step) * step
    assert torch.all((draws - lo[None]).abs().lt(1e-6) | (draws - lo[None] - step).abs().lt(1e-6))
    assert torch.allclose(draws.mean(0), w, atol=0.015)  # E[Q(w)] = w (deterministic rounding is biased here)
    assert (quantize(w, 2, None, "linear") - w).abs().max() > 0.05


@pytest.fixture(scope="module")
def small(digits):
    return dataclasses.replace(digits, train=digits.train.subset(200, seed=3), test=digits.test.subset(100, seed=3))


def test_quantized_distillation_step_applies_the_gradient_taken_at_the_quantized_weights(small):
    model = cn.models.create("lenet300", data=small, seed=0)
    lr, bits = 0.5, 2
    data = dataclasses.replace(small, train=small.train.subset(64, seed=0))
    one_step = FineTune(epochs=1, lr=lr, optimizer="sgd", momentum=0.0, weight_decay=0.0, batch_size=64,
                        schedule="constant")
    out = cn.compress(model, QuantizedDistill(bits=bits, finetune=one_step), data=data)
    # by hand: quantize the weights, gradient of the cross-entropy there, step the float weights
    ref = cn.models.create("lenet300", data=small, seed=0)
    float_w = {n: m.weight.detach().clone() for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    quant = cn.models.create("lenet300", data=small, seed=0)
    with torch.no_grad():
        for n, m in quant.named_modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(quantize(m.weight, bits, 256, "linear"))
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))  # fit's epoch-0 shuffle (seed 0)
    F.cross_entropy(quant(data.train.x[order]), data.train.y[order]).backward()
    F.cross_entropy(ref(data.train.x[order]), data.train.y[order]).backward()
    differs = 0
    for n, m in quant.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        expected = encode(float_w[n] - lr * m.weight.grad, bits, 256)[0]
        assert torch.equal(out.get_submodule(n).codes.long(), expected), n
        at_float = encode(float_w[n] - lr * ref.get_submodule(n).weight.grad, bits, 256)[0]
        differs += int((at_float != expected).sum())
        assert torch.equal(out.get_submodule(n).layer.bias, m.bias - lr * m.bias.grad)
    assert differs > 0  # the gradient at the float weights would have given other codes


def test_quantized_distill_uses_the_teacher_and_packs_at_its_bit_width(small, tmp_path):
    teacher = cn.models.create("lenet300", data=small, seed=9)
    cn.train.fit(teacher, small, epochs=3, lr=0.1, quiet=True)
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    model = cn.models.create("lenet300", data=small, seed=0)
    cn.train.fit(model, small, epochs=3, lr=0.1, quiet=True)
    out = cn.compress(model, QuantizedDistill(bits=2, teacher=teacher, finetune={"epochs": 2}), data=small)
    assert sum(seen) == len(small.train)  # cached over the 2 epochs
    assert all(isinstance(out.get_submodule(n), QuantizedLayer) for n in ("fc1", "fc2", "fc3"))
    path, dense = tmp_path / "q.cnz", tmp_path / "f.cnz"
    cn.pack.save(out, path)
    cn.pack.save(model, dense)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    scales_bytes = sum(8 * math.ceil(m.weight.numel() / 256) for m in model.modules() if isinstance(m, nn.Linear))
    biases = sum(4 * m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert path.stat().st_size < weights * 2 / 8 + scales_bytes + biases + 3000  # 2 bits a weight + scales
    assert path.stat().st_size < dense.stat().st_size / 8
    back = cn.pack.load(path)
    x = small.test.x[:16]
    with torch.no_grad():
        assert torch.equal(back.eval()(x), out.eval()(x))
    assert cn.train.evaluate(back, small)["accuracy"] > 0.2


def test_differentiable_quantization_moves_only_the_points(small):
    model = cn.models.create("lenet5", data=small, seed=0)
    cn.train.fit(model, small, epochs=15, lr=0.05, batch_size=32, quiet=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DifferentiableQuantize(bits=2, bucket_size=64, exclude=("conv1",),
                                 finetune={"epochs": 3, "lr": 1e-2, "optimizer": "adam"})
    out = cn.compress(model, cfg, data=small)
    quantized = [n for n, m in out.named_modules() if isinstance(m, QuantizedLayer)]
    assert quantized == ["conv2", "fc1", "fc2"]
    moved = 0
    for name in quantized:
        q = out.get_submodule(name)
        w = before[f"{name}.weight"]
        rows, _ = buckets(w, 64)
        alpha, beta = scales(rows, "linear")
        assert torch.equal(q.alpha, alpha) and torch.equal(q.beta, beta)  # the weights did not move
        assert torch.equal(q.layer.bias, before[f"{name}.bias"])
        init = quantile_points(w, 2, 64)
        moved += int((q.points - init).abs().gt(1e-6).sum())
        assert q.points.shape == (4,) and torch.all(q.points[1:] >= q.points[:-1])
    assert moved > 0
    for k, v in out.state_dict().items():  # everything else as it was (BatchNorm-free LeNet-5: no statistics)
        if k in before and not any(k.startswith(n + ".") for n in quantized):
            assert torch.equal(v, before[k]), k
    untrained = cn.compress(model, dataclasses.replace(cfg, finetune=None))  # points left at the quantiles
    assert cn.train.evaluate(out, small.train)["loss"] < cn.train.evaluate(untrained, small.train)["loss"]


def test_per_bucket_points_and_untrained_quantiles(small):
    model = cn.models.create("lenet300", data=small, seed=0)
    out = cn.compress(model, DifferentiableQuantize(bits=2, bucket_size=128, points="bucket", finetune=None))
    q = out.fc1
    assert q.points.shape == (math.ceil(64 * 300 / 128), 4)
    w = model.fc1.weight.detach()
    # untrained: every weight at its nearest quantile point of its own bucket
    rows, n = buckets(w, 128)
    alpha, beta = scales(rows, "linear")
    sc = (rows - beta[:, None]) / alpha[:, None]
    pts = torch.quantile(sc, torch.linspace(0, 1, 4), dim=1).T
    idx = (sc[:, :, None] - pts[:, None, :]).abs().argmin(-1)
    expected = (alpha[:, None] * torch.gather(pts, 1, idx) + beta[:, None]).reshape(-1)[:n].reshape(w.shape)
    assert torch.allclose(q.weight, expected, atol=1e-6)
