"""Tucker-2 and CP convolutions from a trained conv (tensorly): the factored conv equals conv2d with the rebuilt
kernel (float64), reconstruction error falls with rank (Tucker exact at full rank), shapes, errors, packing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("tensorly")

import compactnn.pack as pack  # noqa: E402
from compactnn.decompose.tucker_cp import CPConv2d, TuckerConv2d, relative_error  # noqa: E402
from compactnn.errors import ModelError  # noqa: E402


GEOMETRY = [(3, 1, 0, 1), (3, 2, 1, 1), ((3, 5), (1, 2), (1, 2), (2, 1)), (1, 1, 0, 1)]


@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_tucker_equals_conv_with_rebuilt_kernel(f64, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding, dilation=dilation)
    tk = TuckerConv2d.from_conv(conv, (3, 2))
    assert tk.reduce.weight.shape == (2, 6, 1, 1) and tk.core.weight.shape[:2] == (3, 2)
    x = torch.randn(2, 6, 11, 10)
    w = tk.full_weight()
    assert w.shape == conv.weight.shape
    ref = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(tk(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_cp_equals_conv_with_rebuilt_kernel(f64, kernel, stride, padding, dilation):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding, dilation=dilation)
    cp = CPConv2d.from_conv(conv, 5, n_iter_max=20)
    assert cp.vertical.groups == 5 and cp.horizontal.groups == 5
    x = torch.randn(2, 6, 11, 10)
    w = cp.full_weight()
    ref = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(cp(x), ref, rtol=1e-10, atol=1e-12)


def test_tucker_error_falls_with_rank_and_is_exact_at_full_rank(f64):
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 12, 3)
    errs = [relative_error(conv, TuckerConv2d.from_conv(conv, r)) for r in (1, 2, 4, 6)]
    assert all(b < a for a, b in zip(errs, errs[1:]))
    full = TuckerConv2d.from_conv(conv, (12, 8))
    assert relative_error(conv, full) < 1e-12


def test_cp_error_falls_with_rank(f64):
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 8, 3)
    errs = [relative_error(conv, CPConv2d.from_conv(conv, r, n_iter_max=100)) for r in (1, 4, 16, 48)]
    assert all(b < a for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 0.05


def test_low_rank_kernel_is_recovered(f64):
    torch.manual_seed(4)
    conv = nn.Conv2d(5, 7, 3, bias=False)
    a, b, c, d = torch.randn(7, 2), torch.randn(5, 2), torch.randn(3, 2), torch.randn(3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,cr,yr,xr->ocyx", a, b, c, d))
    assert relative_error(conv, CPConv2d.from_conv(conv, 2, n_iter_max=500)) < 1e-6
    assert relative_error(conv, TuckerConv2d.from_conv(conv, 2)) < 1e-10
    assert CPConv2d.from_conv(conv, 2).expand.bias is None


def test_parameter_counts():
    tk = TuckerConv2d(16, 32, 3, (8, 4), bias=False)
    assert sum(p.numel() for p in tk.parameters()) == 16 * 4 + 4 * 8 * 9 + 8 * 32
    cp = CPConv2d(16, 32, 3, 6, bias=True)
    assert sum(p.numel() for p in cp.parameters()) == 6 * (16 + 3 + 3 + 32) + 32


def test_errors():
    with pytest.raises(ModelError, match="r_in 9 is larger than the 8 channels"):
        TuckerConv2d.from_conv(nn.Conv2d(8, 12, 3), (4, 9))
    with pytest.raises(ModelError, match="groups=2"):
        CPConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), 2)
    with pytest.raises(ModelError, match="rank must be a positive int"):
        CPConv2d(4, 4, 3, 0)
    with pytest.raises(ModelError, match="expected an nn.Conv2d"):
        TuckerConv2d.from_conv(nn.Linear(3, 3), 1)


def test_pack_roundtrip(tmp_path):
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 8, 3, padding=1)
    model = nn.Sequential(TuckerConv2d.from_conv(conv, 3), nn.ReLU(), CPConv2d.from_conv(nn.Conv2d(8, 4, 3), 4))
    path = tmp_path / "tc.cnz"
    pack.save(model, path)
    back = pack.load(path)
    assert [type(m) for m in back] == [type(m) for m in model]
    x = torch.randn(2, 6, 9, 9)
    assert torch.equal(back(x), model(x))
    assert back[0].ranks == (3, 3) and back[2].rank == 4
