"""Knowledge distillation: the loss against a hand computation, teachers in every form, the teacher cache, the
``teacher`` field of FineTune honoured by other methods, and the ``distill`` stage with hints and attention."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn as cn
from compactnn.api import from_dict
from compactnn.config import FineTune, TeacherSpec, to_dict
from compactnn.distill import Distill, TeacherOutputs, attention_map, kd_loss, load_teacher
from compactnn.distill.features import feature_loss
from compactnn.errors import ConfigError, ModelError, TrainingDiverged


@pytest.fixture(scope="module")
def small(digits):
    return dataclasses.replace(digits, train=digits.train.subset(300, seed=2), test=digits.test.subset(120, seed=2))


@pytest.fixture(scope="module")
def teacher(small):
    model = cn.models.create("lenet300", data=small, seed=5)
    cn.train.fit(model, small, epochs=3, lr=0.1, quiet=True)
    return model


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_loss_matches_a_hand_computation_with_t_squared_and_batchmean():
    zs = np.array([[1.0, -0.5, 2.0, 0.0], [0.3, 0.2, -1.0, 1.5], [-2.0, 0.0, 0.5, 0.1]])
    zt = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 2.0], [1.0, -1.0, 0.0, 0.0]])
    y = np.array([2, 3, 0])
    T, alpha = 3.0, 0.6
    ps, pt = _softmax(zs / T), _softmax(zt / T)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))  # per example sum over classes, mean over batch
    ce = np.mean(-np.log(_softmax(zs)[np.arange(3), y]))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # the per-class mean (KLDivLoss's default, the public-code bug) would be 4x (C = 4) smaller on the soft term
    assert alpha * T * T * kl / 4 + (1 - alpha) * ce != pytest.approx(got.item(), rel=1e-3)


def test_kd_loss_gradient_is_p_s_minus_p_t_over_t_per_example():
    torch.manual_seed(0)
    zs = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, 7, dtype=torch.float64)
    T = 2.5
    kd_loss(zs, zt, torch.zeros(5, dtype=torch.long), T, 1.0).backward()
    expected = T * (F.softmax(zs.detach() / T, 1) - F.softmax(zt / T, 1)) / 5  # T^2 * (p_s - p_t) / T / N
    assert torch.allclose(zs.grad, expected, atol=1e-12)


def test_kd_loss_refuses_mismatched_classes():
    with pytest.raises(ModelError, match="same classes"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 2.0, 0.5)


def test_teacher_forms(small, teacher, tmp_path):
    assert load_teacher(teacher) is teacher
    path = tmp_path / "t.cnz"
    cn.pack.save(teacher, path)
    loaded = load_teacher(str(path))
    x = small.test.x[:8]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), teacher.eval()(x))
    with pytest.raises(ConfigError, match="not found"):
        load_teacher(str(tmp_path / "missing.cnz"))
    spec = TeacherSpec(model="lenet300", train=FineTune(epochs=8, lr=0.1))
    built = load_teacher(spec, small)
    assert load_teacher({"model": "lenet300", "train": {"epochs": 8, "lr": 0.1}}, small) is built  # trained once
    assert cn.train.evaluate(built, small)["accuracy"] > 0.6
    with pytest.raises(ConfigError, match="unknown key"):
        load_teacher({"model": "lenet300", "epochs": 3}, small)


def test_finetune_teacher_round_trips_through_yaml():
    cfg = from_dict({"method": "magnitude-prune", "sparsity": 0.5,
                     "finetune": {"epochs": 1, "teacher": {"model": "resnet56", "train": {"epochs": 2}},
                                  "temperature": 3, "alpha": 0.5}})
    assert isinstance(cfg.finetune.teacher, TeacherSpec) and cfg.finetune.teacher.train.epochs == 2
    assert from_dict(to_dict(cfg)) == cfg and hash(from_dict(to_dict(cfg))) == hash(cfg)
    with pytest.raises(ConfigError, match="teacher"):
        from_dict({"method": "magnitude-prune", "sparsity": 0.5, "finetune": {"teacher": 3}})
    with pytest.raises(ConfigError, match="give one of them"):
        FineTune(teacher="t.cnz", loss=lambda m, x, y: 0)


def test_teacher_outputs_are_cached_per_example_by_content(teacher, small):
    outs = TeacherOutputs(teacher, cache=True)
    x = small.train.x[:40]
    first = outs(x)[0]
    assert outs.calls == 40
    perm = torch.randperm(40)
    again = outs(x[perm].clone())[0]  # another order, another tensor: same content, no teacher call
    assert outs.calls == 40 and torch.equal(again, first[perm])
    outs(small.train.x[30:50])
    assert outs.calls == 50  # only the 10 new rows
    with torch.no_grad():
        assert torch.allclose(first, teacher.eval()(x), atol=1e-6)
    uncached = TeacherOutputs(teacher, cache=False)
    uncached(x), uncached(x)
    assert uncached.calls == 80


class _Counting(nn.Module):
    """A teacher that counts the examples it sees and predicts class ``(c + 1) % 10`` where the labels say ``c``."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        self.seen += len(x)
        return torch.roll(self.inner(x), shifts=1, dims=1)


def test_any_method_fine_tunes_against_a_teacher_without_code_of_its_own(small, teacher):
    student = cn.models.create("lenet300", data=small, seed=0)
    counting = _Counting(teacher)
    base = dict(sparsity=0.5)
    ft = dict(epochs=20, lr=0.1, optimizer="sgd", batch_size=64)
    plain = cn.compress(student, cn.prune.MagnitudePrune(**base, finetune=FineTune(**ft)), data=small)
    taught = cn.compress(student, cn.prune.MagnitudePrune(
        **base, finetune=FineTune(**ft, teacher=counting, temperature=2.0, alpha=1.0)), data=small)
    assert counting.seen == len(small.train)  # 20 epochs, the teacher ran once per example (cache)
    x, shifted = small.train.x, (small.train.y + 1) % 10
    with torch.no_grad():
        def agree(m):
            return (m.eval()(x).argmax(1) == shifted).float().mean().item()

        assert agree(taught) > 0.35 > 0.2 > agree(plain)  # alpha = 1: it learnt the teacher's (shifted) classes
    kmeans = cn.compress(student, cn.quantize.KMeansQuantize(
        bits=2, finetune=FineTune(epochs=1, teacher=counting, alpha=1.0)), data=small)
    assert counting.seen == 2 * len(small.train) and isinstance(kmeans, nn.Module)


def test_distill_stage_trains_a_student_towards_the_teacher(small, teacher):
    student = cn.models.create("lenet300", data=small, seed=1)
    shifted = _Counting(teacher)  # predicts the next class: a student that follows it cannot be fitting the labels
    cfg = Distill(teacher=shifted, temperature=1.0, alpha=1.0,
                  finetune=FineTune(epochs=20, lr=0.1, optimizer="sgd", batch_size=64))
    x = small.train.x
    with torch.no_grad():
        t = shifted.eval()(x).argmax(1)
        before = (student.eval()(x).argmax(1) == t).float().mean().item()
    out = cn.compress(student, cfg, data=small)
    with torch.no_grad():
        after = (out.eval()(x).argmax(1) == t).float().mean().item()
    assert after > 0.5 and before < 0.2
    with pytest.raises(ConfigError, match="teacher_layers"):
        Distill(teacher=teacher, features="hints", layers=("fc1",))
    with pytest.raises(ConfigError, match="finetune"):
        Distill(teacher=teacher, finetune=FineTune(teacher=teacher))


def test_hints_train_a_regressor_and_leave_no_trace(small, teacher):
    student = cn.models.create("lenet300", data=small, seed=1)
    names_before = [n for n, _ in student.named_parameters()]
    x, y = small.train.x[:64], small.train.y[:64]
    with feature_loss(student, teacher, {"fc2": student.fc2}, {"fc1": teacher.fc1}, "hints", 20.0, 2.0, 0.5,
                      small, x[:2]) as loss_fn:
        names = [n for n, _ in student.named_parameters()]
        assert names[len(names_before):] == ["compactnn_hint_regressors.0.weight"]  # 1x1 "conv" = Linear 100->300
        opt = torch.optim.SGD(student.parameters(), lr=0.05)
        loss_fn(student, x, y)
        first = loss_fn.last_feature
        for _ in range(60):
            opt.zero_grad()
            loss_fn(student, x, y).backward()
            opt.step()
        assert loss_fn.last_feature < 0.5 * first  # the regressed student feature moved to the teacher's
    assert [n for n, _ in student.named_parameters()] == names_before  # the regressor is gone
    cfg = Distill(teacher=teacher, features="hints", layers=("fc2",), teacher_layers=("fc1",),
                  finetune=FineTune(epochs=1, lr=0.05, optimizer="sgd", batch_size=64))
    out = cn.compress(student, cfg, data=small)
    assert [n for n, _ in out.named_parameters()] == names_before
    with pytest.raises(ModelError, match="as many"):
        cn.compress(student, Distill(teacher=teacher, features="hints", layers=("fc1", "fc2"),
                                     teacher_layers=("fc1",), finetune=FineTune(epochs=1)), data=small)


def test_a_diverging_hint_run_names_the_feature_weight(small, teacher):
    student = cn.models.create("lenet300", data=small, seed=1)
    cfg = Distill(teacher=teacher, features="hints", layers=("fc2",), teacher_layers=("fc1",), feature_weight=1e12,
                  finetune=FineTune(epochs=1, lr=0.05, optimizer="sgd", batch_size=64))
    with pytest.raises(TrainingDiverged, match=r"diverged.*lower feature_weight \(now 1e\+12\)"):
        cn.compress(student, cfg, data=small)


def test_attention_map_and_attention_transfer_on_conv_nets(digits):
    f = torch.randn(3, 5, 4, 4)
    a = attention_map(f)
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.allclose(a, F.normalize(f.pow(2).mean(1).flatten(1), dim=1))
    data = dataclasses.replace(digits, train=digits.train.subset(128, seed=0), test=digits.test.subset(64, seed=0))
    teacher = cn.models.create("resnet20", data=data, seed=0)
    student = cn.models.create("lenet5", data=data, seed=0)
    cfg = Distill(teacher=teacher, features="attention", layers=("conv2",), teacher_layers=("layer3",),
                  finetune=FineTune(epochs=1, lr=0.01, optimizer="sgd", batch_size=64))
    out = cn.compress(student, cfg, data=data)
    assert math.isfinite(cn.train.evaluate(out, data)["loss"])


def test_a_spec_teacher_is_not_reused_for_other_data_that_took_a_freed_data_sets_place(small, monkeypatch):
    """The trained-spec cache is keyed by the training set's id; CPython gives a freed set's id to new objects, so
    a new data set may arrive with the id of a set whose teacher is cached. Simulated here by making every id equal:
    each data set must still get a teacher trained on itself."""
    from compactnn.distill import kd

    trained_on = []

    def fake_fit(model, data, **kwargs):  # records which training set each teacher was trained on
        trained_on.append(data.train)
        return model

    monkeypatch.setattr(cn.train, "fit", fake_fit)
    monkeypatch.setattr(kd, "id", lambda obj: 7, raising=False)  # every data set looks like the same address
    spec = TeacherSpec(model="lenet300", train=FineTune(epochs=1, lr=0.1))
    for i in range(3):
        data = dataclasses.replace(small, train=small.train.subset(50 + i, seed=i))
        teacher = load_teacher(spec, data)
        assert len(trained_on) == i + 1 and trained_on[-1] is data.train, f"data set {i} got another set's teacher"
        assert load_teacher(spec, data) is teacher  # the same data set still reuses its teacher
