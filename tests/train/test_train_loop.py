"""fit/evaluate: determinism, accuracy, step hooks, modes, loss override, argument errors."""

import pytest
import torch
import torch.nn.functional as F

from compactnn.data import ArrayDataset
from compactnn.errors import ConfigError, DataError
from compactnn.models import create
from compactnn.train import evaluate, fit, lr_factor


def fresh(name, data, seed=0, **kw):
    torch.manual_seed(seed)
    return create(name, data=data, **kw)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_identical_weights(digits):
    kw = dict(epochs=1, lr=0.05, batch_size=64, quiet=True)
    a = fit(fresh("lenet5", digits), digits, seed=3, **kw)
    b = fit(fresh("lenet5", digits), digits, seed=3, **kw)
    c = fit(fresh("lenet5", digits), digits, seed=4, **kw)
    assert same_state(a, b)
    assert not same_state(a, c)  # the seed changes the shuffle


def test_lenet300_learns_digits(digits):
    model = fit(fresh("lenet300", digits), digits, epochs=5, lr=0.1, batch_size=64, quiet=True)
    result = evaluate(model, digits)
    assert result["accuracy"] > 0.9
    assert 0 < result["loss"] < 0.5


def test_fit_returns_the_same_module_and_changes_it(digits):
    model = fresh("lenet300", digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fit(model, digits, epochs=1, quiet=True) is model
    assert not torch.equal(before["fc1.weight"], model.fc1.weight)


def test_step_hooks_called_once_per_step_with_total(digits):
    calls = []
    model = fresh("lenet300", digits)
    fit(model, digits, epochs=2, batch_size=100, quiet=True,
        step_hooks=[lambda m, step, total: calls.append((m, step, total))])
    per_epoch = -(-len(digits.train) // 100)  # 1437 rows -> 15 steps
    assert [(s, t) for _, s, t in calls] == [(s, 2 * per_epoch) for s in range(1, 2 * per_epoch + 1)]
    assert all(m is model for m, _, _ in calls)


def test_max_steps_stops_early_and_sets_total(digits):
    calls = []
    fit(fresh("lenet300", digits), digits, epochs=3, batch_size=100, max_steps=20, quiet=True,
        step_hooks=[lambda m, step, total: calls.append((step, total))])
    assert calls == [(s, 20) for s in range(1, 21)]


def test_loss_fn_override_is_used_and_matches_default(digits):
    seen = []

    def loss_fn(model, x, y):
        seen.append(len(x))
        return F.cross_entropy(model(x), y)

    a = fit(fresh("lenet300", digits), digits, epochs=1, batch_size=128, quiet=True, loss_fn=loss_fn)
    b = fit(fresh("lenet300", digits), digits, epochs=1, batch_size=128, quiet=True)
    assert sum(seen) == len(digits.train) and len(seen) == 12
    assert same_state(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_and_array_dataset_input(digits, optimizer):
    lr = 0.1 if optimizer == "sgd" else 1e-3
    model = fit(fresh("lenet300", digits), digits.train, epochs=3, lr=lr, optimizer=optimizer, batch_size=64,
                quiet=True)
    assert evaluate(model, digits.test)["accuracy"] > 0.85


def test_evaluate_matches_manual_computation_and_restores_modes(digits):
    model = fresh("lenet5", digits)
    model.train()
    result = evaluate(model, digits, batch_size=7)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        logits = model.eval()(digits.test.x)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == digits.test.y).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, digits.test.y).item(), rel=1e-5)
    # mixed modes come back as they were, for evaluate and for fit
    model.train()
    model.fc1.eval()
    evaluate(model, digits)
    assert model.training and not model.fc1.training and model.conv1.training
    model.eval()
    fit(model, digits, epochs=1, max_steps=2, quiet=True)
    assert not any(m.training for m in model.modules())


def test_evaluate_batchnorm_uses_running_stats(digits):
    model = fresh("resnet20", digits, widths=(4, 4, 8))
    few = digits.test.subset(30)
    a = evaluate(model, few, batch_size=30)
    b = evaluate(model, few, batch_size=1)
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_lr_factor_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert [lr_factor("step", s, 8) for s in (0, 3, 4, 5, 6, 8)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor("constant", 7, 10) == 1.0


def test_schedule_is_applied(digits):
    kw = dict(epochs=1, batch_size=100, lr=0.2, quiet=True)
    runs = {s: fit(fresh("lenet300", digits), digits, schedule=s, **kw) for s in ("cosine", "step", "constant")}
    assert not same_state(runs["cosine"], runs["step"]) and not same_state(runs["step"], runs["constant"])
    # the constant schedule is bit-identical to a hand-written torch.optim.SGD loop over the same shuffle
    model = fresh("lenet300", digits)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    for idx in torch.randperm(len(digits.train), generator=g).split(100):
        opt.zero_grad()
        F.cross_entropy(model(digits.train.x[idx]), digits.train.y[idx]).backward()
        opt.step()
    assert same_state(model, runs["constant"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"optimizer": "rmsprop"}, "valid optimizers are sgd, adam, adamw"),
    ({"schedule": "poly"}, "valid schedules"),
    ({"lr": 0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": -1}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"resume": True}, "checkpoint"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
])
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fit(fresh("lenet300", digits), digits, quiet=True, **kwargs)


def test_bad_data():
    model = create("lenet300", input_shape=(1, 8, 8))
    with pytest.raises(DataError, match="a DataBundle, a Dataset or a DataLoader"):
        fit(model, [1, 2, 3], quiet=True)
    with pytest.raises(DataError, match="empty"):
        evaluate(model, ArrayDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))


def test_single_row_last_batch_is_dropped_so_batchnorm_trains(digits):
    data = digits.train.subset(65)  # 65 = 64 + 1: the lone last row would crash BatchNorm in train mode
    calls = []
    model = fresh("resnet20", digits, widths=(4, 4, 8))
    fit(model, data, epochs=2, batch_size=64, quiet=True, step_hooks=[lambda m, s, t: calls.append((s, t))])
    assert calls == [(1, 2), (2, 2)]


def test_divergence_stops_with_a_clear_error(digits):
    model = create("lenet300", data=digits)
    with pytest.raises(ConfigError, match=r"training diverged at step \d+ \(epoch 1\): loss is (nan|inf); lower lr"):
        fit(model, digits, epochs=1, lr=1e6, batch_size=64, quiet=True)
