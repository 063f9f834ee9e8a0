"""Datasets for ELT Studio: procedural, bundled, and folder loaders behind one ``get_dataset`` call.

Every dataset is a map-style ``torch.utils.data.Dataset`` yielding ``(uint8 array, int label)`` with
arrays of ``sample_shape``: ``(H, W, 3)`` for images, ``(T, H, W, 3)`` for video.

========================  =====  =========================================================
name                      kind   source
========================  =====  =========================================================
``shapes``                image  procedural, 10 rotation-distinct shapes
``digits``                image  scikit-learn's bundled 8x8 digits, upscaled
``imagefolder``           image  ``root/<class>/*.jpg`` (ImageNet layout, synset names mapped)
``moving-shapes``         video  procedural, 10 motion classes
``moving-shapes-frames``  image  the frames of moving-shapes clips, classed by their shape
``videofolder``           video  ``root/<Class>/*.avi`` (UCF-101 layout and split lists)
========================  =====  =========================================================

Importing this package loads no data and prints nothing (scikit-learn and ffmpeg are imported on first
use); data is read when a dataset is built.
"""
from __future__ import annotations

from numbers import Integral

from .base import SPLITS, Dataset, DatasetError, check_split
from .digits import DigitsDataset
from .folders import ImageFolderDataset
from .shapes import ShapesDataset
from .video import MovingShapeFramesDataset, MovingShapesDataset, VideoFolderDataset

DATASET_NAMES = ("shapes", "digits", "imagefolder", "moving-shapes", "moving-shapes-frames", "videofolder")
FOLDER_DATASETS = ("imagefolder", "videofolder")

__all__ = ["DATASET_NAMES", "SPLITS", "Dataset", "DatasetError", "get_dataset", "dataset_for", "DigitsDataset",
           "ImageFolderDataset", "MovingShapeFramesDataset", "MovingShapesDataset", "ShapesDataset",
           "VideoFolderDataset"]


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise DatasetError(f"{name} must be an integer of at least {minimum}, got {value!r}.")
    return int(value)


def get_dataset(name: str, split: str = "train", *, root: str | None = None, image_size: int = 32,
                num_frames: int = 16, seed: int = 0) -> Dataset:
    """Build dataset ``name`` (one of DATASET_NAMES) for ``split`` ("train" or "test").

    ``root`` is required by, and only accepted for, the folder datasets; ``num_frames`` applies to
    video datasets and ``seed`` to procedural ones. Raises DatasetError with a one-sentence reason.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in DATASET_NAMES:
        raise DatasetError(f"Unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}.")
    check_split(split)
    image_size = _check_int(image_size, "image_size", 8)  # smaller leaves no room for a shape
    num_frames = _check_int(num_frames, "num_frames", 2)  # one frame cannot show motion
    if root is not None and key not in FOLDER_DATASETS:
        raise DatasetError(f"root is only used by the folder datasets ({', '.join(FOLDER_DATASETS)}), "
                           f"not by {key!r}; leave it unset.")

    if key == "shapes":
        return ShapesDataset(split, image_size=image_size, seed=seed)
    if key == "digits":
        return DigitsDataset(split, image_size=image_size)
    if key == "imagefolder":
        return ImageFolderDataset(split, root=root, image_size=image_size)
    if key == "moving-shapes":
        return MovingShapesDataset(split, image_size=image_size, num_frames=num_frames, seed=seed)
    if key == "moving-shapes-frames":
        return MovingShapeFramesDataset(split, image_size=image_size, num_frames=num_frames, seed=seed)
    return VideoFolderDataset(split, root=root, image_size=image_size, num_frames=num_frames)


def dataset_for(name: str, split: str, root: str | None, data_cfg, seed: int = 0) -> Dataset:
    """The dataset at the resolution (and clip length) of a tokenizer / classifier config."""
    frames = data_cfg.num_frames if data_cfg.is_video else 16
    return get_dataset(name, split, root=root, image_size=data_cfg.image_size, num_frames=frames, seed=seed)
