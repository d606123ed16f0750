"""measure_latency: positive medians, restored state, bad arguments."""

import pytest
import torch
from torch import nn

import compactnn
from compactnn.errors import ConfigError
from compactnn.report import measure_latency


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def test_positive_median_for_each_batch_size():
    out = measure_latency(_model(), (1, 8, 8), repeats=5, warmup=1)
    assert list(out) == [1, 256]
    assert all(isinstance(v, float) and v > 0 for v in out.values())


def test_restores_mode_and_threads():
    model = _model().train()
    model[2].eval()
    before = torch.get_num_threads()
    measure_latency(model, (1, 8, 8), batch_sizes=(2,), repeats=2, warmup=0, threads=1)
    assert torch.get_num_threads() == before
    assert model.training and model[1].training and not model[2].training


def test_runs_in_eval_and_inference_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled(), x.shape[0]))
            return x

    measure_latency(Probe().train(), (3,), batch_sizes=(4,), repeats=3, warmup=2)
    assert seen == [(False, True, 4)] * 5


@pytest.mark.parametrize("kwargs", [{"batch_sizes": (0,)}, {"batch_sizes": ()}, {"repeats": 0},
                                    {"warmup": -1}, {"threads": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        measure_latency(_model(), (1, 8, 8), **kwargs)


def test_inference_form_folds_bn_keeps_function_and_leaves_model_alone():
    from compactnn.report import inference_form

    torch.manual_seed(0)
    model = compactnn.models.create("resnet20", input_shape=(1, 12, 12), num_classes=10)
    for m in model.modules():  # non-trivial BN statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    deployed = inference_form(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    conv = next(m for m in deployed.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), atol=1e-5, rtol=1e-4)


def test_steady_allocator_applies_on_glibc_and_is_idempotent():
    import platform

    from compactnn.report.latency import steady_allocator

    first = steady_allocator()
    assert steady_allocator() == first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first


class _Residual(nn.Module):
    """conv-BN-ReLU, conv-BN, residual add, ReLU, pooled linear head: the patterns Inductor fuses."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + y)
        return self.fc(y.mean((2, 3)))


@pytest.mark.skipif(__import__("shutil").which("cc") is None and __import__("shutil").which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_inference_form_compiled_keeps_function_and_leaves_model_alone():
    from compactnn.report import inference_form

    torch.manual_seed(0)
    model = _Residual()
    for bn in (model.b1, model.b2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = inference_form(model, compile=True)
    x = torch.randn(4, 1, 6, 6)
    with torch.inference_mode():
        torch.testing.assert_close(deployed(x), model(x), atol=1e-5, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
