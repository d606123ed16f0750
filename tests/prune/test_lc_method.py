"""The LC algorithm's loop (compactnn.prune.lc): formulas, wiring, exact constraints, accuracy vs direct compression."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune, to_dict
from compactnn.errors import ConfigError, ModelError
from compactnn.prune import MagnitudePrune, csteps
from compactnn.prune.lc import (LC, epochs_schedule, layer_budget, lc_penalty, lr_schedule, make_loss_fn,
                                mu_schedule, run_lc, update_multipliers)

FAST = dict(steps=2, finetune=FineTune(epochs=1, batch_size=64), first_epochs=1, mu0=1e-3, mu_factor=2.0)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10))
    cn.train.fit(model, digits, epochs=10, lr=0.1, batch_size=64, quiet=True)
    return model


def linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_multiplier_update_hand_example():
    lams = {"a": torch.tensor([0.5, 0.0, -1.0])}
    w = {"a": torch.tensor([1.0, 2.0, 3.0])}
    delta = {"a": torch.tensor([1.0, 0.0, 1.0])}
    new = update_multipliers(lams, w, delta, 0.1)
    assert torch.allclose(new["a"], torch.tensor([0.5, -0.2, -1.2]))
    assert torch.equal(lams["a"], torch.tensor([0.5, 0.0, -1.0]))  # inputs untouched


def test_loss_fn_is_cross_entropy_plus_shifted_penalty(trained, digits):
    model = copy.deepcopy(trained)
    g = torch.Generator().manual_seed(1)
    weights = {n: m.weight for n, m in linears(model).items()}
    deltas = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    lams = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    mu = 0.37
    x, y = digits.train.x[:32], digits.train.y[:32]
    got = make_loss_fn(weights, deltas, lams, mu)(model, x, y)
    manual = F.cross_entropy(model(x), y).double()
    for n, w in weights.items():
        manual = manual + mu / 2 * ((w.double() - deltas[n].double() - lams[n].double() / mu) ** 2).sum()
    assert torch.allclose(got.double(), manual, rtol=1e-6)
    # the augmented Lagrangian -λᵀ(w-Δ) + μ/2‖w-Δ‖² differs from the penalty by the constant ‖λ‖²/(2μ)
    aug = sum((-lams[n] * (w - deltas[n])).sum() + mu / 2 * ((w - deltas[n]) ** 2).sum() for n, w in weights.items())
    const = sum((l ** 2).sum() for l in lams.values()) / (2 * mu)
    assert torch.allclose(lc_penalty(weights, deltas, lams, mu), aug + const, rtol=1e-5)
    got.backward()  # differentiable in the weights
    assert all(w.grad is not None for w in weights.values())


def test_schedules():
    cfg = LC(sparsity=0.9, steps=4, mu0=1e-3, mu_factor=1.5, finetune=FineTune(lr=0.2, epochs=3), lr_decay=0.5,
             first_epochs=7)
    assert mu_schedule(cfg) == pytest.approx([1e-3, 1.5e-3, 2.25e-3, 3.375e-3])
    assert lr_schedule(cfg) == pytest.approx([0.2, 0.1, 0.05, 0.025])
    assert epochs_schedule(cfg) == [7, 3, 3, 3]
    assert epochs_schedule(LC(sparsity=0.9, steps=2, finetune=FineTune(epochs=3), first_epochs=None)) == [3, 3]
    default = LC(sparsity=0.95)  # the toolkit's LeNet300 schedule
    assert len(mu_schedule(default)) == 40 and mu_schedule(default)[-1] == pytest.approx(9e-5 * 1.1 ** 39)
    assert epochs_schedule(default)[:2] == [40, 20] and default.finetune.nesterov and default.finetune.batch_size == 256


def test_loop_wiring_with_a_frozen_l_step(trained, monkeypatch):
    """With an L step that leaves w alone: Δ0 = Π(w), λ1 = −μ0(w − Δ0), Δ1 = Π(w − λ1/μ1), final w = Δ1."""
    calls = []
    monkeypatch.setattr(cn.train, "fit", lambda model, data, **kw: calls.append(kw) or model)
    model = copy.deepcopy(trained)
    cfg = LC(sparsity=0.9, steps=2, mu0=0.01, mu_factor=3.0, finetune=FineTune(epochs=2), first_epochs=5)
    out, history = run_lc(model, cfg, data=object(), quiet=True)
    names = list(linears(trained))
    w = [trained.get_submodule(n).weight.detach() for n in names]
    kappa = round(0.1 * sum(t.numel() for t in w))
    d0 = csteps.l0_constraint_grouped(w, kappa)
    lam = [-0.01 * (a - b) for a, b in zip(w, d0)]
    d1 = csteps.l0_constraint_grouped([a - l / 0.03 for a, l in zip(w, lam)], kappa)
    for n, expect in zip(names, d1):
        assert torch.allclose(out.get_submodule(n).weight, expect)
    assert [c["lr"] for c in calls] == pytest.approx([0.1, 0.098]) and [c["epochs"] for c in calls] == [5, 2]
    assert all(c["nesterov"] and c["schedule"] == "constant" and c["loss_fn"] is not None for c in calls)
    assert [h["step"] for h in history] == [-1, 0, 1] and history[1]["mu"] == pytest.approx(0.01)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_zero_steps_is_magnitude_pruning(trained, scope):
    lc_model = cn.compress(trained, LC(sparsity=0.95, scope=scope, steps=0))
    mp = cn.compress(trained, MagnitudePrune(sparsity=0.95, scope=scope, finetune=None))
    for a, b in zip(lc_model.state_dict().values(), mp.state_dict().values()):
        assert torch.equal(a, b)


def test_zero_steps_codebook_is_the_exact_optimum(trained):
    out = cn.compress(trained, LC(compression="codebook", k=3, steps=0))
    for n, m in linears(trained).items():
        assert torch.allclose(out.get_submodule(n).weight, csteps.optimal_codebook_1d(m.weight.detach(), 3)[2])


def run(trained, digits, **kw):
    return cn.compress(trained, LC(**{**FAST, **kw}), data=digits)


def test_l0_exact_global_budget_and_plain_module(trained, digits):
    out = run(trained, digits, sparsity=0.95)
    total = sum(m.weight.numel() for m in linears(out).values())
    budget = layer_budget(out)
    assert sum(b["kept"] for b in budget.values()) == round(0.05 * total)
    assert sum(b["share"] for b in budget.values()) == pytest.approx(1.0)
    for m in linears(out).values():
        assert type(m) is nn.Linear and not parametrize.is_parametrized(m)


def test_l0_layer_scope_and_selected_layers(trained, digits):
    out = run(trained, digits, sparsity=0.8, scope="layer", layers=("1", "3"))
    budget = layer_budget(out)
    assert budget["1"]["kept"] == round(0.2 * 64 * 96) and budget["3"]["kept"] == round(0.2 * 96 * 48)
    assert torch.equal(out.get_submodule("5").weight.count_nonzero(), torch.tensor(480))  # not selected


@pytest.mark.parametrize("k", [2, 4])
def test_codebook_at_most_k_values_per_layer(trained, digits, k):
    out = run(trained, digits, compression="codebook", k=k)
    for m in linears(out).values():
        assert 1 <= m.weight.unique().numel() <= k


@pytest.mark.parametrize("kind", ["binary", "scaled-binary"])
def test_binary_constant_magnitude_per_layer(trained, digits, kind):
    out = run(trained, digits, compression=kind)
    for m in linears(out).values():
        mags = m.weight.abs().unique()
        assert mags.numel() == 1 and (kind == "scaled-binary" or mags.item() == 1.0)


def test_ternary_and_low_rank_and_l1(trained, digits):
    for m in linears(run(trained, digits, compression="ternary")).values():
        assert m.weight.unique().numel() <= 3  # {-a, 0, +a}
        assert set(m.weight.abs().unique().tolist()) <= {0.0, m.weight.abs().max().item()}
    for m in linears(run(trained, digits, compression="low-rank", rank=4)).values():
        s = torch.linalg.svdvals(m.weight.detach().double())  # rank 4 up to float32 rounding of U·Vᵀ
        assert s[3] > 1e-3 * s[0] and bool((s[4:] <= 1e-5 * s[0]).all())
    ref = sum(float(m.weight.detach().abs().sum()) for m in linears(trained).values())
    out = run(trained, digits, compression="l1", kappa=0.3)
    assert sum(float(m.weight.detach().abs().sum()) for m in linears(out).values()) <= 0.3 * ref * (1 + 1e-5)


def test_penalty_forms_and_codebook_plus_sparse(trained, digits):
    out = run(trained, digits, compression="l0-penalty", alpha=1e-5)
    thr = (2 * 1e-5 / (FAST["mu0"] * FAST["mu_factor"])) ** 0.5  # last μ's hard threshold
    assert all(bool((m.weight.abs()[m.weight != 0] > thr * 0.999).all()) for m in linears(out).values())
    out = run(trained, digits, compression="codebook+l0", k=2, correction_sparsity=0.98)
    total = sum(m.weight.numel() for m in linears(out).values())
    distinct = sum(m.weight.unique().numel() for m in linears(out).values())
    assert distinct <= 2 * 3 + round(0.02 * total)


def test_quadratic_penalty_keeps_lambda_zero(trained, digits):
    _, hist = run_lc(copy.deepcopy(trained), LC(sparsity=0.95, multipliers=False, **FAST), digits, quiet=True)
    assert all(h["lambda_norm"] == 0.0 for h in hist)
    _, hist = run_lc(copy.deepcopy(trained), LC(sparsity=0.95, **FAST), digits, quiet=True)
    assert hist[-1]["lambda_norm"] > 0


def test_lc_beats_direct_compression_and_packs_smaller(trained, digits, tmp_path):
    direct = cn.compress(trained, LC(sparsity=0.95, steps=0))
    lc_model = cn.compress(trained, LC(sparsity=0.95, steps=8, finetune=FineTune(epochs=2, batch_size=64),
                                       first_epochs=2, mu0=1e-3, mu_factor=1.5), data=digits)
    acc_direct = cn.train.evaluate(direct, digits)["accuracy"]
    acc_lc = cn.train.evaluate(lc_model, digits)["accuracy"]
    assert acc_lc >= acc_direct and acc_lc > 0.85
    assert cn.pack.packed_size(lc_model) < cn.pack.packed_size(trained)
    path = tmp_path / "lc.cnz"
    cn.pack.save(lc_model, path)
    back = cn.pack.load(path)
    for a, b in zip(back.state_dict().values(), lc_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [
    dict(sparsity=1.0), dict(sparsity=1.5), dict(sparsity=-0.1), dict(), dict(compression="l1"),
    dict(compression="l0-penalty"), dict(compression="low-rank"), dict(compression="codebook", k=0),
    dict(compression="codebook+l0", correction_sparsity=1.0), dict(sparsity=0.9, scope="both"),
    dict(sparsity=0.9, steps=-1), dict(sparsity=0.9, mu0=0.0), dict(compression="huffman"),
    dict(compression="l1", kappa=2.0), dict(keep=0.1), dict(sparsity=0.9, lr=0.1), dict(sparsity=0.9, layers=()),
])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        LC(**kwargs)


def test_errors_from_model_and_data(trained):
    with pytest.raises(ModelError, match="nope"):
        cn.compress(trained, LC(sparsity=0.9, layers=("nope",)))
    with pytest.raises(ConfigError, match="data"):
        cn.compress(trained, LC(sparsity=0.9, steps=1))
    assert LC(sparsity=0.0).sparsity == 0.0  # pruning nothing is allowed


def test_config_round_trip():
    cfg = from_dict({"method": "lc", "sparsity": 0.95, "layers": ["fc*"], "steps": 3, "finetune": {"epochs": 2}})
    assert cfg == LC(sparsity=0.95, layers=("fc*",), steps=3, finetune=FineTune(epochs=2))
    assert from_dict(to_dict(cfg)) == cfg and cfg.finetune.lr == 0.1  # unset fields keep the toolkit's values
    with pytest.raises(ConfigError):
        from_dict({"method": "lc", "sparsity": 0.95, "kapa": 1})
    with pytest.raises(ConfigError, match="renamed: use sparsity = 1 - keep"):
        from_dict({"method": "lc", "keep": 0.05})
