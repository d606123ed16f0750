"""Weight product quantization (`product-quantize`): codes and codebooks, dense equivalence, fine-tuning, packing."""

import dataclasses

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ConfigError
from compactnn.pq import PQConv2d, PQLinear, ProductQuantize
from compactnn.pq.weights import block_for, quantize_rows


@pytest.fixture(scope="module")
def tiny():
    full = cn.data.load("digits")
    return dataclasses.replace(full, train=full.train.subset(256, seed=1), test=full.test.subset(128, seed=1))


def test_block_rule():
    assert block_for(784, 8) == 8 and block_for(100, 8) == 5 and block_for(25, 8) == 5 and block_for(7, 4) == 1


@pytest.mark.parametrize("codebook", ["layer", "subspace"])
def test_rows_built_from_few_subvectors_are_lossless(codebook):
    gen = torch.Generator().manual_seed(0)
    words = torch.randn(4, 3, generator=gen)
    w = words[torch.randint(4, (20, 6), generator=gen)].reshape(20, 18)  # 20 rows of 6 sub-vectors of 3
    codes, books = quantize_rows(w, 3, 2, codebook, iterations=30)
    assert codes.shape == (20, 6) and books.shape == ((1, 4, 3) if codebook == "layer" else (6, 4, 3))
    if codebook == "layer":
        rec = books[0][codes].reshape(20, 18)
    else:
        rec = torch.stack([books[j][codes[:, j]] for j in range(6)], 1).reshape(20, 18)
    assert torch.allclose(rec, w, atol=1e-6)


def test_codes_are_nearest_codewords():
    w = torch.randn(30, 16, generator=torch.Generator().manual_seed(1))
    codes, books = quantize_rows(w, 4, 3, "layer", iterations=10)
    subs = w.reshape(-1, 4)
    d = torch.cdist(subs.double(), books[0].double())
    assert torch.equal(d.argmin(1), codes.reshape(-1))


def test_compress_equals_dense_with_decoded_weights(tiny):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    small = cn.compress(model, ProductQuantize(block=4, bits=4, finetune=None, fp16_codebook=False))
    layers = [m for m in small.modules() if isinstance(m, PQLinear)]
    assert len(layers) == 3 and all(layer.codes.dtype == torch.uint8 for layer in layers)
    dense = model
    x = tiny.test.x[:8]
    for (name, m), layer in zip([(n, m) for n, m in dense.named_modules() if isinstance(m, nn.Linear)], layers):
        w = layer.weight()
        assert w.shape == m.weight.shape
        assert int(layer.codes.max()) < 16 and layer.codebook.shape == (1, 16, 4)
        rel = float((w - m.weight).detach().norm() / m.weight.detach().norm())
        assert rel < 0.6, name  # 16 codewords of 4 numbers: a rough but real approximation
    copy = cn.models.create("lenet300", data=tiny, seed=0)
    with torch.no_grad():
        for m, layer in zip([m for m in copy.modules() if isinstance(m, nn.Linear)], layers):
            m.weight.copy_(layer.weight())
    small.eval()
    copy.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), copy(x), atol=1e-5)


def test_finetune_trains_codewords_not_codes(tiny):
    model = cn.models.create("lenet300", data=tiny, seed=0)
    frozen = cn.compress(model, ProductQuantize(block=4, bits=4, finetune=None, fp16_codebook=False))
    tuned = cn.compress(model, ProductQuantize(block=4, bits=4, finetune={"epochs": 1, "lr": 0.05},
                                               fp16_codebook=True), data=tiny)
    for a, b in zip([m for m in frozen.modules() if isinstance(m, PQLinear)],
                    [m for m in tuned.modules() if isinstance(m, PQLinear)]):
        assert torch.equal(a.codes, b.codes)
        assert not torch.equal(a.codebook, b.codebook)
        assert torch.equal(b.codebook, b.codebook.half().float())  # fp16 values


def test_conv_layers_and_pack(tiny, tmp_path):
    model = cn.models.create("lenet5", data=tiny, seed=0)
    small = cn.compress(model, ProductQuantize(block=8, bits=3, finetune=None))
    convs = [m for m in small.modules() if isinstance(m, PQConv2d)]
    assert convs
    conv = convs[0]
    x = torch.randn(2, conv.in_channels, 12, 12)
    ref = nn.functional.conv2d(x, conv.weight(), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(conv(x), ref)
    assert conv.block == block_for(conv.weight_shape[1] * conv.weight_shape[2] * conv.weight_shape[3], 8)
    cn.pack.save(small, tmp_path / "s.cnz")
    back = cn.pack.load(tmp_path / "s.cnz")
    small.eval()
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(tiny.test.x[:4]), small(tiny.test.x[:4]))
    dense_bytes = cn.pack.packed_size(model)
    assert cn.pack.packed_size(small) < dense_bytes / 4


def test_config_errors():
    with pytest.raises(ConfigError, match="bits"):
        ProductQuantize(bits=9)
    with pytest.raises(ConfigError, match="codebook"):
        cn.api.from_dict({"method": "product-quantize", "codebook": "global"})
    cfg = cn.api.from_dict({"method": "product-quantize", "block": {"fc1": 8, "*": 4}, "bits": 6})
    assert cfg.block["fc1"] == 8
