"""Synthetic indoor-like scenes with exact ground truth for depth, surface normals, contours and semantics.

Every scene is ray cast (no rasterizer, no files): a pinhole camera stands in a box-shaped room and looks at boxes
and spheres standing on the floor. For every pixel the nearest hit gives, exactly:

- **depth**: the z-depth in the camera frame, in metres (as in NYU-Depth-v2: distance along the optical axis, not
  along the ray);
- **normals**: the unit surface normal of the hit, in the camera frame (x right, y up, z forward), facing the
  camera;
- **semantics**: the class of the hit object, one of :data:`SCENE_CLASSES` (floor, wall, ceiling, cabinet, table,
  ball). Cabinets are tall narrow boxes and tables low wide boxes, so the box classes differ by shape and texture,
  not by colour alone;
- **contours**: 1 where a pixel's 4-neighbourhood holds another *instance* (every plane and object is its own
  instance, so the corner between two walls is a contour although both are "wall"), else 0.

**The room.** Camera height ``h`` in [1.2, 1.6] m above the floor, ceiling 2.5..3.0 m above the floor, back wall at
z in [4, 8] m, side walls 1.8..3.5 m to either side. The camera is pitched down 5..20 degrees and turned -20..20
degrees; horizontal field of view about 60 degrees (focal length ``0.87 * size`` pixels).

**Objects.** 1..4 boxes (each a cabinet with probability 1/2: 0.4-1.0 m wide, 1.0-2.0 m high, 0.3-0.6 m deep; else a
table: 0.8-1.6 m wide, 0.4-0.8 m high, 0.5-1.0 m deep), turned about the vertical axis by -45..45 degrees, standing
on the floor 1.8 m or more in front of the camera; 0..3 balls of radius 0.15-0.45 m, on the floor or hanging
0.3-1.2 m above it. Objects may intersect; the ray caster takes the nearest surface, so the geometry stays exact.

**Appearance** (what makes the tasks not trivial). Albedo = a per-instance colour (the class's base colour with
random hue/brightness jitter, so colour alone does not give the class) times a procedural texture from the hit's
world coordinates: floor boards (stripes with per-board shade), wall paint with low-frequency blotches, wood grain on
boxes, plain balls. Light: ambient plus a point light in the room with Lambert shading and inverse-square fall-off,
which ties image intensity to depth and normals. Then a per-image gain, Gaussian pixel noise (std ``noise``, default
0.03) and clipping to [0, 1]. No shadows.

Everything comes from one ``numpy.random.Generator`` seeded with ``seed``; the same arguments give the same scenes.
Scenes are generated in vectorised chunks (about 3000 scenes of 64x64 in 10-20 s on one core).

``load("scenes", n_train=2000, n_test=500, size=64, seed=0)`` gives a :class:`DataBundle` whose sets are
:class:`DenseDataset`: ``x`` the normalized RGB images ``(N, 3, size, size)`` and per pixel targets; train scenes use
``seed`` and test scenes ``seed + 1``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import DataError
from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset

SCENE_CLASSES = ["floor", "wall", "ceiling", "cabinet", "table", "ball"]
FLOOR, WALL, CEILING, CABINET, TABLE, BALL = range(6)
IGNORE = 255  # label of unlabelled pixels (NYU); the scenes have none
_BASE_COLOUR = np.array([
    [0.55, 0.38, 0.24],  # floor: wood
    [0.78, 0.76, 0.70],  # wall: off-white paint
    [0.92, 0.92, 0.90],  # ceiling
    [0.45, 0.32, 0.28],  # cabinet
    [0.60, 0.50, 0.35],  # table
    [0.30, 0.45, 0.70],  # ball
], dtype=np.float32)
MAX_BOXES, MAX_BALLS = 4, 3


class DenseDataset(ArrayDataset):
    """Images with per-pixel targets for the four PAD-Net tasks.

    ``y`` is the semantic label map (int64 ``(N, H, W)``, :data:`IGNORE` = unlabelled), so the class-based helpers of
    :class:`ArrayDataset` still work. Item ``i`` is ``(x[i], {"depth", "normals", "contours", "semantics"})``.

    Args:
        x: normalized images, float32 ``(N, 3, H, W)``.
        semantics: int64 ``(N, H, W)``.
        depth: float32 ``(N, 1, H, W)``, metres (0 where unknown, e.g. NYU holes).
        normals: float32 ``(N, 3, H, W)`` unit vectors, or None (NYU has none; zeros are stored).
        contours: int64 ``(N, H, W)`` in {0, 1}, or None (then computed from the semantic boundaries).
        mean / std: the per-channel normalization used on ``x`` (to show images: ``x * std + mean``).
    """

    def __init__(self, x: torch.Tensor, semantics: torch.Tensor, depth: torch.Tensor,
                 normals: torch.Tensor | None = None, contours: torch.Tensor | None = None,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__(x, semantics)
        n, _, h, w = x.shape
        if semantics.shape != (n, h, w) or depth.shape != (n, 1, h, w):
            raise DataError(f"targets must be (N, H, W) labels and (N, 1, H, W) depth for images {tuple(x.shape)}, "
                            f"got {tuple(semantics.shape)} and {tuple(depth.shape)}")
        self.depth = depth
        self.normals = torch.zeros(n, 3, h, w) if normals is None else normals
        self.contours = boundaries(semantics) if contours is None else contours
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def targets(self, index=slice(None)) -> dict[str, torch.Tensor]:
        """The targets of rows ``index`` as a dict (depth, normals, contours, semantics)."""
        return {"depth": self.depth[index], "normals": self.normals[index], "contours": self.contours[index],
                "semantics": self.y[index]}

    def __getitem__(self, i):
        return self.x[i], self.targets(i)

    def take(self, indices) -> "DenseDataset":
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return DenseDataset(self.x[index], self.y[index], self.depth[index], self.normals[index],
                            self.contours[index], self.mean, self.std)

    def images(self, index=slice(None)) -> torch.Tensor:
        """Rows ``index`` of ``x`` back in [0, 1] pixels."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (self.x[index] * std + mean).clamp(0, 1)


def boundaries(labels: torch.Tensor) -> torch.Tensor:
    """1 where a pixel's right/left/up/down neighbour has another label, else 0; int64, same shape ``(N, H, W)``."""
    lab = torch.as_tensor(labels)
    edge = torch.zeros(lab.shape, dtype=torch.bool)
    dx = lab[..., :, 1:] != lab[..., :, :-1]
    dy = lab[..., 1:, :] != lab[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge.to(torch.int64)


@dataclasses.dataclass
class Scenes:
    """Raw scenes from :func:`make_scenes`.

    Args:
        images: float32 ``(n, 3, size, size)`` in [0, 1].
        depth: float32 ``(n, 1, size, size)`` z-depth in metres.
        normals: float32 ``(n, 3, size, size)`` unit normals in the camera frame.
        semantics: int64 ``(n, size, size)`` class per pixel (:data:`SCENE_CLASSES`).
        instances: int64 ``(n, size, size)`` instance per pixel (0 floor, 1 ceiling, 2-4 walls, 5.. boxes, then balls).
        contours: int64 ``(n, size, size)`` instance boundaries in {0, 1}.
    """

    images: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    semantics: np.ndarray
    instances: np.ndarray
    contours: np.ndarray


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _chunk(rng: np.random.Generator, n: int, size: int, noise: float):
    """Ray cast ``n`` scenes at once; returns the arrays of :class:`Scenes` (without contours)."""
    f32 = np.float32
    p = size * size
    # --- camera: rays in the camera frame (x right, y up, z forward), unit length
    focal = 0.87 * size
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    cam = np.stack([(u - size / 2) / focal, -(v - size / 2) / focal, np.ones_like(u)], -1).reshape(p, 3)
    cam /= np.linalg.norm(cam, axis=1, keepdims=True)
    pitch = np.deg2rad(rng.uniform(5, 20, n))
    yaw = np.deg2rad(rng.uniform(-20, 20, n))
    rot = _rot_y(yaw) @ _rot_x(pitch)  # camera -> world (pitched down), (n, 3, 3)
    ray = np.einsum("nij,pj->npi", rot, cam)  # world rays (n, p, 3); the camera is at the origin

    # --- room planes: floor y=-h, ceiling y=c, back wall z=D, left x=-L, right x=R
    h = rng.uniform(1.2, 1.6, n)
    ceil = rng.uniform(2.5, 3.0, n) - h
    back = rng.uniform(4.0, 8.0, n)
    left, right = rng.uniform(1.8, 3.5, n), rng.uniform(1.8, 3.5, n)
    inf = np.float64(np.inf)
    best = np.full((n, p), inf)
    inst = np.zeros((n, p), np.int64)
    normal = np.zeros((n, p, 3))
    planes = [(1, -h, 0), (1, ceil, 1), (2, back, 2), (0, -left, 3), (0, right, 4)]  # (axis, offset, instance)
    for axis, off, k in planes:
        d = ray[..., axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = off[:, None] / d
        t = np.where(t > 1e-6, t, inf)
        hit = t < best
        best = np.where(hit, t, best)
        inst[hit] = k
        nrm = np.zeros(3)
        nrm[axis] = 1.0
        sign = -np.sign(off)[:, None, None]  # the normal points back into the room, towards the camera
        normal = np.where(hit[..., None], sign * nrm, normal)

    # --- boxes: half sizes (n, K, 3), centres, yaw
    kb = MAX_BOXES
    n_boxes = rng.integers(1, kb + 1, n)
    box_on = np.arange(kb)[None] < n_boxes[:, None]
    cabinet = rng.random((n, kb)) < 0.5
    half = np.where(cabinet[..., None],
                    np.stack([rng.uniform(0.4, 1.0, (n, kb)), rng.uniform(1.0, 2.0, (n, kb)),
                              rng.uniform(0.3, 0.6, (n, kb))], -1),
                    np.stack([rng.uniform(0.8, 1.6, (n, kb)), rng.uniform(0.4, 0.8, (n, kb)),
                              rng.uniform(0.5, 1.0, (n, kb))], -1)) / 2
    bz = 1.8 + rng.random((n, kb)) * (back[:, None] - 0.6 - 1.8)
    bx = -left[:, None] + 0.3 + rng.random((n, kb)) * (left + right - 0.6)[:, None]
    by = -h[:, None] + half[..., 1]
    centre = np.stack([bx, by, bz], -1)
    byaw = np.deg2rad(rng.uniform(-45, 45, (n, kb)))
    brot = _rot_y(byaw)  # box -> world (n, K, 3, 3)
    for k in range(kb):
        r = brot[:, k]  # (n, 3, 3)
        d = np.einsum("nji,npj->npi", r, ray)  # world -> box frame: R^T d
        o = np.einsum("nji,nj->ni", r, -centre[:, k])[:, None, :]  # R^T (0 - c), (n, 1, 3)
        hk = half[:, k][:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1 = (-hk - o) * inv
            t2 = (hk - o) * inv
        t1 = np.nan_to_num(t1, nan=-inf)
        t2 = np.nan_to_num(t2, nan=inf)
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        near = lo.max(-1)
        far = hi.min(-1)
        t = np.where((near <= far) & (near > 1e-6) & box_on[:, k, None], near, inf)
        hit = t < best
        best = np.where(hit, t, best)
        inst[hit] = 5 + k
        face = lo.argmax(-1)  # the slab that was entered last
        local = np.zeros((n, p, 3))
        np.put_along_axis(local, face[..., None], -np.sign(np.take_along_axis(d, face[..., None], -1)), -1)
        world = np.einsum("nij,npj->npi", r, local)
        normal = np.where(hit[..., None], world, normal)

    # --- balls
    kp = MAX_BALLS
    n_balls = rng.integers(0, kp + 1, n)
    ball_on = np.arange(kp)[None] < n_balls[:, None]
    rad = rng.uniform(0.15, 0.45, (n, kp))
    lift = np.where(rng.random((n, kp)) < 0.5, 0.0, rng.uniform(0.3, 1.2, (n, kp)))
    sc = np.stack([-left[:, None] + rad + rng.random((n, kp)) * (left + right)[:, None] * 0.9,
                   -h[:, None] + rad + lift,
                   1.5 + rng.random((n, kp)) * (back[:, None] - 2.0)], -1)
    for k in range(kp):
        c = sc[:, k][:, None, :]
        b = (ray * c).sum(-1)
        disc = b * b - ((c * c).sum(-1) - rad[:, k, None] ** 2)
        with np.errstate(invalid="ignore"):
            t = b - np.sqrt(disc)
        t = np.where((disc > 0) & (t > 1e-6) & ball_on[:, k, None], t, inf)
        hit = t < best
        best = np.where(hit, t, best)
        inst[hit] = 5 + kb + k
        normal = np.where(hit[..., None], (ray * best[..., None] - c) / rad[:, k, None, None], normal)

    # --- classes, depth and camera-frame normals
    box_cls = np.where(cabinet, CABINET, TABLE)
    cls_of = np.concatenate([np.tile([FLOOR, CEILING, WALL, WALL, WALL], (n, 1)), box_cls,
                             np.full((n, kp), BALL)], 1)
    sem = np.take_along_axis(cls_of, inst, 1)
    point = ray * best[..., None]  # world hit points
    depth = best * cam[None, :, 2]
    ncam = np.einsum("nji,npj->npi", rot, normal)  # world -> camera: R^T n
    ncam /= np.linalg.norm(ncam, axis=-1, keepdims=True)

    # --- appearance
    n_inst = 5 + kb + kp
    jitter = rng.uniform(0.75, 1.2, (n, n_inst, 1)) * (1 + rng.normal(0, 0.12, (n, n_inst, 3)))
    colour = _BASE_COLOUR[cls_of] * jitter  # (n, I, 3)
    albedo = np.take_along_axis(colour, inst[..., None], 1)
    x, y, z = point[..., 0], point[..., 1], point[..., 2]
    ph = rng.uniform(0, 2 * np.pi, (n, 4))[:, None, :]
    board = np.floor(x / 0.25 + ph[..., 0])
    floor_tex = 0.8 + 0.12 * np.sin(board * 12.9898 + ph[..., 1]) + 0.08 * np.sin(z * 9.0 + board)
    along = np.where(np.abs(ncam[..., 0]) > 0.5, z, x)
    paint = 0.9 + 0.06 * np.sin(1.3 * along + ph[..., 2]) * np.sin(1.1 * y + ph[..., 3])
    grain = 0.85 + 0.15 * np.sin(25.0 * (along + 0.3 * np.sin(4.0 * y)) + ph[..., 0])
    tex = np.select([sem == FLOOR, (sem == WALL) | (sem == CEILING), (sem == CABINET) | (sem == TABLE)],
                    [floor_tex, paint, grain], 1.0)
    light = np.stack([rng.uniform(-1.2, 1.2, n), ceil - 0.3, rng.uniform(1.0, 3.5, n)], -1)[:, None, :]
    to_l = light - point
    dist2 = (to_l * to_l).sum(-1)
    lam = np.clip((normal * to_l).sum(-1) / np.sqrt(dist2), 0, None)
    power = rng.uniform(4.0, 9.0, (n, 1))
    shade = rng.uniform(0.15, 0.3, (n, 1)) + power * lam / (dist2 + 1.0)
    img = albedo * (tex * shade)[..., None] * rng.uniform(0.8, 1.2, (n, 1, 1))
    img = img + noise * rng.standard_normal(img.shape)
    img = np.clip(img, 0, 1)

    def grid(a):
        return a.reshape(n, size, size, *a.shape[2:])

    images = grid(img).transpose(0, 3, 1, 2).astype(f32)
    normals = grid(ncam).transpose(0, 3, 1, 2).astype(f32)
    return images, grid(depth)[:, None].astype(f32), normals, grid(sem), grid(inst)


def make_scenes(n: int, seed: int = 0, size: int = 64, *, noise: float = 0.03, chunk: int = 128) -> Scenes:
    """Ray cast ``n`` random scenes of ``size x size`` pixels (recipe in the module docstring).

    Args:
        n: number of scenes (>= 1).
        seed: seed of the ``numpy.random.Generator``; the same arguments give the same scenes.
        size: image height and width in pixels (>= 4).
        noise: std of the Gaussian pixel noise (>= 0).
        chunk: scenes ray cast at once (memory vs. speed). The scenes depend on ``seed``, ``n`` and ``chunk``:
            the first scenes of ``make_scenes(n)`` equal those of ``make_scenes(m)`` only when both ``n, m >= chunk``.

    Raises:
        DataError: bad arguments.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n (the number of scenes) must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 4 <= size <= 1024:
        raise DataError(f"size must be an int in 4..1024, got {size!r}")
    if not (isinstance(noise, (int, float)) and 0 <= noise < 1):
        raise DataError(f"noise must be a number in [0, 1), got {noise!r}")
    rng = np.random.default_rng(seed)
    parts = [_chunk(rng, min(chunk, n - s), int(size), float(noise)) for s in range(0, n, chunk)]
    images, depth, normals, sem, inst = (np.concatenate(a) for a in zip(*parts))
    contours = boundaries(torch.from_numpy(inst)).numpy()
    return Scenes(images, depth, normals, sem, inst, contours)


def scenes_bundle(train: Scenes, test: Scenes, name: str = "scenes") -> DataBundle:
    """A :class:`DataBundle` of :class:`DenseDataset` s; images normalized by the training set's channel mean/std."""
    mean = train.images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = train.images.std(axis=(0, 2, 3), dtype=np.float64) + 1e-6

    def to_set(s: Scenes) -> DenseDataset:
        x = (s.images - mean[None, :, None, None].astype(np.float32)) / std[None, :, None, None].astype(np.float32)
        return DenseDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(s.semantics),
                            torch.from_numpy(s.depth), torch.from_numpy(s.normals), torch.from_numpy(s.contours),
                            mean, std)

    size = train.images.shape[-1]
    return DataBundle(name, to_set(train), to_set(test), len(SCENE_CLASSES), (3, size, size), list(SCENE_CLASSES))


@register_dataset("scenes", "Synthetic ray-cast indoor scenes, 64x64 RGB, with exact depth/normals/contours/semantics")
def load_scenes(root: PathLike | None = None, download: bool = True, *, n_train: int = 2000, n_test: int = 500,
                size: int = 64, seed: int = 0, noise: float = 0.03) -> DataBundle:
    """The synthetic scenes as a :class:`DataBundle` (generated in memory; ``root``/``download`` are ignored).

    Args:
        n_train / n_test: number of training and test scenes.
        size: image height and width.
        seed: generator seed of the training scenes (test scenes use ``seed + 1``).
        noise: pixel noise std.
    """
    return scenes_bundle(make_scenes(n_train, seed, size, noise=noise), make_scenes(n_test, seed + 1, size, noise=noise))


__all__ = ["SCENE_CLASSES", "IGNORE", "DenseDataset", "Scenes", "make_scenes", "scenes_bundle", "boundaries",
           "load_scenes"]
