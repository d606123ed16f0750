"""count_macs against hand-computed numbers."""

import pytest
import torch
from torch import nn

from compactnn.errors import ConfigError, ModelError
from compactnn.report import count_macs, layer_modules


def test_linear_macs_batch1():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    # 12*5 and 5*2 per example
    assert count_macs(model, (1, 3, 4)) == {"1": 60, "3": 10}


def test_linear_counts_every_position_of_3d_input():
    # input (7 positions, 10 features): 7 * 10 * 4
    assert count_macs(nn.Linear(10, 4), (7, 10)) == {"": 280}


def test_conv2d_stride_padding_groups_dilation():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2, dilation=2)
    # effective kernel 2*(3-1)+1 = 5; out side = (9 + 2 - 5) // 2 + 1 = 4; out elems 6*4*4 = 96
    # each output element: (4/2 input channels) * 3*3 taps = 18 MACs -> 96 * 18
    assert count_macs(nn.Sequential(conv), (4, 9, 9)) == {"0": 1728}


def test_conv2d_rectangular_kernel_no_padding():
    conv = nn.Conv2d(3, 8, kernel_size=(3, 2), stride=(1, 2))
    # out H = 10 - 3 + 1 = 8, out W = (10 - 2)//2 + 1 = 5 -> 8*8*5 = 320 elems, each 3*3*2 = 18
    assert count_macs(conv, (3, 10, 10)) == {"": 5760}


def test_depthwise_conv_and_conv1d():
    dw = nn.Conv2d(5, 5, 3, padding=1, groups=5)  # 5*6*6 outputs, 1*9 each
    assert count_macs(dw, (5, 6, 6)) == {"": 1620}
    c1 = nn.Conv1d(3, 4, kernel_size=5)  # out length 16: 4*16 outputs, 3*5 each
    assert count_macs(c1, (3, 20)) == {"": 960}


def test_conv_transpose2d():
    ct = nn.ConvTranspose2d(2, 4, kernel_size=3, stride=2, groups=2)
    # every input element (2*4*4 = 32) hits (4/2)*3*3 = 18 outputs
    assert count_macs(ct, (2, 4, 4)) == {"": 576}


def test_conv_transpose_matches_brute_force_count():
    # brute force: MACs of a transpose conv = MACs of the forward conv whose gradient it is
    ct = nn.ConvTranspose2d(3, 2, kernel_size=3, stride=1, padding=0)
    conv = nn.Conv2d(2, 3, kernel_size=3)  # maps (2, 7, 7) -> (3, 5, 5), the adjoint of ct on (3, 5, 5)
    assert count_macs(ct, (3, 5, 5))[""] == count_macs(conv, (2, 7, 7))[""] == 3 * 25 * 2 * 9


def test_norm_layers_count_zero_and_are_listed():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2))
    assert count_macs(model, (1, 6, 6)) == {"0": 2 * 16 * 9, "1": 0}


def test_pruned_weights_still_count_dense_macs():
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.zero_()
    assert count_macs(lin, (6,)) == {"": 18}


class _Factorized(nn.Module):
    """A module that says its own MACs; its children must not be counted again."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 2, bias=False)
        self.b = nn.Linear(2, 8)

    def forward(self, x):
        return self.b(self.a(x))

    def macs(self, input, output):
        assert isinstance(input, tuple) and input[0].shape[-1] == 8
        return 1000 + output.shape[-1]


def test_module_macs_hook_overrides_and_folds_children():
    model = nn.Sequential(_Factorized(), nn.Linear(8, 3))
    assert count_macs(model, (8,)) == {"0": 1008, "1": 24}
    assert [(n, whole) for n, _, whole in layer_modules(model)] == [("0", True), ("1", False)]


def test_shared_layer_called_twice_sums_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert count_macs(Twice(), (4,)) == {"fc": 32}


def test_restores_train_mode_per_module():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model.train()
    model[1].eval()
    count_macs(model, (3,))
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize("shape", [None, (), (0, 3), ("a", 2), (1.5, 2)])
def test_bad_input_shape_is_config_error(shape):
    with pytest.raises(ConfigError):
        count_macs(nn.Linear(2, 2), shape)


def test_input_that_does_not_fit_is_model_error():
    with pytest.raises(ModelError) as info:
        count_macs(nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), (1, 3, 3))
    assert "\n" not in str(info.value)


def test_recurrent_attention_and_functional_products_are_counted():
    import torch.nn.functional as F

    class Gate(nn.Module):  # a user layer computing with its weight functionally
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 8))

        def forward(self, x):
            return F.linear(x, self.weight)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.lstm = nn.LSTM(8, 4, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = nn.GRU(8, 5, batch_first=True)
            self.gate = Gate()

        def forward(self, x):  # x: (B, 3, 8)
            a = self.att(x, x, x)[0]
            self.lstm(a)
            self.gru(a)
            self.gate(a)
            return a @ a.transpose(-1, -2)  # a top-level product: 3 * 3 * 8

    counts = count_macs(Net(), (3, 8))
    assert counts["att"] == 4 * 3 * 8 * 8 + 2 * 3 * 3 * 8       # 4 projections + QK^T and AV
    assert counts["lstm"] == 2 * 2 * 3 * (4 * 4 * (8 + 4))      # 2 layers x 2 directions (layer 2 input 2*4 = 8)
    assert counts["gru"] == 3 * 3 * 5 * (8 + 5)
    assert counts["gate"] == 3 * 8 * 6
    assert counts[""] == 3 * 3 * 8


def test_lstm_projection_is_counted():
    lstm = nn.LSTM(6, 8, proj_size=3, batch_first=True)
    assert count_macs(lstm, (5, 6))[""] == 5 * (4 * 8 * (6 + 3) + 8 * 3)
