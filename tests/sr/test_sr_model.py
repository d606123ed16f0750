"""The IDN model: size, shapes, the bicubic branch against MATLAB's imresize, the Caffe output alignment, tiling,
packing and the training loop's resume."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compactnn import pack
from compactnn.errors import DataError, ModelError
from compactnn.models import create
from compactnn.models.idn import IDN
from compactnn.sr import matlab
from compactnn.sr.upscale import residual_tiled


def randomized(scale, seed=0):
    torch.manual_seed(seed)
    model = create("idn", scale=scale).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_size_and_output_shape(scale):
    model = create("idn", scale=scale)
    assert sum(p.numel() for p in model.parameters()) == 552_769
    groups = [m.groups for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert groups == [4] * 8
    with torch.no_grad():
        assert model(torch.rand(2, 1, 7, 9)).shape == (2, 1, 7 * scale, 9 * scale)


def test_bad_options():
    with pytest.raises(ModelError, match="scale"):
        create("idn", scale=5)
    with pytest.raises(ModelError, match="Y channel"):
        create("idn", input_shape=(3, 8, 8))
    with pytest.raises(ModelError, match=r"\(N, 1, h, w\)"):
        create("idn")(torch.rand(1, 3, 8, 8))


def test_bicubic_branch_is_matlab_imresize(f64):
    model = IDN(scale=3).double()
    x = torch.rand(1, 1, 6, 5, dtype=torch.float64)
    want = matlab.imresize(x[0, 0].numpy(), 3)
    np.testing.assert_allclose(model.bicubic(x)[0, 0].numpy(), want, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_full_output_contains_the_caffe_deconv_exactly(scale):
    """Caffe's transposed conv (pad 8) gives rows s..hs (1-based) of our (hs, ws) branch output."""
    model = randomized(scale)
    x = torch.rand(1, 1, 6, 7)
    with torch.no_grad():
        feats = model.features(x)
        caffe = F.conv_transpose2d(feats, model.upsample.weight, model.upsample.bias, stride=scale, padding=8)
        ours = model.residual(x)
    assert caffe.shape[-2:] == ((6 - 1) * scale + 1, (7 - 1) * scale + 1)
    torch.testing.assert_close(ours[..., scale - 1:, scale - 1:], caffe, rtol=0, atol=1e-6)


def test_tiled_residual_equals_whole_image():
    model = randomized(2, seed=1)
    y = np.random.default_rng(0).random((40, 45)).astype(np.float32)
    with torch.no_grad():
        whole = model.residual(torch.from_numpy(y)[None, None])[0, 0].numpy()
    tiled = residual_tiled(model, y, tile=16, quiet=True)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_pack_round_trip_keeps_scale_and_output(tmp_path):
    model = randomized(4)
    pack.save(model, tmp_path / "m.cnz", level=1)
    back = pack.load(tmp_path / "m.cnz").eval()
    x = torch.rand(1, 1, 5, 6)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.scale == 4


def test_quick_training_runs_and_resumes(tmp_path):
    from PIL import Image

    from compactnn.sr.train import TrainConfig, train

    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(2):
        base = rng.random((1, 1, 3)) * 255
        grad = np.linspace(0, 60, 40)[:, None, None] + np.linspace(0, 40, 36)[None, :, None]
        Image.fromarray(np.clip(base + grad + rng.normal(0, 10, (40, 36, 3)), 0, 255).astype(np.uint8)).save(
            imgs / f"{k}.png")
    cfg = TrainConfig(scale=2, l1_steps=3, l2_steps=2, patch=8, patch2=10, batch=2)
    r = train(tmp_path / "run", cfg, sources=[imgs], minutes=0.0, eval_set=None, quiet=True)
    assert r["step"] == 0 and not r["done"]
    r = train(tmp_path / "run", cfg, sources=[imgs], eval_set=None, quiet=True)
    assert r["done"] and r["step"] == 5 and [p["step"] for p in r["curve"]] == [0, 5]
    model = pack.load(tmp_path / "run" / "model.cnz")
    assert isinstance(model, IDN) and model.scale == 2
    with pytest.raises(DataError, match="large enough"):
        train(tmp_path / "run2", TrainConfig(patch=30), sources=[imgs], eval_set=None, quiet=True)
