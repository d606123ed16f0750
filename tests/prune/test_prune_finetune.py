"""Magnitude pruning with fine-tuning through compactnn.train.fit on sklearn digits (small MLP, a few seconds)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import compactnn as cn
from compactnn.config import FineTune
from compactnn.prune import MagnitudePrune, PruneSchedule, magnitude_masks, masked
from compactnn.train import evaluate, fit


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    fit(model, digits, epochs=10, lr=0.1, batch_size=64, quiet=True)
    return model


def linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_masks_hold_at_every_step_of_fit(digits, trained):
    import copy

    model = copy.deepcopy(trained)
    layers = linears(model)
    masks = magnitude_masks({n: m.weight for n, m in layers.items()}, 0.7)
    violations = []

    def check(model, step, total):
        violations.extend(n for n, m in layers.items() if torch.any(m.weight.detach()[~masks[n]] != 0))

    with masked(layers, masks):
        fit(model, digits, epochs=1, lr=0.05, batch_size=128, quiet=True, step_hooks=[check])
    assert violations == []
    for n, m in layers.items():
        assert type(m) is nn.Linear and not parametrize.is_parametrized(m)
        assert torch.all(m.weight[~masks[n]] == 0)
        assert not torch.equal(m.weight, trained.get_submodule(n).weight)  # it did train


def test_agp_schedule_through_fit_follows_formula(digits, trained):
    import copy

    model = copy.deepcopy(trained)
    layers = linears(model)
    total = sum(m.weight.numel() for m in layers.values())
    observed = []
    with masked(layers, {}) as handle:

        def prune_to(s):
            handle.update(magnitude_masks({n: m.weight for n, m in layers.items()}, s))

        sched = PruneSchedule(prune_to, 0.8, "agp", start=0.25, end=0.75, every=2)

        def record(model, step, total_steps):
            zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
            observed.append((step, zeros, sched.sparsity_at(step, total_steps)))

        sched.begin()
        fit(model, digits, epochs=2, lr=0.05, batch_size=128, quiet=True, step_hooks=[sched, record])
    t0, t_end, dt = sched.steps(24)  # 1437 examples / 128 = 12 steps per epoch
    assert (t0, t_end, dt) == (6, 18, 2)
    assert [s for s, _ in sched.history] == [0] + list(range(8, 19, 2))
    for step, zeros, target in observed:
        if step >= t0 and (step - t0) % dt == 0 or step >= t_end:  # just pruned: exact count
            assert zeros == total - round((1 - target) * total)
    assert observed[-1][1] == total - round(0.2 * total)
    zeros_seq = [z for _, z, _ in observed]
    assert zeros_seq == sorted(zeros_seq)  # pruned weights never come back


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_90_and_finetune_keeps_accuracy(digits, trained, scope):
    base = evaluate(trained, digits)["accuracy"]
    small = cn.compress(trained, MagnitudePrune(sparsity=0.9, scope=scope, finetune=FineTune(epochs=4)), data=digits)
    acc = evaluate(small, digits)["accuracy"]
    assert acc >= base - 0.04, (base, acc)
    layers = linears(small)
    assert all(type(m) is nn.Linear and not parametrize.is_parametrized(m) for m in layers.values())
    assert list(small.state_dict()) == list(trained.state_dict())
    n = sum(m.weight.numel() for m in layers.values())
    nonzero = sum(int((m.weight != 0).sum()) for m in layers.values())
    assert nonzero == round(0.1 * n)
    if scope == "layer":
        assert all(int((m.weight != 0).sum()) == round(0.1 * m.weight.numel()) for m in layers.values())


def test_agp_compress_reaches_exact_sparsity(digits, trained):
    cfg = MagnitudePrune(sparsity=0.85, schedule="agp", agp_every=3, finetune=FineTune(epochs=2, lr=0.02))
    small = cn.compress(trained, cfg, data=digits)
    layers = linears(small)
    n = sum(m.weight.numel() for m in layers.values())
    assert sum(int((m.weight != 0).sum()) for m in layers.values()) == round(0.15 * n)
    assert evaluate(small, digits)["accuracy"] > 0.85
