"""Procedural class-conditional shapes, and the vectorised shape renderer the video dataset reuses.

Each shape is an inside test on canonical coordinates ``(u, v)`` where the shape spans roughly the
unit disc. The renderer maps every supersampled pixel into each shape's canonical frame (translate,
rotate, scale), runs the test, and box-downsamples the coverage for anti-aliasing. The classes are
chosen to stay distinct under any rotation (no square/diamond pairs) and at 32x32.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .base import Dataset, as_index_list, split_id

SHAPE_NAMES = ("circle", "ring", "triangle", "square", "cross", "star", "crescent", "heart", "arrow", "bars")
LENGTHS = {"train": 50_000, "test": 10_000}  # nominal: items are rendered on demand, never stored
SIZE_RANGE = (0.55, 0.9)  # shape extent as a fraction of the image side
MIN_COLOUR_DISTANCE = 120.0  # Euclidean RGB distance between foreground and background (max ~441)
# Foreground and background colours are drawn from two small disjoint palettes (dark backgrounds,
# bright foregrounds) rather than from all of RGB.  A token's code mixes colour and geometry, so every
# colour pair has its own edge codes: with continuous colours, or even 16 shared ones (240 pairs), a
# small generator spends its capacity on colour and does not learn the shapes (measured: class
# accuracy at chance).  The class lives in the geometry.
BACKGROUNDS = np.array([(20, 20, 30), (0, 40, 110), (0, 90, 70), (110, 20, 30)], np.uint8)
FOREGROUNDS = np.array([(255, 225, 25), (70, 240, 240), (250, 250, 250), (245, 130, 48)], np.uint8)


def _polygon_count(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    """Number of the ``sides`` regular half-planes ``n_k . (u, v) <= apothem`` each point satisfies."""
    count = np.zeros(u.shape, np.uint8)
    for k in range(sides):
        a = 2 * np.pi * k / sides
        count += (u * np.float32(np.cos(a)) + v * np.float32(np.sin(a))) <= apothem
    return count


def _circle(u, v):
    return u * u + v * v <= 1.0


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5**2)


def _triangle(u, v):
    return _polygon_count(u, v, 3, 0.5) == 3  # circumradius 1


def _square(u, v):
    return (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))


def _star(u, v):
    # A pentagram is the set of points on the inner side of at least 4 of the 5 lines that
    # extend a pentagon's edges: the pentagon satisfies all 5, each tip exactly 4.
    # Apothem cos(72 deg) puts the tips on the unit circle.
    return _polygon_count(u, v, 5, float(np.cos(2 * np.pi / 5))) >= 4


def _crescent(u, v):
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.75**2)


def _heart(u, v):
    # Classic implicit heart (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up; scaled to fit the unit disc.
    x, y = 1.1 * u, 0.1 - 1.1 * v
    q = x * x + y * y - 1.0
    return q * q * q <= x * x * y * y * y


def _arrow(u, v):
    av = np.abs(v)
    shaft = (u >= -1.0) & (u <= 0.1) & (av <= 0.22)
    head = (u >= 0.0) & (av <= 0.75 * (1.0 - u))
    return shaft | head


def _bars(u, v):
    av = np.abs(v)
    return (np.abs(u) <= 0.95) & (av >= 0.2) & (av <= 0.65)


_INSIDE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle, "ring": _ring, "triangle": _triangle, "square": _square, "cross": _cross,
    "star": _star, "crescent": _crescent, "heart": _heart, "arrow": _arrow, "bars": _bars,
}
assert tuple(_INSIDE) == SHAPE_NAMES

# Shapes that look the same after any rotation, so they cannot show a "rotate" motion.
ROTATION_INVARIANT = ("circle", "ring")


def _box_sum(mask: np.ndarray, s: int) -> np.ndarray:
    """Sum non-overlapping s x s blocks: (n, H*s, W*s) uint8 -> (n, H, W) uint8 (exact for s <= 15)."""
    n, hs, ws = mask.shape
    rows = mask.reshape(n, hs // s, s, ws).sum(2, dtype=np.uint8)  # (n, H, W*s)
    cols = rows.reshape(n, hs // s, ws // s, s)
    # Strided adds beat a reduction over a tiny trailing axis by several times.
    return sum((cols[..., k] for k in range(1, s)), cols[..., 0])


def render_shapes(
    shape: np.ndarray,
    center: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    foreground: np.ndarray,
    background: np.ndarray,
    image_size: int,
    *,
    opacity: np.ndarray | None = None,
    supersample: int = 4,
) -> np.ndarray:
    """Render N shapes, one per image, with anti-aliased edges.

    shape (N,) int index into SHAPE_NAMES; center (N, 2) x, y in pixels; radius (N,) pixels (half the
    shape's extent); angle (N,) radians; foreground / background (N, 3) RGB in 0..255;
    opacity (N,) in [0, 1] (default 1). Returns (N, image_size, image_size, 3) uint8.
    """
    n, s = len(shape), supersample
    side = image_size * s
    grid = (np.arange(side, dtype=np.float32) + 0.5) / s  # supersample centres, in pixels
    coverage = np.zeros((n, image_size, image_size), np.float32)
    center = np.asarray(center, np.float32)
    inv_radius = 1.0 / np.asarray(radius, np.float32)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    for k, name in enumerate(SHAPE_NAMES):
        idx = np.flatnonzero(shape == k)
        if idx.size == 0:
            continue
        # Rotate by -angle and scale to unit size; the per-axis terms are computed on the small
        # (n, 1, side) and (n, side, 1) arrays so only the final sums are full size.
        c, sn, ir = cos[idx, None, None], sin[idx, None, None], inv_radius[idx, None, None]
        dx = (grid[None, None, :] - center[idx, 0, None, None]) * ir  # (n, 1, side)
        dy = (grid[None, :, None] - center[idx, 1, None, None]) * ir  # (n, side, 1)
        u = c * dx + sn * dy  # (n, side, side)
        v = c * dy - sn * dx
        inside = _INSIDE[name](u, v).view(np.uint8)
        coverage[idx] = _box_sum(inside, s)
    coverage *= 1.0 / (s * s)
    if opacity is not None:
        coverage *= np.asarray(opacity, np.float32)[:, None, None]
    fg = np.asarray(foreground, np.float32)[:, None, None, :]
    bg = np.asarray(background, np.float32)[:, None, None, :]
    image = bg + (fg - bg) * coverage[..., None]  # (N, H, W, 3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (foreground, background) pair, each (3,) uint8, at least MIN_COLOUR_DISTANCE apart."""
    return FOREGROUNDS[rng.integers(len(FOREGROUNDS))], BACKGROUNDS[rng.integers(len(BACKGROUNDS))]


class ShapesDataset(Dataset):
    """Procedural shapes: label ``i % 10`` with random colour, size, position and rotation.

    Item ``i`` of a split is drawn from ``np.random.default_rng([seed, split_id, i])``, so it is the same
    on every machine, worker and epoch.
    """

    name = "shapes"
    class_names = SHAPE_NAMES
    is_video = False

    def __init__(self, split: str = "train", *, image_size: int = 32, seed: int = 0) -> None:
        self.split, self.image_size, self.seed = split, image_size, seed
        self._split_id = split_id(split)
        self.sample_shape = (image_size, image_size, 3)

    def __len__(self) -> int:
        return LENGTHS[self.split]

    def _params(self, i: int) -> tuple[int, float, float, float, float, np.ndarray, np.ndarray]:
        """(label, cx, cy, radius, angle, foreground, background) of item ``i``, in pixels / radians."""
        rng = np.random.default_rng([self.seed, self._split_id, i])
        size = self.image_size
        radius = rng.uniform(*SIZE_RANGE) * size / 2
        cx, cy = rng.uniform(radius, size - radius, 2)  # keeps the shape inside the image
        angle = rng.uniform(0, 2 * np.pi)
        foreground, background = sample_colours(rng)
        return i % len(SHAPE_NAMES), cx, cy, radius, angle, foreground, background

    def batch(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rendered images (B, H, W, 3) uint8 and labels (B,) int64, in one vectorised call."""
        params = [self._params(self._check_index(i)) for i in as_index_list(indices)]
        if not params:
            return np.zeros((0, *self.sample_shape), np.uint8), np.zeros((0,), np.int64)
        label, cx, cy, radius, angle, fg, bg = (np.array(p) for p in zip(*params))
        images = render_shapes(label, np.stack([cx, cy], 1), radius, angle, fg, bg, self.image_size)
        return images, label.astype(np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        images, labels = self.batch([i])
        return images[0], int(labels[0])

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "seed": self.seed}

