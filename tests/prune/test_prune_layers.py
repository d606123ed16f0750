"""compactnn.layers: selecting layers by name pattern, errors naming the pattern, stripping parametrizations."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compactnn.errors import ModelError
from compactnn.layers import select_layers, strip_parametrizations, weight_layers


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 6 * 6, 16), nn.BatchNorm1d(16)), nn.Linear(16, 10),
    )


def test_default_selects_all_linear_and_conv_in_module_order():
    assert list(select_layers(small_net())) == ["0", "3.0", "4"]
    assert list(weight_layers(small_net(), (nn.Linear,))) == ["3.0", "4"]


def test_patterns_select_and_weight_suffix_matches():
    net = small_net()
    assert list(select_layers(net, ["3.*"])) == ["3.0"]
    assert list(select_layers(net, ["4.weight", "0"])) == ["0", "4"]  # module order, not pattern order
    assert list(select_layers(net, "?")) == ["0", "4"]


def test_unknown_pattern_names_pattern_and_lists_real_layers():
    with pytest.raises(ModelError) as err:
        select_layers(small_net(), ["0", "fc9"], what="prunable")
    msg = str(err.value)
    assert "'fc9'" in msg and "prunable" in msg and "0, 3.0, 4" in msg and "\n" not in msg


def test_pattern_matching_only_non_weight_layer_is_an_error():
    with pytest.raises(ModelError, match="'3.1'"):  # the BatchNorm exists but is not a Linear/Conv
        select_layers(small_net(), ["3.1"])


def test_model_without_weight_layers_is_an_error():
    with pytest.raises(ModelError, match="no weight layers"):
        select_layers(nn.Sequential(nn.ReLU()))


def test_strip_parametrizations_gives_plain_layer_in_usual_order():
    layer = nn.Linear(3, 2)

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    before = layer.weight.detach().clone()
    parametrize.register_parametrization(layer, "weight", Double())
    strip_parametrizations(layer)
    assert type(layer) is nn.Linear and not parametrize.is_parametrized(layer)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert torch.equal(layer.weight, 2 * before)
    strip_parametrizations(layer)  # no-op on a plain layer
    assert type(layer) is nn.Linear


def test_run_finetune_defaults_lr_and_needs_data(monkeypatch):
    import compactnn.train
    from compactnn.config import FineTune
    from compactnn.errors import ConfigError
    from compactnn.layers import run_finetune

    calls = []
    monkeypatch.setattr(compactnn.train, "fit", lambda model, data, **kw: calls.append(kw) or model)
    hook = lambda model, step, total: None  # noqa: E731
    sgd_trained = nn.Linear(2, 2)
    sgd_trained.compactnn_training = {"optimizer": "sgd", "lr": 0.1}  # what fit records
    run_finetune(sgd_trained, "data", FineTune(epochs=3), "m", step_hooks=[hook])
    run_finetune(nn.Linear(2, 2), "data", FineTune(lr=0.2, optimizer="adam"), "m")
    run_finetune(nn.Linear(2, 2), "data", FineTune(epochs=2), "m")  # trained elsewhere: AdamW at a small lr
    assert calls == [{"lr": 0.01, "epochs": 3, "optimizer": "sgd", "step_hooks": (hook,)},
                     {"lr": 0.2, "epochs": 5, "optimizer": "adam", "step_hooks": ()},
                     {"lr": 1e-4, "epochs": 2, "optimizer": "adamw", "step_hooks": ()}]
    with pytest.raises(ConfigError, match="m: fine-tuning needs data"):
        run_finetune(nn.Linear(2, 2), None, FineTune(), "m")
