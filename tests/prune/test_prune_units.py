"""Structured units beyond channels: SE-style mul gates, recurrent hidden units (LSTM/GRU/RNN), whole attention
heads (nn.MultiheadAttention, torch's TransformerEncoder, hand-written timm-style attention). Removing units equals
zeroing them in the dense model; MACs drop as the pruner's model of them says; what cannot be pruned is kept whole
with a one-line reason."""

import copy
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn as cn
from compactnn.prune import L1Filter, NISP
from compactnn.prune.graph import build_graph
from compactnn.prune.structured import MacsModel, l1_importance
from compactnn.prune.surgery import prune_channels, total_macs, zero_channels
from compactnn.prune.units import PrunedMultiheadAttention, PrunedSelfAttention


def _keep_half(graph, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: sorted(torch.randperm(g.size, generator=gen)[: max(1, g.size // 2)].tolist())
            for n, g in graph.prunable().items()}


def _check_exact(model, x, keep=None, atol=1e-5):
    """Prune a copy and zero another copy with the same keep lists: same outputs, fewer params, MACs as predicted."""
    model.eval()
    graph = build_graph(model)
    keep = keep or _keep_half(graph)
    assert keep, "nothing prunable"
    zeroed = zero_channels(copy.deepcopy(model), graph, keep)
    pruned = prune_channels(copy.deepcopy(model), graph, keep).eval()
    with torch.no_grad():
        ref, got, dense = zeroed(x), pruned(x), model(x)
    assert not torch.allclose(ref, dense, atol=1e-4)  # zeroing changed the function: the test can fail
    torch.testing.assert_close(got, ref, rtol=0, atol=atol)
    shape = model.input_shape
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    predicted = MacsModel(model, graph)({n: len(k) for n, k in keep.items()})
    assert total_macs(pruned, shape) == predicted < total_macs(model, shape)
    return graph, pruned


def _round_trip(model, x, skeleton):
    """Save the pruned model and load it into a fresh skeleton of the user's (unpruned) classes."""
    with tempfile.TemporaryDirectory() as tmp:
        cn.pack.save(model, Path(tmp) / "m.cnz")
        back = cn.pack.load(Path(tmp) / "m.cnz", model=skeleton)
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


# ------------------------------------------------------------------------------------------ SE gates
class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (3, 6, 6)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.silu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head((x * s).mean((2, 3)))


def test_se_gate_ties_the_gated_channels_with_the_gate_and_prunes_exactly():
    """Before this change the product was kept whole (only fc1's hidden channels were prunable)."""
    torch.manual_seed(0)
    model = SE()
    graph = build_graph(model)
    assert not graph.kept_whole
    assert graph.prunable()["conv"].producers == ["conv", "fc2"]  # x and the gate lose the same channels
    assert graph.prunable()["conv"].members == ["conv", "bn", "fc1", "fc2", "head"]
    _, pruned = _check_exact(model, torch.randn(4, 3, 6, 6))
    assert (pruned.conv.out_channels, pruned.fc2.out_channels, pruned.head.in_features) == (4, 4, 4)


def test_a_product_with_a_parameter_is_kept_whole():
    class Scaled(SE):
        def __init__(self, flat):
            super().__init__()
            self.flat = flat
            self.gamma = nn.Parameter(torch.ones(8) if flat else torch.ones(1, 8, 1, 1))

        def forward(self, x):
            gamma = self.gamma.view(1, -1, 1, 1) if self.flat else self.gamma
            return self.head((self.conv(x) * gamma).mean((2, 3)))

    for flat, op in ((False, "gamma"), (True, "view")):
        graph = build_graph(Scaled(flat))
        assert op in graph.kept_whole and "\n" not in graph.kept_whole[op]
        assert "conv" not in graph.prunable()  # its channels meet a parameter that surgery would not shrink


# ------------------------------------------------------------------------------------------ recurrent layers
class Rnn(nn.Module):
    def __init__(self, cls=nn.LSTM, layers=1, bidirectional=False, read="last"):
        super().__init__()
        self.input_shape, self.read = (5, 6), read
        self.embed = nn.Linear(6, 7)
        self.rnn = cls(7, 10, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.fc = nn.Linear(10 * (2 if bidirectional else 1), 3)

    def forward(self, x):
        out, state = self.rnn(torch.relu(self.embed(x)))
        if self.read == "last":
            return self.fc(out[:, -1])
        if self.read == "mean":
            return self.fc(out.mean(1))
        h = state[0] if isinstance(state, tuple) else state
        return self.fc(h[-1])


@pytest.mark.parametrize("cls, layers, bidirectional, read", [
    (nn.LSTM, 1, False, "last"),
    (nn.LSTM, 2, True, "mean"),
    (nn.GRU, 2, False, "h_n"),
    (nn.RNN, 1, False, "last"),
    (nn.LSTM, 3, False, "h_n"),
])
def test_hidden_units_removed_equal_hidden_units_zeroed(cls, layers, bidirectional, read):
    torch.manual_seed(0)
    model = Rnn(cls, layers, bidirectional, read=read)
    graph = build_graph(model)
    assert not graph.kept_whole, graph.kept_whole
    assert set(graph.prunable()) == {"embed", "rnn"}
    assert graph.prunable()["rnn"].members == ["rnn", "fc"] and graph.prunable()["rnn"].size == 10
    assert graph.prunable()["embed"].members == ["embed", "rnn"]  # the LSTM's input features are prunable too
    _, pruned = _check_exact(model, torch.randn(4, 5, 6))
    assert type(pruned.rnn) is cls and pruned.rnn.hidden_size == 5 and pruned.rnn.input_size == 3
    assert pruned.rnn.num_layers == layers and pruned.rnn.bidirectional == bidirectional
    assert pruned.fc.in_features == 5 * (2 if bidirectional else 1)
    _round_trip(pruned, torch.randn(2, 5, 6), Rnn(cls, layers, bidirectional, read=read))


def test_l1_filter_keeps_the_hidden_units_of_largest_gate_rows():
    torch.manual_seed(0)
    model = Rnn(nn.LSTM, 2)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight"):
                p.mul_(0.01)
                p.view(4, 10, -1)[:, [1, 4, 7]] *= 1000  # units 1, 4, 7: much larger incoming weights
    scores = l1_importance(model, build_graph(model))["rnn"]
    assert sorted(torch.topk(scores, 3).indices.tolist()) == [1, 4, 7]
    out = cn.compress(model, L1Filter(sparsity=0.7, layers=["rnn"], finetune=None))
    assert out.rnn.hidden_size == 3 and out.embed.out_features == 7  # only the LSTM's group was selected
    torch.testing.assert_close(out.rnn.weight_hh_l1, model.rnn.weight_hh_l1.view(4, 10, 10)[:, [1, 4, 7]][
        :, :, [1, 4, 7]].reshape(12, 3))


def test_unsupported_recurrent_layers_are_kept_whole_with_a_reason():
    class WithState(Rnn):
        def forward(self, x):
            h0 = torch.zeros(1, x.shape[0], 10)
            return self.fc(self.rnn(self.embed(x), (h0, h0))[0][:, -1])

    class Projected(Rnn):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(7, 10, batch_first=True, proj_size=4)
            self.fc = nn.Linear(4, 3)

    for model, words in ((WithState(), "initial state"), (Projected(), "proj_size=4")):
        graph = build_graph(model)
        assert any(words in r for r in graph.kept_whole.values()), graph.kept_whole
        assert all("\n" not in r for r in graph.kept_whole.values())
        assert "rnn" not in graph.prunable()


# ------------------------------------------------------------------------------------------ attention heads
class Mha(nn.Module):
    def __init__(self, batch_first=True, weights=False):
        super().__init__()
        self.input_shape = (5, 8)
        self.batch_first, self.weights = batch_first, weights
        self.attn = nn.MultiheadAttention(8, 4, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, w = self.attn(x, x, x)
        if self.weights:
            y = y * w.mean()
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(y.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_removed_equal_heads_zeroed(batch_first):
    torch.manual_seed(0)
    model = Mha(batch_first)
    graph = build_graph(model)
    assert list(graph.prunable()) == ["attn"] and graph.prunable()["attn"].size == 4
    _, pruned = _check_exact(model, torch.randn(3, 5, 8), keep={"attn": [1, 3]})
    att = pruned.attn
    assert isinstance(att, PrunedMultiheadAttention)
    assert (att.embed_dim, att.num_heads, att.head_dim, tuple(att.in_proj_weight.shape)) == (8, 2, 2, (12, 8))
    torch.testing.assert_close(att.in_proj_weight[:2], model.attn.in_proj_weight[[2, 3]])  # q rows of head 1
    torch.testing.assert_close(att.out_proj.weight, model.attn.out_proj.weight[:, [2, 3, 6, 7]])
    _round_trip(pruned, torch.randn(2, 5, 8), Mha(batch_first))


def test_pruned_attention_is_torchs_function_with_masks():
    """All heads kept, the replacement computes torch's MultiheadAttention, masks and weights included."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
        with torch.no_grad():
            mha.in_proj_bias.normal_()
        from compactnn.prune.units import rebuild_mha

        ours = rebuild_mha(mha, None, torch.arange(2)).eval()
        q = torch.randn(4, 4, 8)  # (B, L, E) or (L, B, E)
        kpm = torch.tensor([[False] * 4, [False, False, True, True], [True, False, False, False], [False] * 4])
        causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
        for kwargs in ({}, {"key_padding_mask": kpm}, {"attn_mask": causal}, {"attn_mask": causal.float() * -1e4},
                       {"average_attn_weights": False}, {"need_weights": False}):
            want = mha(q, q, q, **kwargs)
            got = ours(q, q, q, **kwargs)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
            if want[1] is not None:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours(q[0], q[0], q[0])[0], mha(q[0], q[0], q[0])[0], rtol=1e-5, atol=1e-5)


def test_attention_whose_weights_are_used_keeps_its_heads_whole():
    graph = build_graph(Mha(weights=True))
    assert "attn" not in graph.prunable()
    assert any("attention weights" in r for r in graph.kept_whole.values())


class Encoder(nn.Module):
    def __init__(self, norm_first=False):
        super().__init__()
        self.input_shape = (6, 8)
        layer = nn.TransformerEncoderLayer(8, 4, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x)[:, 0])


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_heads_and_mlp_units_prune_exactly(norm_first):
    torch.manual_seed(0)
    model = Encoder(norm_first)
    graph = build_graph(model)
    assert set(graph.prunable()) == {"encoder.layers.0.self_attn", "encoder.layers.0.linear1",
                                     "encoder.layers.1.self_attn", "encoder.layers.1.linear1"}
    _, pruned = _check_exact(model, torch.randn(3, 6, 8))
    layer = pruned.encoder.layers[1]
    assert isinstance(layer.self_attn, PrunedMultiheadAttention) and layer.self_attn.num_heads == 2
    assert layer.linear1.out_features == layer.linear2.in_features == 8
    pruned.train()
    pruned(torch.randn(2, 6, 8)).sum().backward()  # trainable after pruning (fine-tuning runs the slow path)
    _round_trip(pruned.eval(), torch.randn(2, 6, 8), Encoder(norm_first))


class Attention(nn.Module):  # timm's style: c from the input, reshape(b, n, c) at the end
    def __init__(self, dim=8, heads=4, bias=None):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = bias

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if self.bias is not None:
            attn = attn + self.bias
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Fused(Attention):  # timm's fused path
    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.input_shape = (5, 8)
        self.norm, self.attn, self.head = nn.LayerNorm(8), attn, nn.Linear(8, 3)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return self.head(x.mean(1))


@pytest.mark.parametrize("attn", [Attention(), Fused()])
def test_hand_written_attention_heads_prune_exactly(attn):
    torch.manual_seed(0)
    model = Block(attn)
    graph = build_graph(model)
    assert list(graph.prunable()) == ["attn.qkv"] and graph.layers["attn.qkv"].target == "attn"
    _, pruned = _check_exact(model, torch.randn(3, 5, 8), keep={"attn.qkv": [0, 2, 3]})
    assert isinstance(pruned.attn, PrunedSelfAttention)
    assert (pruned.attn.num_heads, pruned.attn.head_dim, pruned.attn.qkv.out_features) == (3, 2, 18)
    _round_trip(pruned, torch.randn(2, 5, 8), Block(type(attn)()))
    again = build_graph(pruned)  # the replacement is itself prunable
    assert list(again.prunable()) == ["attn"] and again.prunable()["attn"].size == 3
    _check_exact(pruned, torch.randn(3, 5, 8), keep={"attn": [1]})


def test_hand_written_attention_not_recognized_is_kept_whole_with_a_reason():
    class Residual(Attention):  # adds its input: not plain attention, the check must refuse it
        def forward(self, x):
            return x + super().forward(x)

    graph = build_graph(Block(Attention(bias=torch.zeros(1, 1, 5, 5))))  # a tensor from outside: not matched
    assert not graph.prunable()
    graph = build_graph(Block(Residual()))
    assert "not recognized" in graph.kept_whole["attn"] and "differs" in graph.kept_whole["attn"]
    assert not graph.prunable()


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_shape = (8, 8)
        self.rnn = nn.GRU(8, 12, batch_first=True)
        self.proj = nn.Linear(12, 16)  # the attention's inputs stay whole, the GRU's units do not
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.proj(self.rnn(x)[0])
        return self.fc(self.attn(h, h, h, need_weights=False)[0].mean(1))


def _sequences():
    """digits as sequences of 8 rows of 8 pixels."""
    import dataclasses

    from compactnn.data.bundle import ArrayDataset

    data = cn.data.load("digits")
    seq = [ArrayDataset(p.x[:200].reshape(-1, 8, 8), p.y[:200]) for p in (data.train, data.test)]
    return dataclasses.replace(data, train=seq[0], test=seq[1], input_shape=(8, 8))


def test_methods_select_heads_and_units_by_layer_patterns_and_nisp_scores_them():
    torch.manual_seed(0)
    data = _sequences()
    model = Mixed()
    graph = build_graph(model)
    assert set(graph.prunable()) == {"rnn", "attn"}
    from compactnn.prune.nisp import nisp_scores

    scores = nisp_scores(model, graph, data.train.x[:64])
    for name in ("rnn", "attn"):
        assert torch.isfinite(scores[name]).all() and scores[name].std() > 0  # per unit, not spread evenly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heads_only = cn.compress(model, NISP(sparsity=0.5, samples=32, layers=["attn"], finetune=None), data=data)
        units_only = cn.compress(model, L1Filter(sparsity=0.5, exclude=["attn"], finetune=None), data=data)
        tuned = cn.compress(model, NISP(sparsity=0.25, samples=32, finetune={"epochs": 1}), data=data)
    assert heads_only.attn.num_heads == 2 and heads_only.rnn.hidden_size == 12
    assert units_only.rnn.hidden_size == 6 and isinstance(units_only.attn, nn.MultiheadAttention)
    assert tuned.rnn.hidden_size == 9 and tuned.attn.num_heads == 3
    assert cn.train.evaluate(tuned, data)["accuracy"] >= 0.0  # fine-tuning ran through the replacement


def test_plan_lists_units_and_ops_kept_whole():
    text = str(cn.plan(Rnn(nn.LSTM, 2), L1Filter(sparsity=0.5, finetune=None)))
    assert "rnn" in text and "10 hidden units" in text and "7 features" in text
    text = str(cn.plan(Block(Attention()), L1Filter(sparsity=0.5, finetune=None)))
    assert "4 heads" in text


def test_global_macs_budget_spreads_over_heads_units_and_channels():
    torch.manual_seed(0)
    model = Encoder()
    dense = total_macs(model, model.input_shape)
    out = cn.compress(model, L1Filter(sparsity=0.4, scope="global", budget="macs", finetune=None))
    assert abs(1 - total_macs(out, model.input_shape) / dense - 0.4) < 0.08


def test_round_to_counts_units():
    torch.manual_seed(0)
    out = cn.compress(Encoder(), L1Filter(sparsity=0.3, round_to=4, finetune=None))
    layer = out.encoder.layers[0]
    assert layer.linear1.out_features == 12  # 16 * 0.7 = 11.2 -> 11 -> snapped to 12
    assert isinstance(layer.self_attn, nn.MultiheadAttention)  # 4 heads: round_to 4 keeps them all
