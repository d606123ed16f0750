"""Synthetic glands and the GlaS loader (on files the test writes)."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from compactnn.errors import ConfigError, DataError
from compactnn.segment.glands import load_glas, synthetic_glands


def test_synthetic_glands_are_seeded_separate_instances():
    images, masks = synthetic_glands(6, size=64, seed=3)
    again, masks2 = synthetic_glands(6, size=64, seed=3)
    assert np.array_equal(images, again) and np.array_equal(masks, masks2)
    assert images.shape == (6, 3, 64, 64) and images.dtype == np.float32 and masks.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    for m in masks:
        k = int(m.max())
        assert 2 <= k <= 5 and set(np.unique(m)) == set(range(k + 1))
        for g in range(1, k + 1):  # each gland is one connected piece, apart from the others
            _, pieces = ndimage.label(m == g)
            assert pieces == 1
    # stain variation: the stroma's mean colour differs from tile to tile
    stroma = np.array([[images[t, c][masks[t] == 0].mean() for c in range(3)] for t in range(6)])
    assert stroma.std(axis=0).max() > 0.02
    assert not np.array_equal(synthetic_glands(1, size=64, seed=4)[1], masks[:1])


def test_bad_generator_settings():
    with pytest.raises(ConfigError, match="size >= 32"):
        synthetic_glands(2, size=16)
    for bad in (dict(contrast=(0.8, 0.2)), dict(stain=1.0), dict(gap=-1), dict(decoys=-1), dict(noise=-0.1)):
        with pytest.raises(ConfigError, match="0 <= contrast min <= max <= 1"):
            synthetic_glands(2, size=32, **bad)


def test_defaults_are_the_original_generator():
    # digests of the arrays the generator gave before the difficulty parameters existed (commit 7ae4af2's parent)
    import hashlib
    x, y = synthetic_glands(4, 64, seed=3)
    assert hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest().startswith("14b4a09e0a5fa68e")


def test_harder_settings_change_the_tiles_as_documented():
    easy, masks = synthetic_glands(8, size=64, seed=2)
    hard, masks_hard = synthetic_glands(8, size=64, seed=2, contrast=(0.0, 0.0), stain=0.4, noise=0.2)
    assert np.array_equal(masks, masks_hard)  # same glands: the masks are drawn before the colours
    stroma = np.array([[hard[t, c][masks[t] == 0].mean() for c in range(3)] for t in range(8)])
    assert stroma.std(axis=0).max() > 0.05  # stronger stain variation
    # decoys: pale lumen-coloured spaces outside the glands (label 0); the first tile's glands are the same
    plain, m1 = synthetic_glands(6, size=64, seed=5, decoys=0)
    decoy, m2 = synthetic_glands(6, size=64, seed=5, decoys=3)
    assert np.array_equal(m1[0], m2[0])
    pale = lambda im, m: np.mean([(im[t].min(0)[m[t] == 0] > 0.85).mean() for t in range(len(im))])  # noqa: E731
    assert pale(decoy, m2) > pale(plain, m1)
    # gap 0 lets glands touch: some tile has two instances 4-adjacent
    _, touching = synthetic_glands(30, size=48, seed=1, gap=0, glands=(6, 8))
    adjacent = any(((m[:, 1:] != m[:, :-1]) & (m[:, 1:] > 0) & (m[:, :-1] > 0)).any() or
                   ((m[1:] != m[:-1]) & (m[1:] > 0) & (m[:-1] > 0)).any() for m in touching)
    assert adjacent
    _, apart = synthetic_glands(30, size=48, seed=1, glands=(6, 8))
    assert not any(((m[:, 1:] != m[:, :-1]) & (m[:, 1:] > 0) & (m[:, :-1] > 0)).any() for m in apart)


def _write(root, name, image, labels):
    Image.fromarray(image).save(root / f"{name}.bmp")
    Image.fromarray(labels.astype(np.uint8)).save(root / f"{name}_anno.bmp")


def test_glas_layout_loads_in_order(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("train_2", "train_10", "testA_1", "testB_1"):
        labels = np.zeros((20, 30), np.uint8)
        labels[2:8, 3:9] = 1
        labels[10:15, 12:20] = 2
        _write(tmp_path, name, rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), labels)
    data = load_glas(tmp_path)
    assert [n for n, _, _ in data["train"]] == ["train_2", "train_10"]
    name, image, labels = data["testA"][0]
    assert image.shape == (20, 30, 3) and labels.shape == (20, 30) and set(np.unique(labels)) == {0, 1, 2}
    assert len(data["testB"]) == 1


def test_glas_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="no GlaS images"):
        load_glas(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "train_1.bmp")
    with pytest.raises(DataError, match="train_1_anno.bmp is missing"):
        load_glas(tmp_path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "train_1_anno.bmp")
    with pytest.raises(DataError, match="annotation is 12x10 but the image is 10x10"):
        load_glas(tmp_path)
    (tmp_path / "train_1_anno.bmp").write_bytes(b"BM not really")
    with pytest.raises(DataError, match="not a readable BMP"):
        load_glas(tmp_path)
