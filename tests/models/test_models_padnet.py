"""PAD-Net and its baselines: shapes, the distillation equations, pack round trip, errors."""

import pytest
import torch

from compactnn import pack
from compactnn.errors import ModelError
from compactnn.models import create
from compactnn.models.padnet import VARIANTS, DistillConcat, DistillMessages, Mul, PadNet
from compactnn.pack.spec import allowed, class_key


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant):
    model = create("padnet", variant=variant, num_classes=5, input_shape=(3, 32, 32), seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        full = model.forward_all(x)
    want = {"single-depth": 1, "single-semantics": 5}.get(variant, 6)
    assert y.shape == (2, want, 32, 32)
    parts = model.split(y)
    for k, t in parts.items():
        assert torch.equal(t, full[k])
    if variant in ("A", "B", "C"):
        assert {k: tuple(v.shape) for k, v in full["inter"].items()} == {
            "depth": (2, 1, 8, 8), "normals": (2, 3, 8, 8), "contours": (2, 2, 8, 8), "semantics": (2, 5, 8, 8)}
    else:
        assert "inter" not in full


def test_variants_share_encoder_and_decoder_shapes():
    a, c = create("padnet", variant="A", seed=0), create("padnet", variant="multi-task", seed=0)
    assert [p.shape for p in a.encoder.parameters()] == [p.shape for p in c.encoder.parameters()]
    assert [p.shape for p in a.decoders.parameters()] == [p.shape for p in c.decoders.parameters()]
    with pytest.raises(ModelError, match="variant"):
        create("padnet", variant="D")


def _feats(feat=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(2, feat, 5, 5, generator=g) for t in ("depth", "normals", "contours", "semantics")}


def test_message_passing_equations():
    feats = _feats()
    for gated in (False, True):
        m = DistillMessages(4, gated=gated).eval()
        with torch.no_grad():
            out = m(feats)
            for k in ("depth", "semantics"):
                want = feats[k].clone()
                gate = torch.sigmoid(m.gates[k][0](feats[k])) if gated else 1.0
                for t in feats:
                    if t != k:
                        want += gate * m.messages[f"{t}_to_{k}"](feats[t])
                assert torch.allclose(out[k], want, atol=1e-6)
    # zero messages: B and C pass each final task's own feature through unchanged
    m = DistillMessages(4, gated=True).eval()
    for conv in m.messages.values():
        torch.nn.init.zeros_(conv[0].weight)
        conv[1].bias.data.zero_()
    with torch.no_grad():
        out = m(feats)
    assert torch.equal(out["depth"], feats["depth"]) and torch.equal(out["semantics"], feats["semantics"])


def test_concat_distillation_sees_every_task():
    feats = _feats()
    m = DistillConcat(4).eval()
    with torch.no_grad():
        base = m(feats)["depth"]
        feats["contours"] = feats["contours"] + 1.0
        assert not torch.equal(m(feats)["depth"], base)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pack_round_trip_identical(variant, tmp_path):
    model = create("padnet", variant=variant, num_classes=4, input_shape=(3, 16, 16), seed=1)
    model.train()
    model(torch.randn(8, 3, 16, 16))  # move the BN statistics away from their defaults
    model.eval()
    pack.save(model, tmp_path / "p.cnz", level=1)
    back = pack.load(tmp_path / "p.cnz").eval()
    assert type(back) is PadNet and back.variant == variant
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        if variant in ("A", "B", "C"):
            a, b = back.forward_all(x)["inter"], model.forward_all(x)["inter"]
            assert all(torch.equal(a[t], b[t]) for t in a)
    keys = allowed()
    assert keys[class_key(Mul)] is Mul


def test_trace_keeps_every_join_as_a_module():
    from compactnn.graph import trace

    model = create("padnet", variant="C", input_shape=(3, 16, 16), seed=0).eval()
    gm = trace(model)
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds.count("Mul") == 6 and kinds.count("Sigmoid") == 2 and kinds.count("ConvTranspose2d") == 4
    assert not [n for n in gm.graph.nodes if n.op == "call_function"]  # no bare torch ops left
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
