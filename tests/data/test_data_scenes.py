"""Synthetic scenes: exact geometry, determinism, bundle layout; NYU-Depth-v2 loader on tiny fixtures."""

import numpy as np
import pytest
import torch

import compactnn as cn
from compactnn.data import scenes as sc
from compactnn.data.nyu import MAT_NAME, load_nyu
from compactnn.errors import DataError


@pytest.fixture(scope="module")
def small():
    return sc.make_scenes(24, seed=3, size=32)


def test_deterministic_and_seeded(small):
    again = sc.make_scenes(24, seed=3, size=32)
    assert np.array_equal(small.images, again.images) and np.array_equal(small.depth, again.depth)
    other = sc.make_scenes(24, seed=4, size=32)
    assert not np.array_equal(small.depth, other.depth)


def test_shapes_ranges_and_classes(small):
    assert small.images.shape == (24, 3, 32, 32) and small.depth.shape == (24, 1, 32, 32)
    assert small.images.min() >= 0 and small.images.max() <= 1
    assert np.isfinite(small.depth).all() and small.depth.min() > 0.5 and small.depth.max() < 10
    assert set(np.unique(small.semantics)) <= set(range(len(sc.SCENE_CLASSES)))
    # every scene sees the floor and a wall
    for cls in (sc.FLOOR, sc.WALL):
        assert all((s == cls).any() for s in small.semantics)
    assert np.allclose(np.linalg.norm(small.normals, axis=1), 1, atol=1e-5)


def test_normals_face_the_camera_and_floor_depth_is_exact():
    s = sc.make_scenes(8, seed=0, size=32, noise=0.0)
    # rays in the camera frame, as the generator builds them
    size, focal = 32, 0.87 * 32
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    ray = np.stack([(u - 16) / focal, -(v - 16) / focal, np.ones_like(u)], 0)
    ray /= np.linalg.norm(ray, axis=0)
    assert ((s.normals * ray[None]).sum(1) < 1e-6).all()  # every visible surface faces the camera
    # all floor pixels of one scene lie on one plane n.p = const (p = depth * ray / ray_z), with n the floor normal
    for i in range(8):
        floor = s.semantics[i] == sc.FLOOR
        p = (s.depth[i, 0] / ray[2])[None] * ray  # camera-frame points
        n = s.normals[i][:, floor]
        assert np.allclose(n, n[:, :1], atol=1e-5)
        dist = (p[:, floor] * n[:, :1]).sum(0)
        assert np.ptp(dist) < 1e-3  # a plane: the same signed distance for every floor pixel


def test_contours_are_instance_boundaries(small):
    b = sc.boundaries(torch.tensor([[[0, 0, 1], [0, 0, 1], [2, 2, 2]]]))
    assert b.tolist() == [[[0, 1, 1], [1, 1, 1], [1, 1, 1]]]
    assert np.array_equal(small.contours, sc.boundaries(torch.from_numpy(small.instances)).numpy())
    assert 0.02 < small.contours.mean() < 0.4


def test_load_scenes_bundle():
    data = cn.data.load("scenes", n_train=16, n_test=8, size=32, seed=1)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 6 and data.classes == sc.SCENE_CLASSES
    assert len(data.train) == 16 and len(data.test) == 8
    assert abs(float(data.train.x.mean())) < 1e-3
    x, t = data.train[0]
    assert x.shape == (3, 32, 32) and set(t) == {"depth", "normals", "contours", "semantics"}
    assert t["semantics"].dtype == torch.int64 and t["depth"].shape == (1, 32, 32)
    sub = data.train.take([3, 1])
    assert torch.equal(sub.depth[0], data.train.depth[3]) and torch.equal(sub.y[1], data.train.y[1])
    assert torch.allclose(data.train.images(0), torch.from_numpy(sc.make_scenes(16, 1, 32).images[0]), atol=1e-5)
    with pytest.raises(DataError):
        cn.data.load("scenes", n_train=0)


# ------------------------------------------------------------------------------------------ NYU-Depth-v2
def _nyu_arrays(n=5, h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9, (n, h, w)).astype(np.float32)
    depths[0, 0, 0] = 0.0  # a hole
    labels = rng.integers(0, 41, (n, h, w)).astype(np.uint16)
    return images, depths, labels


def _write_mat(folder, images, depths, labels):
    h5py = pytest.importorskip("h5py")
    with h5py.File(folder / MAT_NAME, "w") as f:  # MATLAB column-major: axes reversed as HDF5 sees them
        f["images"] = images.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depths.transpose(0, 2, 1).astype(np.float64)
        f["labels"] = labels.transpose(0, 2, 1)


def test_nyu_mat_layout(tmp_path):
    images, depths, labels = _nyu_arrays()
    _write_mat(tmp_path, images, depths, labels)
    data = cn.data.load("nyu-depth-v2", root=tmp_path)
    assert data.num_classes == 40 and data.input_shape == (3, 6, 8)
    assert len(data.train) == 3 and len(data.test) == 2  # round(5 * 795 / 1449) = 3
    assert torch.allclose(data.train.images(1), torch.from_numpy(images[1].transpose(2, 0, 1) / 255.0).float(),
                          atol=1e-5)
    assert torch.equal(data.train.depth[0, 0], torch.from_numpy(depths[0]))
    want = np.where(labels[4] == 0, 255, labels[4].astype(np.int64) - 1)
    assert torch.equal(data.test.y[1], torch.from_numpy(want))


def test_nyu_npy_layout_split_and_resize(tmp_path):
    images, depths, labels = _nyu_arrays(n=4, h=8, w=8)
    for k, a in (("images", images), ("depths", depths), ("labels", labels), ("train", np.array([2, 0])),
                 ("test", np.array([1, 3]))):
        np.save(tmp_path / f"{k}.npy", a)
    data = load_nyu(root=tmp_path, size=(4, 4))
    assert data.input_shape == (3, 4, 4)
    assert torch.allclose(data.train.depth[0, 0], torch.from_numpy(depths[2].reshape(4, 2, 4, 2).mean((1, 3))))


@pytest.mark.parametrize(("bad", "message"), [
    ("shape", "labels are shaped"), ("range", "outside 0..40"), ("nan", "NaN"),
])
def test_nyu_bad_input_one_line(tmp_path, bad, message):
    images, depths, labels = _nyu_arrays()
    if bad == "shape":
        labels = labels[:, :, :7]
    elif bad == "range":
        labels[2, 1, 1] = 41
    else:
        depths[1, 2, 3] = np.nan
    for k, a in (("images", images), ("depths", depths), ("labels", labels)):
        np.save(tmp_path / f"{k}.npy", a)
    with pytest.raises(DataError, match=message) as err:
        load_nyu(root=tmp_path)
    assert "\n" not in str(err.value)


def test_nyu_missing_and_mapping(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_nyu(root=tmp_path / "nothing")
    images, depths, labels = _nyu_arrays()
    labels = labels * 20  # raw labels up to 800
    for k, a in (("images", images), ("depths", depths), ("labels", labels)):
        np.save(tmp_path / f"{k}.npy", a)
    with pytest.raises(DataError, match="mapping"):
        load_nyu(root=tmp_path)
    mapping = np.arange(801) // 20  # raw 20*k -> k
    data = load_nyu(root=tmp_path, mapping=mapping)
    assert int(data.train.y[data.train.y != 255].max()) <= 39
