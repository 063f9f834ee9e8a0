"""Common dataset base class, error type and small image helpers shared by all loaders.

Every dataset yields ``(uint8 array, int label)`` pairs: images are ``(H, W, 3)``, clips are
``(T, H, W, 3)``. Tensor conversion and normalisation belong to the training code, not here.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image

SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A dataset cannot be built; the message is one sentence naming the problem and what is accepted."""


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return split


def split_id(split: str) -> int:
    """Stable integer for ``split``, mixed into procedural seeds so train and test never overlap."""
    return SPLITS.index(check_split(split))


def as_index_list(indices: Any) -> list[int]:
    """Turn a list / range / numpy array / torch tensor of indices into a list of Python ints."""
    if hasattr(indices, "tolist"):  # numpy arrays and torch tensors
        indices = indices.tolist()
    if isinstance(indices, int):
        indices = [indices]
    return [int(i) for i in indices]


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, then center-crop to ``(size, size, 3)`` uint8 RGB."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    # max(size, ...) guards against rounding the longer side below the crop size.
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class Dataset(torch.utils.data.Dataset):
    """Map-style dataset of class-labelled uint8 images or clips (works with ``DistributedSampler``).

    Subclasses set ``name``, ``split``, ``class_names``, ``is_video``, ``sample_shape`` and implement
    ``__len__`` and ``__getitem__``; procedural datasets override ``batch`` with a vectorised renderer.
    """

    name: str
    split: str
    class_names: tuple[str, ...]
    is_video: bool = False
    sample_shape: tuple[int, ...]  # (H, W, 3) for images, (T, H, W, 3) for video
    sources: list[dict] | None = None  # where the files come from, with their licences (checkpoints record it)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _check_index(self, i: int) -> int:
        """Validate ``i`` (negative indices count from the end); IndexError ends plain iteration."""
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} {self.split} split of length {n}")
        return i % n

    def batch(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked samples ``(B, *sample_shape)`` uint8 and labels ``(B,)`` int64."""
        items = [self[i] for i in as_index_list(indices)]
        if not items:
            return np.zeros((0, *self.sample_shape), np.uint8), np.zeros((0,), np.int64)
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)

    def __getitems__(self, indices: list[int]) -> list[tuple[np.ndarray, int]]:
        # torch's DataLoader calls this with a whole batch of indices when it exists, which lets
        # procedural datasets render a batch in one vectorised call instead of item by item.
        x, y = self.batch(indices)
        return list(zip(x, y.tolist()))

    def class_index(self, name_or_index: str | int) -> int:
        """Class index from an exact name (case-insensitive), an integer, or a digit string."""
        if isinstance(name_or_index, str):
            key = name_or_index.strip().lower()
            for index, name in enumerate(self.class_names):
                if name.lower() == key:
                    return index
            if key.isdigit() and int(key) < self.num_classes:
                return int(key)
        elif isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
            if 0 <= int(name_or_index) < self.num_classes:
                return int(name_or_index)
        examples = ", ".join(repr(n) for n in self.class_names[:5])
        more = ", ..." if self.num_classes > 5 else ""
        raise DatasetError(
            f"Unknown class {name_or_index!r} for dataset {self.name!r}; use a class name such as "
            f"{examples}{more} or an index from 0 to {self.num_classes - 1}."
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready description stored with checkpoints so a model knows what it was trained on."""
        return {"name": self.name, "split": self.split, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "sample_shape": list(self.sample_shape)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, len={len(self)}, "
                f"classes={self.num_classes}, sample_shape={self.sample_shape})")


class FileDataset(Dataset):
    """Base for datasets backed by files: item ``i`` is ``files[i]`` with label ``labels[i]``.

    A file that fails to load is reported once with a warning and replaced by the next readable
    file, so one corrupt file never kills a training run.
    """

    root: Path
    files: list[Path]
    labels: list[int]

    def __init__(self) -> None:
        self._unreadable: set[int] = set()

    def _load(self, path: Path) -> np.ndarray:
        """Decode one file into a ``sample_shape`` uint8 array; raise any exception on failure."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        start = self._check_index(i)
        n = len(self.files)
        for j in [(start + k) % n for k in range(n)]:
            if j in self._unreadable:
                continue
            try:
                return self._load(self.files[j]), self.labels[j]
            except Exception as error:  # any decoder error means "skip this file"
                self._unreadable.add(j)
                warnings.warn(f"Skipping unreadable file {self.files[j]}: {error}", stacklevel=2)
        raise DatasetError(f"No readable files left in the {self.name} dataset at {self.root}.")
