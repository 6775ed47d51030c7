"""Host-side noise keyed by (seed, image index), so an image never depends on its batch or shard.

Image k draws from its own stream ``numpy.random.default_rng([seed, k])``: first x_T (C, H, W),
then, for eta > 0, one (C, H, W) noise per step. Sampling 8 images as 1x8, 2x4 or as two shards on
two machines therefore gives the same 8 images.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["image_noise", "row_noise", "MAX_SEED"]

# Seeds and image indices are 0..MAX_SEED: what a served request carries (INT64), and so what every entry point takes.
MAX_SEED = 2**63 - 1


def image_noise(
    seed: int, indices: Iterable[int], shape: tuple[int, int, int], num_steps: int, stochastic: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """x_T (B, C, H, W) and, if ``stochastic``, per-step noise (S, B, C, H, W), float32."""
    return row_noise([(seed, k) for k in indices], shape, num_steps, stochastic)


def row_noise(
    rows: Iterable[tuple[int, int]], shape: tuple[int, int, int], num_steps: int, stochastic: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``image_noise`` of rows that each name their own (seed, index): a served batch mixes streams."""
    xs, zs = [], []
    for seed, k in rows:
        rng = np.random.default_rng([seed, k])
        xs.append(rng.standard_normal(shape, dtype=np.float32))
        if stochastic:
            zs.append(rng.standard_normal((num_steps, *shape), dtype=np.float32))
    x_T = np.stack(xs)
    return x_T, (np.ascontiguousarray(np.stack(zs, axis=1)) if stochastic else None)
