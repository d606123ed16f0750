"""Weight-level methods reach every weight of >= 2 dims (LSTM, attention, user layers), and nothing is skipped or
emptied in silence."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compactnn as cn
from compactnn.config import FineTune
from compactnn.layers import WeightSlot, other_weights
from compactnn.prune import LC, MagnitudePrune
from compactnn.quantize import KMeansQuantize


class Gate(nn.Module):
    """A user layer that computes with its weight functionally."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 8) * 0.3)

    def forward(self, x):
        return nn.functional.linear(x, self.weight)


class SeqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gate = Gate()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = self.att(x, x, x)[0]
        a = self.lstm(a)[0]
        return self.fc(self.gate(a)).mean(1)


def _data(n=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, 8, generator=gen)
    y = (x.sum((1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _big_weights(model):
    return {n: p for n, p in model.named_parameters() if p.dim() >= 2}


def test_other_weights_names_every_non_layer_matrix():
    found = other_weights(SeqNet())
    assert set(found) == {"att.in_proj_weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "gate.weight"}
    assert all(isinstance(s, WeightSlot) for s in found.values())


@pytest.mark.parametrize("finetune", [None, FineTune(epochs=1, lr=1e-3)])
def test_magnitude_prunes_lstm_attention_and_user_weights(finetune):
    torch.manual_seed(0)
    model = SeqNet()
    out = cn.compress(model, MagnitudePrune(sparsity=0.8, finetune=finetune), data=_data())
    weights = _big_weights(out)
    assert list(weights) == list(_big_weights(model))  # same names, same order: no parametrization left
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.8 * total)
    for name in ("att.in_proj_weight", "lstm.weight_hh_l0", "gate.weight"):
        assert (weights[name] == 0).any(), name
    # the RNN kernel reads the pruned weights: same output as an LSTM rebuilt from the state dict
    fresh = SeqNet()
    fresh.load_state_dict(out.state_dict())
    x = torch.randn(2, 5, 8)
    out.eval(), fresh.eval()
    torch.testing.assert_close(out(x), fresh(x), rtol=0, atol=0)


def test_kmeans_shares_lstm_weights_and_packs(tmp_path):
    torch.manual_seed(0)
    out = cn.compress(SeqNet(), KMeansQuantize(bits=2, finetune=FineTune(epochs=1, lr=1e-3)), data=_data())
    for name, w in _big_weights(out).items():
        assert w.unique().numel() <= 2**2 + 1, name  # 4 centroids and zero
    cn.pack.save(out, tmp_path / "m.cnz")
    back = cn.pack.load(tmp_path / "m.cnz", model=SeqNet())
    x = torch.randn(2, 5, 8)
    out.eval(), back.eval()
    torch.testing.assert_close(out(x), back(x), rtol=0, atol=0)


def test_methods_limited_to_layers_say_what_they_skip():
    with pytest.warns(UserWarning, match=r"lc: 4 weight\(s\) left as they are.*att.in_proj_weight"):
        out = cn.compress(SeqNet(), LC(sparsity=0.5, steps=1, finetune=FineTune(epochs=1), first_epochs=1), data=_data())
    assert out.compactnn_skipped["lstm.weight_hh_l0"].startswith("LSTM.weight_hh_l0 is not a Linear")


def test_a_layer_pruned_to_zero_is_named():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.big = nn.Linear(8, 8)
            self.tiny = nn.Linear(8, 2)
            with torch.no_grad():
                self.big.weight.mul_(100)
                self.tiny.weight.mul_(1e-3)

        def forward(self, x):
            return self.tiny(self.big(x))

    with pytest.warns(UserWarning, match=r"magnitude-prune: every weight of 1 layer\(s\) is now zero.*tiny"):
        cn.compress(Two(), MagnitudePrune(sparsity=0.75, finetune=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cn.compress(Two(), MagnitudePrune(sparsity=0.75, scope="layer", finetune=None))


@pytest.mark.parametrize("activation", ["relu", "gelu", nn.functional.silu])
def test_transformer_layers_pack_with_their_activation_function(tmp_path, activation):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, activation=activation)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(40, 3))
    model.eval()
    cn.pack.save(model, tmp_path / "t.cnz")
    back = cn.pack.load(tmp_path / "t.cnz")
    assert back[0].layers[1].activation is model[0].layers[1].activation
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_a_function_off_the_allow_list_is_refused_in_one_line(tmp_path):
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, activation=lambda x: x * 2)
    with pytest.raises(cn.errors.PackError, match="functions are stored only from an allow-list"):
        cn.pack.save(layer, tmp_path / "t.cnz")


def test_skeleton_load_of_nested_user_classes_leaves_the_skeleton_alone_on_a_bad_file(tmp_path):
    torch.manual_seed(0)
    model = SeqNet()
    cn.pack.save(model, tmp_path / "m.cnz")
    skeleton = SeqNet()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    data = bytearray((tmp_path / "m.cnz").read_bytes())
    data[-40] ^= 0xFF
    (tmp_path / "bad.cnz").write_bytes(bytes(data))
    with pytest.raises(cn.errors.PackError):
        cn.pack.load(tmp_path / "bad.cnz", model=skeleton)
    assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())

    class OtherGate(Gate):
        pass

    wrong = SeqNet()
    wrong.gate = OtherGate()  # the root matches; the mismatch is found deep in the tree
    kept = dict(wrong.named_modules())
    with pytest.raises(cn.errors.PackError, match="at path gate but the file has a"):
        cn.pack.load(tmp_path / "m.cnz", model=wrong)
    assert dict(wrong.named_modules()) == kept
    back = cn.pack.load(tmp_path / "m.cnz", model=skeleton)
    assert back is skeleton and back.gate is skeleton.gate
    x = torch.randn(2, 5, 8)
    model.eval(), back.eval()
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


class Lambda(nn.Module):
    """Option-A ResNets' shortcut: a module holding a lambda."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_a_user_class_holding_a_lambda_saves_and_loads_with_its_skeleton(tmp_path):
    def build():
        return nn.Sequential(nn.Linear(4, 4), Lambda(lambda x: x[:, ::2] * 2))

    model = build()
    cn.pack.save(model, tmp_path / "l.cnz")
    back = cn.pack.load(tmp_path / "l.cnz", model=build())
    x = torch.randn(3, 4)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    cn.pack.spec.packable(Lambda)  # now rebuilt without a skeleton: the lambda is not in the file
    try:
        with pytest.raises(cn.errors.PackError, match=r"module 1 \(.*Lambda\) was saved without its attribute 'fn'"):
            cn.pack.load(tmp_path / "l.cnz")
    finally:
        cn.pack.spec._REGISTRY.pop(cn.pack.spec.class_key(Lambda), None)
        cn.pack.spec._KEYS.pop(Lambda, None)


def test_tensor_ring_leaves_a_layer_whose_parent_reads_its_weight():
    from compactnn.decompose import TensorRing

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(nn.functional.linear(x, self.proj.weight))

    model = nn.Sequential(nn.Linear(8, 16), ReadsWeight())
    with pytest.warns(UserWarning, match=r"layer '1.proj' left as it is: ReadsWeight.forward reads proj.weight"):
        out = cn.compress(model, TensorRing(rank=2, finetune=None))
    assert type(out[1].proj) is nn.Linear and type(out[1].head) is not nn.Linear
    out(torch.randn(2, 8))
    with pytest.warns(UserWarning, match="'att.out_proj' left as it is: nn.MultiheadAttention reads its weight"):
        out = cn.compress(SeqNet(), TensorRing(rank=2, finetune=None))
    out(torch.randn(2, 5, 8))
    with pytest.raises(cn.errors.ModelError, match="'att.out_proj' cannot be replaced: nn.MultiheadAttention"):
        cn.compress(SeqNet(), TensorRing(rank=2, finetune=None, layers=["att.out_proj"]))
