"""Save -> load equivalence: outputs and state_dicts identical, skeleton loading, sizes as on disk."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from compactnn import pack
from compactnn.errors import PackError
from compactnn.pack import spec
from compactnn.pack.codecs import to_bits
from compactnn.pack.spec import packable


def same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        x, y = sa[k], sb[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        if x.is_quantized:
            assert torch.equal(x.int_repr(), y.int_repr()) and x.q_scale() == y.q_scale(), k
        else:
            assert np.array_equal(to_bits(x), to_bits(y)), k


def flat(out):
    """Tensors of a (possibly nested tuple) module output, in order."""
    return [t for o in out for t in flat(o)] if isinstance(out, tuple) else [out]


def roundtrip(model, tmp_path, x, **kw):
    path = tmp_path / "m.cnz"
    info = pack.save(model, path, **kw)
    assert info["file_bytes"] == os.path.getsize(path)
    loaded = pack.load(path, **({"model": kw.pop("skeleton")} if "skeleton" in kw else {}))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    same_state(model, loaded)
    assert loaded.training == model.training
    return loaded, info


@packable
class QuantScale(nn.Module):
    """Multiplies by a per-channel quantized weight held as a buffer (a registered, packable class)."""

    def __init__(self, n=6):
        super().__init__()
        w = torch.linspace(-1, 1, n)
        self.register_buffer("qw", torch.quantize_per_tensor(w, 0.05, 0, torch.qint8))
        self.offset = 0.5

    def forward(self, x):
        return x * self.qw.dequantize() + self.offset


class UserBlock(nn.Module):
    """A user's own (not allow-listed) class."""

    def __init__(self, width=8, out=5):
        super().__init__()
        self.fc = nn.Linear(width, out)
        self.act = nn.Tanh()
        self.gain = 2.0
        self.dims = (1, -1)

    def forward(self, x):
        return self.act(self.fc(x)).flatten(*self.dims) * self.gain


def test_mlp_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    roundtrip(model, tmp_path, torch.randn(5, 64))


def test_conv_bn_eval_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 10))
    model(torch.randn(16, 1, 8, 8))  # train-mode pass updates running stats and num_batches_tracked
    model.eval()
    loaded, info = roundtrip(model, tmp_path, torch.randn(3, 1, 8, 8))
    assert loaded[1].num_batches_tracked.item() == 1 and loaded[4].bias is None
    assert info["tensors"]["1.running_var"]["dtype"] == "float32"
    assert info["tensors"]["1.num_batches_tracked"]["kind"] == "buffer"


def test_pruned_codebook_model_uses_sparse_and_codebook(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        w = model[0].weight
        levels = torch.linspace(-0.1, 0.1, 16)
        w.copy_(levels[torch.randint(0, 16, w.shape)])
        w[torch.rand(w.shape) < 0.9] = 0
        model[2].weight.copy_(torch.linspace(-0.2, 0.2, 4)[torch.randint(0, 4, (10, 128))])
    _, info = roundtrip(model, tmp_path, torch.randn(4, 128))
    assert info["tensors"]["0.weight"]["codec"] == "sparse"
    assert info["tensors"]["2.weight"]["codec"] == "codebook"
    assert info["tensors"]["0.weight"]["bytes"] < 128 * 128 * 4 / 8


def test_sparse_sixteen_valued_file_is_much_smaller_than_dense(tmp_path):
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.linspace(-1, 1, 16)[torch.randint(0, 16, (256, 256), generator=g)])
        lin.weight[torch.rand(256, 256, generator=g) < 0.9] = 0
    dense = 256 * 256 * 4
    assert pack.tensor_bytes(lin)["weight"] < dense / 8
    pack.save(lin, tmp_path / "s.cnz")
    assert os.path.getsize(tmp_path / "s.cnz") < dense / 8


def test_quantized_buffer_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(6, 6), QuantScale(6))
    loaded, info = roundtrip(model, tmp_path, torch.randn(2, 6))
    assert info["tensors"]["1.qw"]["codec"] == "affine" and info["tensors"]["1.qw"]["dtype"] == "qint8"
    assert type(loaded[1]) is QuantScale and loaded[1].offset == 0.5


@pytest.mark.parametrize("make, x", [
    (lambda: nn.LSTM(6, 5, num_layers=2, batch_first=True), torch.randn(2, 3, 6)),
    (lambda: nn.GRU(6, 5, bidirectional=True), torch.randn(3, 2, 6)),
    (lambda: nn.Sequential(nn.Embedding(20, 4, padding_idx=0), nn.LayerNorm(4), nn.GELU("tanh")),
     torch.tensor([[0, 3, 19]])),
    (lambda: nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2), nn.PixelShuffle(1), nn.Upsample(scale_factor=2),
                           nn.Identity(), nn.LeakyReLU(0.3), nn.Softmax(dim=1)),
     torch.randn(1, 2, 4, 4)),
    (lambda: nn.Sequential(nn.Conv1d(2, 3, 3, padding="same"), nn.BatchNorm1d(3), nn.AvgPool1d(2), nn.Sigmoid()),
     torch.randn(2, 2, 8)),
])
def test_torch_layers_roundtrip(tmp_path, make, x):
    torch.manual_seed(0)
    model = make().eval()
    path = tmp_path / "m.cnz"
    pack.save(model, path)
    loaded = pack.load(path)
    assert all(torch.equal(a, b) for a, b in zip(flat(loaded(x)), flat(model(x)), strict=True))
    same_state(model, loaded)


CONSTRUCT = {
    "Linear": (4, 3), "NonDynamicallyQuantizableLinear": (4, 3), "Bilinear": (2, 3, 4), "Conv1d": (2, 3, 3),
    "Conv2d": (2, 3, 3), "Conv3d": (2, 3, 1),
    "ConvTranspose1d": (2, 3, 3), "ConvTranspose2d": (2, 3, 3), "BatchNorm1d": (3,), "BatchNorm2d": (3,),
    "BatchNorm3d": (3,), "LayerNorm": ((3, 4),), "GroupNorm": (2, 4), "InstanceNorm1d": (3,), "InstanceNorm2d": (3,),
    "Softmax": (1,), "LogSoftmax": (1,), "MaxPool1d": (2,), "MaxPool2d": ((2, 3),), "AvgPool1d": (2,),
    "AvgPool2d": (2,), "AdaptiveAvgPool1d": (2,), "AdaptiveAvgPool2d": ((2, None),), "AdaptiveMaxPool1d": (2,),
    "AdaptiveMaxPool2d": (1,), "Unflatten": (1, (2, 2)), "RNN": (3, 4), "LSTM": (3, 4), "GRU": (3, 4),
    "Embedding": (5, 3), "EmbeddingBag": (5, 3), "MultiheadAttention": (4, 2), "PixelShuffle": (2,),
    "PixelUnshuffle": (2,), "ZeroPad2d": (1,), "ConstantPad2d": (1, 0.5), "Upsample": (None, 2.0, "bilinear"),
    "RNNCell": (3, 4), "LSTMCell": (3, 4), "GRUCell": (3, 4), "TransformerEncoderLayer": (4, 2, 8),
    "TransformerDecoderLayer": (4, 2, 8), "TransformerEncoder": (nn.TransformerEncoderLayer(4, 2, 8), 2),
    "TransformerDecoder": (nn.TransformerDecoderLayer(4, 2, 8), 2),
    "Transformer": (4, 2, 1, 1, 8),
}


@pytest.mark.parametrize("key", sorted(k for k in spec.allowed() if k.startswith("torch.nn.")))
def test_every_allow_listed_torch_class_roundtrips(tmp_path, key):
    cls = spec.allowed()[key]
    module = cls(*CONSTRUCT.get(key.removeprefix("torch.nn."), ()))
    module.eval()
    pack.save(module, tmp_path / "c.cnz")
    loaded = pack.load(tmp_path / "c.cnz")
    assert type(loaded) is cls and loaded.training is False
    skip = spec._skip(cls)
    assert {k: v for k, v in loaded.__dict__.items() if k not in skip} == \
        {k: v for k, v in module.__dict__.items() if k not in skip}
    same_state(module, loaded)


def test_multihead_attention_and_module_containers(tmp_path):
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, batch_first=True),
                           "heads": nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 4)])}).eval()
    pack.save(model, tmp_path / "m.cnz")
    loaded = pack.load(tmp_path / "m.cnz")
    x = torch.randn(2, 5, 8)
    assert torch.equal(loaded["attn"](x, x, x)[0], model["attn"](x, x, x)[0])
    assert [type(m) for m in loaded["heads"]] == [nn.Linear, nn.Linear]
    same_state(model, loaded)


def test_user_class_needs_skeleton_and_keeps_saved_structure(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), UserBlock(8, 5))
    model[1].fc = nn.Linear(8, 3)  # structural change after construction: 5 -> 3 outputs
    model[1].gain = 3.0
    path = tmp_path / "u.cnz"
    pack.save(model, path)
    with pytest.raises(PackError, match=r"UserBlock at path 1 is not on the allow-list; pass model=skeleton"):
        pack.load(path)
    skeleton = nn.Sequential(nn.Linear(4, 8), UserBlock(8, 5))  # fresh weights, original shapes
    loaded = pack.load(path, model=skeleton)
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    assert loaded[1] is skeleton[1] and loaded[1].fc.out_features == 3 and loaded[1].gain == 3.0
    assert loaded[1].dims == (1, -1)
    same_state(model, loaded)


def test_user_class_at_root_and_wrong_skeleton(tmp_path):
    torch.manual_seed(0)
    model = UserBlock(8, 5)
    pack.save(model, tmp_path / "r.cnz")
    loaded = pack.load(tmp_path / "r.cnz", model=UserBlock())
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(PackError, match="model=skeleton has a torch.nn.Linear at path <root>"):
        pack.load(tmp_path / "r.cnz", model=nn.Linear(8, 5))


def test_tied_weights_shared_modules_and_flags(tmp_path):
    emb, head, shared = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head, "a": shared, "b": shared})
    model.a.bias.requires_grad_(False)
    model.a.register_buffer("scratch", torch.arange(3.0), persistent=False)
    info = pack.save(model, tmp_path / "t.cnz")
    assert info["tensors"]["head.weight"]["codec"] == "alias" and info["tensors"]["head.weight"]["bytes"] == 0
    loaded = pack.load(tmp_path / "t.cnz")
    assert loaded.head.weight is loaded.emb.weight and loaded.a is loaded.b
    assert not loaded.a.bias.requires_grad and loaded.a.weight.requires_grad
    assert torch.equal(loaded.a.scratch, torch.arange(3.0)) and "a.scratch" not in loaded.state_dict()
    same_state(model, loaded)


def test_fp16_option_level_zero_and_determinism(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    exact = pack.save(model, tmp_path / "a.cnz")
    half = pack.save(model, tmp_path / "h.cnz", fp16=True)
    assert half["file_bytes"] < 0.6 * exact["file_bytes"]
    loaded = pack.load(tmp_path / "h.cnz")
    assert loaded[0].weight.dtype == torch.float32
    assert torch.equal(loaded[0].weight, model[0].weight.detach().half().float())
    raw = pack.save(model, tmp_path / "z.cnz", level=0)
    assert not any(e["zstd"] for e in raw["tensors"].values())
    same_state(model, pack.load(tmp_path / "z.cnz"))
    pack.save(model, tmp_path / "b.cnz")
    assert (tmp_path / "a.cnz").read_bytes() == (tmp_path / "b.cnz").read_bytes()


def test_sizes_and_inspect_agree_with_disk(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    path = tmp_path / "m.cnz"
    saved = pack.save(model, path)
    info = pack.read_manifest(path)
    assert pack.packed_size(model) == os.path.getsize(path) == info["file_bytes"]
    assert pack.tensor_bytes(model) == {k: v["bytes"] for k, v in info["tensors"].items()}
    assert list(info["tensors"]) == list(model.state_dict())
    for entry in info["tensors"].values():
        assert {"codec", "shape", "dtype", "bytes"} <= set(entry)
    assert info["tensors"]["3.weight"]["shape"] == [2, 12]
    assert info["root"]["class"] == "torch.nn.Sequential"
    assert info["manifest_bytes"] + info["data_bytes"] + 52 == info["file_bytes"]
    saved.pop("path"), info.pop("path")
    assert saved == info
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_registry_models_rebuild_from_manifest_alone(tmp_path, name):
    models = pytest.importorskip("compactnn.models")
    if name not in getattr(models, "list_models", lambda: [])():
        pytest.skip(f"model {name} is not registered")
    torch.manual_seed(0)
    model = models.create(name, input_shape=(1, 8, 8), num_classes=10).eval()
    path = tmp_path / "r.cnz"
    pack.save(model, path)
    loaded = pack.load(path)
    assert type(loaded) is type(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    same_state(model, loaded)


def test_metadata_is_kept_and_must_be_json(tmp_path):
    from compactnn.errors import PackError
    from compactnn.pack import read_manifest, save

    model = torch.nn.Linear(3, 2)
    save(model, tmp_path / "m.cnz", metadata={"input_shape": [1, 8, 8], "data": "digits"})
    assert read_manifest(tmp_path / "m.cnz")["metadata"] == {"input_shape": [1, 8, 8], "data": "digits"}
    with pytest.raises(PackError, match="metadata must be JSON-safe"):
        save(model, tmp_path / "n.cnz", metadata={"bad": object()})
    assert not (tmp_path / "n.cnz").exists()
