"""scikit-learn's bundled 8x8 handwritten digits (1797 images), upscaled to RGB.

Needs no download, which makes it the smallest real-data sanity check. Every 5th image
(``i % 5 == 0``) is the test split, the rest is train.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .base import Dataset, check_split

DIGIT_NAMES = tuple(str(d) for d in range(10))
TEST_EVERY = 5


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 8, 8) uint8 in 0..255 and labels (N,) int64; cached per process."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn is slow

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # source range is 0..16
    return images, bunch.target.astype(np.int64)


class DigitsDataset(Dataset):
    """White digits on black, bilinearly upscaled from 8x8 to ``image_size``; deterministic, no seed."""

    name = "digits"
    class_names = DIGIT_NAMES
    is_video = False

    def __init__(self, split: str = "train", *, image_size: int = 32) -> None:
        self.split, self.image_size = check_split(split), image_size
        self.sample_shape = (image_size, image_size, 3)
        images, labels = _load_digits()
        is_test = np.arange(len(images)) % TEST_EVERY == 0
        keep = is_test if split == "test" else ~is_test
        self._images, self._labels = images[keep], labels[keep]

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = self._check_index(i)
        small = Image.fromarray(self._images[i])  # 2-D uint8 -> mode "L"
        big = np.asarray(small.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR))
        return np.repeat(big[:, :, None], 3, axis=2), int(self._labels[i])  # (H, W, 3) grey as RGB

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size}
