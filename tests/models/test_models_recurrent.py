"""Clip classifiers: shapes, W_ih parameter counts, rebuilt == factorized input maps, packing, MACs, errors."""

import math

import pytest
import torch

from compactnn import pack
from compactnn.decompose import BTLSTM, BTLinear
from compactnn.decompose.tt import TTLSTM
from compactnn.errors import ModelError
from compactnn.models import create, list_models
from compactnn.models.recurrent import GRU, LSTM, ClipClassifier, RebuiltBTLinear, RebuiltTTLinear
from compactnn.report import count_macs

CELLS = ["lstm", "gru", "bt-lstm", "bt-gru", "tt-lstm"]
SMALL = dict(input_shape=(5, 8, 8), num_classes=3, hidden=16)  # 64 features, hidden 16 = 2x2x2x2


def test_registered_names():
    assert {"clip-lstm", "clip-gru", "clip-bt-lstm", "clip-bt-gru", "clip-tt-lstm"} <= set(list_models("clip-*"))
    assert isinstance(create("clip-bt-lstm", **SMALL).rnn, BTLSTM)
    assert isinstance(create("clip-tt-lstm", **SMALL).rnn, TTLSTM)
    assert isinstance(create("clip-lstm", **SMALL).rnn, LSTM) and isinstance(create("clip-gru", **SMALL).rnn, GRU)


@pytest.mark.parametrize("cell", CELLS)
def test_output_shape_for_all_input_layouts(cell):
    torch.manual_seed(0)
    model = create(f"clip-{cell}", **SMALL).eval()
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 3)
        assert torch.equal(model(x.unsqueeze(2)), y) and torch.equal(model(x.flatten(2)), y)


def test_w_ih_counts_at_64x64():
    """The documented counts for 64x64 frames, hidden 256 (input modes 8x8x8x8, hidden 4x4x4x4)."""
    dense = 4096 * 4 * 256
    counts = {cell: create(f"clip-{cell}").input_weight_params() for cell in CELLS}
    assert counts["lstm"] == dense == 4_194_304
    assert counts["gru"] == 4096 * 3 * 256
    # BT: N (sum_k I_k J_k R_k + prod R) with J = (16, 4, 4, 4) (first hidden mode x4 gates), R = 4, N = 2
    assert counts["bt-lstm"] == 2 * (8 * 16 * 4 + 3 * 8 * 4 * 4 + 4 ** 4) == 2_304
    assert counts["bt-gru"] == 2 * (8 * 12 * 4 + 3 * 8 * 4 * 4 + 4 ** 4) == 2_048
    # TT: cores (1,8,16,4), (4,8,4,4), (4,8,4,4), (4,8,4,1)
    assert counts["tt-lstm"] == 512 + 512 + 512 + 128 == 1_664
    assert dense / counts["bt-lstm"] >= 1000 and dense / counts["tt-lstm"] >= 1000
    model = create("clip-bt-lstm")
    assert model.rnn.in_modes == (8, 8, 8, 8) and model.rnn.hidden_modes == (4, 4, 4, 4)
    assert model.rnn.ih.out_modes == (16, 4, 4, 4) and model.hidden == 256


@pytest.mark.parametrize("cell", ["bt-lstm", "bt-gru", "tt-lstm"])
def test_rebuilt_input_map_equals_the_factorized_one(cell):
    torch.manual_seed(0)
    fast = create(f"clip-{cell}", **SMALL).double().eval()
    slow = create(f"clip-{cell}", ih_path="factorized", **SMALL).double().eval()
    assert isinstance(fast.rnn.ih, (RebuiltBTLinear, RebuiltTTLinear))
    assert not isinstance(slow.rnn.ih, (RebuiltBTLinear, RebuiltTTLinear))
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), rtol=1e-10, atol=1e-12)


def test_bt_cell_keeps_forget_bias_one_after_rebuild():
    model = create("clip-bt-lstm", **SMALL)
    h = model.hidden
    assert torch.equal(model.rnn.ih.bias[h:2 * h], torch.ones(h))
    assert torch.equal(model.rnn.ih.bias[:h], torch.zeros(h))


def test_dense_lstm_matches_the_written_out_cell():
    torch.manual_seed(0)
    model = create("clip-lstm", **SMALL).double().eval()
    rnn = model.rnn
    assert torch.equal(rnn.bias_ih_l0[16:32], torch.ones(16, dtype=torch.float64))
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64).flatten(2)
    h = c = torch.zeros(2, 16, dtype=torch.float64)
    for t in range(5):
        g = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        i, f, z, o = g.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(h))


@pytest.mark.parametrize("cell", CELLS)
def test_pack_round_trip(cell, tmp_path):
    torch.manual_seed(1)
    model = create(f"clip-{cell}", **SMALL).eval()
    pack.save(model, tmp_path / "m.cnz", level=1)
    back = pack.load(tmp_path / "m.cnz").eval()
    assert type(back) is ClipClassifier and type(back.rnn) is type(model.rnn)
    assert type(getattr(back.rnn, "ih", None)) is type(getattr(model.rnn, "ih", None))
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_factorized_cell_packs_smaller():
    dense = pack.packed_size(create("clip-lstm", input_shape=(2, 32, 32)), level=1)
    bt = pack.packed_size(create("clip-bt-lstm", input_shape=(2, 32, 32)), level=1)
    assert bt * 3 < dense


def test_count_macs():
    t, f, h, k = 5, 64, 16, 3
    dense = count_macs(create("clip-lstm", **SMALL), SMALL["input_shape"])
    assert dense == {"rnn": t * 4 * h * (f + h), "head": h * k}
    gru = count_macs(create("clip-gru", **SMALL), SMALL["input_shape"])
    assert gru["rnn"] == t * 3 * h * (f + h)
    bt = create("clip-bt-lstm", **SMALL)
    assert count_macs(bt, SMALL["input_shape"])["rnn"] == t * (f * 4 * h + h * 4 * h)  # rebuilt: GEMM per row
    slow = create("clip-bt-lstm", ih_path="factorized", **SMALL)
    assert count_macs(slow, SMALL["input_shape"])["rnn"] == t * (slow.rnn.ih.macs_per_sample() + h * 4 * h)


def test_rebuild_macs_formulas():
    bt = RebuiltBTLinear((8, 8, 8, 8), (16, 4, 4, 4), 4, blocks=2)
    per_block = 8 * 16 * 4 * 4 ** 3 + 128 * 8 * 4 * 4 * 4 ** 2 + 128 * 32 * 8 * 4 * 4 * 4 + 128 * 32 * 32 * 8 * 4 * 4
    assert bt.rebuild_macs() == 2 * per_block == 38_338_560
    tt = RebuiltTTLinear((2, 3, 4), (5, 6, 7), (1, 2, 3, 1))
    assert tt.rebuild_macs() == (2 * 5) * 2 * 3 * 6 * 3 + (2 * 5 * 3 * 6) * 3 * 4 * 7 * 1
    assert isinstance(bt, BTLinear) and bt.macs_per_sample() == 4096 * 1024


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = create("clip-bt-lstm", **SMALL)
    x, y = torch.randn(12, 5, 8, 8), torch.arange(12) % 3
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("kwargs, match", [
    (dict(cell="rnn"), "unknown cell"),
    (dict(cell="bt-lstm", ih_path="fast"), "ih_path"),
    (dict(cell="bt-lstm", in_modes=(4, 4, 5)), "multiply to"),
    (dict(cell="lstm", hidden=0), "positive int"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ModelError, match=match):
        ClipClassifier(input_shape=(5, 8, 8), **kwargs)


def test_wrong_input_shape():
    model = create("clip-lstm", **SMALL)
    with pytest.raises(ModelError, match="H\\*W = 64"):
        model(torch.randn(2, 5, 9, 9))
    assert math.prod(SMALL["input_shape"][1:]) == model.features


@pytest.mark.parametrize("cell", ["lstm", "bt-lstm"])
def test_dropout_only_in_training_and_packed(cell, tmp_path):
    torch.manual_seed(1)
    model = create(f"clip-{cell}", dropout=0.5, **SMALL)
    plain = create(f"clip-{cell}", **SMALL)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))  # eval: dropout is the identity
        model.train()
        assert not torch.equal(model(x), plain(x))
    pack.save(model, tmp_path / "m.cnz", level=1)
    back = pack.load(tmp_path / "m.cnz")
    assert back.dropout == 0.5
    with torch.no_grad():
        assert torch.equal(back.eval()(x), model.eval()(x))


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.2", True])
def test_bad_dropout(bad):
    with pytest.raises(ModelError, match="dropout must be a probability"):
        create("clip-lstm", dropout=bad, **SMALL)
