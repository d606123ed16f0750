"""Moving clips: shapes, seeding, the item inside the frame and moving, labels, the bundle layout, bad input."""

import numpy as np
import pytest
import torch

from compactnn.data import list_datasets
from compactnn.data.moving import clip_lengths, make_moving, moving_bundle
from compactnn.errors import DataError


def source(n=12, h=8, w=8, seed=0):
    """Tiny images in [0, 1] (uint8 gives the same after /255) with labels 0..3."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, h, w)).astype(np.float32) * 0.5 + 0.5  # item pixels well above the clutter
    return images, np.arange(n) % 4


def test_shapes_lengths_and_padding():
    images, labels = source()
    clips = make_moving(images, labels, 20, seed=1, frames=(6, 10), size=32)
    assert clips.x.shape == (20, 10, 32, 32) and clips.x.dtype == np.float32
    assert clips.y.shape == clips.lengths.shape == clips.source.shape == (20,)
    assert clips.positions.shape == (20, 10, 2)
    assert clips.lengths.min() >= 6 and clips.lengths.max() <= 10 and len(set(clips.lengths)) > 1
    for i, t_len in enumerate(clips.lengths):
        pad = 10 - t_len
        assert (clips.x[i, :pad] == 0).all() and (clips.positions[i, :pad] == -1).all()
        assert (clips.x[i, pad:].reshape(t_len, -1).max(axis=1) > 0).all()
    assert 0.0 <= clips.x.min() and clips.x.max() <= 1.0


def test_fixed_length():
    images, labels = source()
    clips = make_moving(images, labels, 5, frames=7, size=16)
    assert clips.x.shape == (5, 7, 16, 16) and (clips.lengths == 7).all()


def test_same_seed_same_clips_other_seed_other_clips():
    images, labels = source()
    a = make_moving(images, labels, 6, seed=3, size=24)
    b = make_moving(images, labels, 6, seed=3, size=24)
    c = make_moving(images, labels, 6, seed=4, size=24)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.positions, b.positions) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_labels_are_the_moving_items_class():
    images, labels = source(n=12)
    clips = make_moving(images, labels, 30, seed=0, size=20)
    assert np.array_equal(clips.y, labels[clips.source])
    assert set(clips.y) <= set(labels)


def test_item_stays_inside_and_is_drawn_where_the_path_says():
    images, labels = source(h=8, w=6)
    clips = make_moving(images, labels, 15, seed=2, size=20, noise=0.0, clutter=0)
    for i in range(15):
        item = images[clips.source[i]]
        for t in range(10 - clips.lengths[i], 10):
            r, c = clips.positions[i, t]
            assert 0 <= r <= 20 - 8 and 0 <= c <= 20 - 6
            frame = clips.x[i, t]
            # no clutter, no noise: the frame is exactly the item at (r, c) on black
            expect = np.zeros((20, 20), np.float32)
            expect[r:r + 8, c:c + 6] = item
            assert np.array_equal(frame, expect)


def test_path_moves_and_bounces_within_the_frame():
    images, labels = source()
    clips = make_moving(images, labels, 40, seed=5, size=24, speed=(3.0, 5.0), accel=0.0)
    for i in range(40):
        p = clips.positions[i, 10 - clips.lengths[i]:]
        steps = np.abs(np.diff(p, axis=0)).sum(axis=1)
        assert (steps > 0).sum() >= len(steps) - 1  # moves (a bounce may round to the same pixel once)
        assert p.min() >= 0 and p.max() <= 24 - 8
    # with 16 px of room and >= 3 px/frame over >= 6 frames, some path must hit a border and turn back
    turned = [np.any(np.diff(np.sign(np.diff(clips.positions[i, 10 - clips.lengths[i]:, a]))) != 0)
              for i in range(40) for a in range(2)]
    assert any(turned)


def test_clutter_comes_from_other_images_at_low_contrast():
    images, labels = source()
    clean = make_moving(images, labels, 4, seed=0, size=32, noise=0.0, clutter=0)
    busy = make_moving(images, labels, 4, seed=0, size=32, noise=0.0, clutter=6, clutter_contrast=(0.1, 0.2))
    outside = []
    for i in range(4):
        t = 9
        r, c = busy.positions[i, t]
        mask = np.ones((32, 32), bool)
        mask[r:r + 8, c:c + 8] = False
        outside.append(busy.x[i, t][mask])
        r, c = clean.positions[i, t]
        assert np.array_equal(clean.x[i, t][r:r + 8, c:c + 8], images[clean.source[i]])
        assert np.count_nonzero(clean.x[i, t]) == np.count_nonzero(images[clean.source[i]])  # nothing else
    outside = np.concatenate(outside)
    assert outside.max() > 0 and outside.max() <= 0.2 + 1e-6


def test_uint8_and_torch_inputs_match_floats():
    images, labels = source()
    u8 = np.round(images * 255).astype(np.uint8)
    a = make_moving(u8, labels, 3, seed=0, size=16)
    b = make_moving(torch.from_numpy(u8.astype(np.float32) / 255).unsqueeze(1), torch.from_numpy(labels), 3,
                    seed=0, size=16)
    assert np.allclose(a.x, b.x, atol=1e-6)


def test_bundle_layout_normalization_and_lengths():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images / 16.0, np.ones((2, 2)))  # 16x16 digits
    bundle = moving_bundle(images[:1000], d.target[:1000], images[1000:], d.target[1000:], n_train=40, n_test=10,
                           seed=0, frames=(6, 10), size=32, name="moving-digits")
    assert bundle.input_shape == (10, 32, 32) and bundle.num_classes == 10
    assert bundle.train.x.shape == (40, 10, 32, 32) and bundle.test.x.shape == (10, 10, 32, 32)
    raw = make_moving(images[:1000], d.target[:1000], 40, 0, (6, 10), 32)
    assert torch.equal(clip_lengths(bundle.train.x), torch.from_numpy(raw.lengths))
    assert torch.equal(bundle.train.y, torch.from_numpy(raw.y))
    lengths = clip_lengths(bundle.train.x)
    real = torch.cat([bundle.train.x[i, 10 - n:].flatten() for i, n in enumerate(lengths.tolist())])
    assert abs(float(real.mean())) < 1e-4 and abs(float(real.std()) - 1.0) < 1e-3
    # the test clips use the train normalization and another seed
    test_raw = make_moving(images[1000:], d.target[1000:], 10, 1, (6, 10), 32)
    assert torch.equal(clip_lengths(bundle.test.x), torch.from_numpy(test_raw.lengths))


def test_registered():
    assert "moving-fashion-mnist" in list_datasets()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "positive int"),
    (dict(frames=(5, 3)), "min <= max"),
    (dict(frames="x"), "int or a"),
    (dict(size=4), "do not fit"),
    (dict(noise=-1.0), ">= 0"),
])
def test_bad_arguments(kwargs, match):
    images, labels = source()
    args = dict(n=2, seed=0, frames=(6, 10), size=16) | kwargs
    with pytest.raises(DataError, match=match):
        make_moving(images, labels, **args)


def test_bad_images_and_labels():
    images, labels = source()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        make_moving(images * 255, labels, 2)
    with pytest.raises(DataError, match="one per image"):
        make_moving(images, labels[:-1], 2)
    with pytest.raises(DataError, match="non-empty"):
        make_moving(images[0], labels, 2)
