"""Suggestive annotation (Yang et al., MICCAI 2017), the selection step Xu et al. (CVPR 2018) build on.

One round, given the labelled indices of a pool:

1. train ``models`` FCNs, each on a bootstrap sample (drawn with replacement) of the labelled images;
2. **uncertainty** of every unlabelled image: the per-pixel variance of the models' gland probabilities, averaged
   over the image;
3. take the ``candidates`` most uncertain images;
4. **representativeness**: cosine similarity of the images' encoder descriptors (each model's bottleneck averaged
   over space, concatenated over the models); among the candidates, greedily add the image that most increases
   ``F(S) = Σ_{u in unlabelled} max_{s in S} sim(s, u)`` (max-cover of the unlabelled set), ``batch`` times.

:func:`random_selection` is the baseline: ``batch`` unlabelled images drawn uniformly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .fcn import predict, train_fcn


def _check(pool_size: int, labelled: list[int], batch: int) -> list[int]:
    if not labelled:
        raise ConfigError("suggestive annotation needs a non-empty labelled set to train its FCNs")
    bad = [i for i in labelled if not 0 <= int(i) < pool_size]
    if bad:
        raise ConfigError(f"labelled index {bad[0]} is outside the pool of {pool_size} images")
    unlabelled = sorted(set(range(pool_size)) - {int(i) for i in labelled})
    if batch < 1 or batch > len(unlabelled):
        raise ConfigError(f"cannot choose {batch} images: {len(unlabelled)} of the pool's {pool_size} are unlabelled")
    return unlabelled


def random_selection(pool_size: int, labelled: list[int], batch: int, seed: int = 0) -> list[int]:
    """``batch`` unlabelled pool indices drawn uniformly at random (the baseline)."""
    unlabelled = _check(pool_size, labelled, batch)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(unlabelled, size=batch, replace=False))


def max_cover(similarity: np.ndarray, candidates: list[int], batch: int) -> list[int]:
    """Greedy max-cover: indices (rows of ``similarity``, among ``candidates``) maximizing
    ``Σ_u max_{s in chosen} similarity[s, u]`` over the columns ``u``, chosen one at a time."""
    chosen: list[int] = []
    best = np.full(similarity.shape[1], -np.inf)
    for _ in range(batch):
        gains = [(np.maximum(best, similarity[c]).sum(), -c) for c in candidates if c not in chosen]
        _, neg = max(gains)
        chosen.append(-neg)
        best = np.maximum(best, similarity[-neg])
    return chosen


def suggest(images: np.ndarray, masks: np.ndarray, labelled: list[int], batch: int, *, models: int = 4,
            candidates: int = 16, epochs: int = 15, width: int = 8, seed: int = 0) -> list[int]:
    """One round of suggestive annotation over the pool ``images`` (``masks`` are read only at ``labelled``).

    Returns:
        ``batch`` pool indices to annotate next, in the order chosen.
    """
    if masks.shape[:1] + masks.shape[1:] != images.shape[:1] + images.shape[2:] or images.ndim != 4:
        raise ConfigError(f"pool images (N, C, H, W) and masks (N, H, W) must match; got {images.shape} and "
                          f"{masks.shape}")
    unlabelled = _check(len(images), labelled, batch)
    rng = np.random.default_rng(seed)
    probs, descriptors = [], []
    for m in range(models):
        sample = rng.choice(labelled, size=len(labelled), replace=True)
        net = train_fcn(images[sample], masks[sample], epochs=epochs, width=width, seed=seed * 1000 + m)
        probs.append(predict(net, images[unlabelled]))
        with torch.no_grad():
            descriptors.append(net.descriptor(torch.as_tensor(images[unlabelled], dtype=torch.float32)).numpy())
    uncertainty = np.stack(probs).var(axis=0).mean(axis=(1, 2))
    top = list(np.argsort(-uncertainty, kind="stable")[:max(candidates, batch)])
    d = np.concatenate(descriptors, axis=1)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    picked = max_cover(d @ d.T, [int(t) for t in top], batch)
    return [unlabelled[i] for i in picked]


__all__ = ["suggest", "random_selection", "max_cover"]
