"""The gland FCN, its post-processing and evaluation, suggestive annotation, and a quantized FCN."""

import copy
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import compactnn as cn
from compactnn.config import FineTune
from compactnn.errors import ConfigError
from compactnn.quantize.lowbit.modules import LowBitConv2d, LowBitConvTranspose2d
from compactnn.segment.fcn import GlandFCN, evaluate_fcn, instances, seg_loss, train_fcn
from compactnn.segment.glands import synthetic_glands
from compactnn.segment.suggest import max_cover, random_selection, suggest


@pytest.fixture(scope="module")
def tiles():
    return synthetic_glands(16, size=32, seed=0), synthetic_glands(6, size=32, seed=1)


def test_fcn_shapes_and_descriptor():
    net = GlandFCN(width=4)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 1, 32, 32)
    assert net.descriptor(x).shape == (2, 16)


def test_instances_threshold_and_size_filter():
    prob = np.zeros((8, 8))
    prob[0:3, 0:3] = 0.9     # 9 pixels: kept
    prob[6:8, 6:8] = 0.8     # 4 pixels: removed with min_size 5
    prob[0:3, 5:8] = 0.4     # below the threshold
    out = instances(prob, threshold=0.5, min_size=5)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1} and (out == 1).sum() == 9
    assert set(np.unique(instances(prob, min_size=1))) == {0, 1, 2}


def test_training_improves_every_glas_metric(tiles):
    (x, y), (xt, yt) = tiles
    torch.manual_seed(0)
    before = evaluate_fcn(GlandFCN(8), xt, yt)
    model = train_fcn(x, y, epochs=20, width=8, seed=0)
    after = evaluate_fcn(model, xt, yt)
    assert after["dice"] > before["dice"] + 0.4 and after["f1"] > before["f1"] + 0.2
    assert after["hausdorff"] < before["hausdorff"] / 3
    assert train_fcn(x, y, epochs=1, width=4, seed=3).state_dict()["head.weight"].equal(
        train_fcn(x, y, epochs=1, width=4, seed=3).state_dict()["head.weight"])  # seeded


def test_max_cover_is_the_greedy_cover():
    sim = np.array([[1.0, 0.9, 0.0, 0.1],
                    [0.9, 1.0, 0.1, 0.0],
                    [0.0, 0.1, 1.0, 0.8],
                    [0.1, 0.0, 0.8, 1.0]])
    # first pick: row sums 2.0, 2.0, 1.9, 1.9 -> row 0 (ties to the lower index);
    # then the row adding most to max(row0, .): row 2 (+1.0 + 0.8 - 0.1) beats row 3 (+0.8 + 0.9 - 0.1 ... = 1.6)
    assert max_cover(sim, [0, 1, 2, 3], 2) == [0, 2]
    assert max_cover(sim, [1, 3], 1) == [1]


def test_suggest_and_random_pick_distinct_unlabelled_images(tiles):
    (x, y), _ = tiles
    picked = suggest(x, y, labelled=[0, 1, 2, 3], batch=3, models=2, candidates=5, epochs=1, width=4, seed=0)
    assert len(set(picked)) == 3 and not set(picked) & {0, 1, 2, 3} and all(0 <= i < 16 for i in picked)
    assert random_selection(16, [0, 1], 4, seed=1) == random_selection(16, [0, 1], 4, seed=1)
    with pytest.raises(ConfigError, match="non-empty labelled set"):
        suggest(x, y, labelled=[], batch=1)
    with pytest.raises(ConfigError, match="cannot choose 20 images: 14 of the pool's 16"):
        random_selection(16, [0, 1], 20)
    with pytest.raises(ConfigError, match="must match"):
        train_fcn(x[:3], y[:2])


@pytest.mark.parametrize("call, words", [
    # a mask that does not match its image: count, or spatial size
    (lambda x, y: train_fcn(x[:3], y[:2]), "must match"),
    (lambda x, y: train_fcn(x[:3], y[:3, :, :30]), "must match"),
    (lambda x, y: evaluate_fcn(GlandFCN(4), x[:2], y[:2, :30]), "must match"),
    (lambda x, y: suggest(x, y[:, :30], labelled=[0], batch=1), "must match"),
    (lambda x, y: suggest(x, y[:10], labelled=[0], batch=1), "must match"),
    # an empty labelled set
    (lambda x, y: train_fcn(x[:0], y[:0]), "labelled set is empty"),
    (lambda x, y: suggest(x, y, labelled=[], batch=1), "non-empty labelled set"),
    (lambda x, y: random_selection(16, [], 2), "non-empty labelled set"),
    # a budget larger than the pool (or than what is left of it)
    (lambda x, y: suggest(x, y, labelled=[0, 1], batch=15), "cannot choose 15 images: 14 of the pool's 16"),
    (lambda x, y: random_selection(16, [0, 1], 20), "cannot choose 20 images: 14 of the pool's 16"),
    (lambda x, y: random_selection(16, [0, 1], 0), "cannot choose 0 images"),
    (lambda x, y: random_selection(16, [0, 16], 2), "labelled index 16 is outside the pool of 16"),
])
def test_bad_input_is_one_line(tiles, call, words):
    (x, y), _ = tiles
    with pytest.raises(ConfigError) as err:
        call(x, y)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_inq_quantized_fcn_trains_with_the_segmentation_loss_and_packs_smaller(tiles, tmp_path):
    (x, y), (xt, yt) = tiles
    model = train_fcn(x, y, epochs=20, width=8, seed=0)
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y).long()), batch_size=8, shuffle=True)
    q = cn.compress(model, cn.quantize.INQ(weight_bits=4, portions=(0.5, 1.0),
                                           finetune=FineTune(epochs=2, lr=1e-3, optimizer="adam", loss=seg_loss)),
                    data=loader)
    quantized = {name for name, m in q.named_modules() if isinstance(m, (LowBitConv2d, LowBitConvTranspose2d))}
    convs = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    assert quantized == convs - {"enc1.0", "head"} and {"up1", "up2"} <= quantized  # first and last stay float
    for name in quantized:
        w = q.get_submodule(name).weight.detach().abs()
        nz = w[w > 0]
        assert torch.allclose(torch.log2(nz), torch.log2(nz).round()), name  # powers of two
        assert len(torch.unique(w)) <= 2 ** (4 - 2) + 1, name  # 4 bits: zero and 4 magnitudes
    cn.pack.save(model, tmp_path / "f.cnz")
    cn.pack.save(q, tmp_path / "q.cnz")
    back = cn.pack.load(tmp_path / "q.cnz")
    assert isinstance(back.up1, LowBitConvTranspose2d)
    assert torch.equal(back(torch.tensor(xt[:2])), q(torch.tensor(xt[:2])))  # the packed model computes the same
    # width 8: BN and the float first/last layers weigh much; the benchmark measures width 16
    assert (tmp_path / "q.cnz").stat().st_size * 4 < (tmp_path / "f.cnz").stat().st_size
    assert evaluate_fcn(q, xt, yt)["dice"] > 0.3


def test_inq_transposed_conv_matches_its_decoded_weight_and_last_layer_stays_float():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(4, 4, 2, stride=2, output_padding=0), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1))
    ref = copy.deepcopy(net)
    q = cn.compress(net, cn.quantize.INQ(weight_bits=5, portions=(1.0,), finetune=None))
    assert isinstance(q[2], LowBitConvTranspose2d) and type(q[4]) is torch.nn.ConvTranspose2d  # the last is float
    assert type(q[0]) is torch.nn.Conv2d  # and the first
    w = q[2].weight
    n1 = math.floor(math.log2(4 * ref[2].weight.abs().max().item() / 3))
    assert w.abs().max().item() == 2.0 ** n1  # INQ's top level for the largest weight
    x = torch.randn(1, 2, 5, 5)
    plain = torch.nn.functional.conv_transpose2d(torch.relu(ref[0](x)), w, q[2].bias, stride=2)
    assert torch.allclose(q[:3](x), plain)  # the low-bit layer is the transposed conv of its decoded weight
    assert q(x).shape == ref(x).shape == (1, 1, 20, 20)
