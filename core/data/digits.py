"""scikit-learn's bundled 8x8 handwritten digits (1797 images), upscaled to RGB.

Needs no download, which makes it the smallest real-data sanity check. The test split is a fixed,
stratified 20 % (scikit-learn ``train_test_split``, ``random_state=0``: 360 images, 35-37 per class)
that no tokenizer, classifier or generator trains on; the other 1,437 images are the train split.
(The source is ordered 0, 1, ..., 9, 0, 1, ..., so a plain "every 5th image" split would hold out
mostly 0s and 5s.)
"""
from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
from PIL import Image

from .base import Dataset, as_index_list, check_split

DIGIT_NAMES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def test_mask() -> np.ndarray:
    """(1797,) bool: True for the held-out test images (stratified by class, fixed seed)."""
    from sklearn.model_selection import train_test_split

    labels = _load_digits()[1]
    _, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
                               random_state=SPLIT_SEED)
    mask = np.zeros(len(labels), bool)
    mask[test] = True
    return mask


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 8, 8) uint8 in 0..255 and labels (N,) int64; cached per process."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn is slow

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # source range is 0..16
    return images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _upscaled(image_size: int) -> np.ndarray:
    """All digits bilinearly upscaled to (N, image_size, image_size) uint8, once per size and process."""
    return np.stack([np.asarray(Image.fromarray(small).resize((image_size, image_size), Image.Resampling.BILINEAR))
                     for small in _load_digits()[0]])  # 2-D uint8 -> mode "L"


class DigitsDataset(Dataset):
    """White digits on black, bilinearly upscaled from 8x8 to ``image_size``; deterministic, no seed."""

    name = "digits"
    class_names = DIGIT_NAMES
    is_video = False

    def __init__(self, split: str = "train", *, image_size: int = 32) -> None:
        self.split, self.image_size = check_split(split), image_size
        self.sample_shape = (image_size, image_size, 3)
        keep = test_mask() if split == "test" else ~test_mask()
        self._images, self._labels = _upscaled(image_size)[keep], _load_digits()[1][keep]

    def __len__(self) -> int:
        return len(self._images)

    def batch(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = [self._check_index(i) for i in as_index_list(indices)]
        grey = self._images[rows]
        return np.repeat(grey[..., None], 3, axis=-1), self._labels[rows].copy()  # (B, H, W, 3) grey as RGB

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        x, y = self.batch([i])
        return x[0], int(y[0])

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size}
