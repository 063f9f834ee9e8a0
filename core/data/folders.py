"""ImageNet-style image folders: ``root/<class_dir>/*.jpg`` (optionally ``root/train`` + ``root/val``).

Class display names, first match wins:
1. ``root/synset_words.txt`` or ``root/classes.txt`` lines ``"n01440764 tench, Tinca tinca"``
   -> the text before the first comma;
2. directory names that are ImageNet synset ids -> the shipped ``assets/imagenet_classes.json``;
3. the directory name itself.
Class indices follow the sorted directory names, which for ImageNet is the standard 1k order.
"""
from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetError, FileDataset, check_split, fit_square
from .names import imagenet_synset_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NAME_FILES = ("synset_words.txt", "classes.txt")
# written by a data set's build script (scripts/make_emoji_dataset.py): its "sources" (packages, versions,
# licences, attribution) travel into the config of every checkpoint trained on the folder
CARD_FILE = "dataset.json"
SYNSET_PATTERN = re.compile(r"n\d{8}")


def check_root(root: str | Path | None, dataset: str, layout: str) -> Path:
    """``root`` as an existing directory, or a DatasetError that says what layout is expected."""
    if root is None:
        raise DatasetError(f"The {dataset} dataset needs root=<folder laid out as {layout}>.")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"Dataset folder {path} does not exist; {dataset} expects {layout}.")
    if not path.is_dir():
        raise DatasetError(f"Dataset root {path} is not a folder; {dataset} expects {layout}.")
    return path


def class_dirs(folders: list[Path]) -> list[str]:
    """Sorted union of the visible sub-directory names of ``folders`` (so splits share indices)."""
    names = {p.name for folder in folders if folder.is_dir() for p in folder.iterdir()
             if p.is_dir() and not p.name.startswith(".")}
    return sorted(names)


def files_with_suffix(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` (recursively) whose extension is in ``suffixes``, case-insensitively."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def _read_name_file(root: Path) -> dict[str, str]:
    """``{"n01440764": "tench"}`` from the first name file present in ``root``, else ``{}``."""
    for filename in NAME_FILES:
        path = root / filename
        if path.is_file():
            mapping = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, rest = line.strip().partition(" ")
                if key and rest.strip():
                    mapping[key] = rest.split(",")[0].strip()
            return mapping
    return {}


def display_names(dirs: list[str], root: Path) -> tuple[str, ...]:
    """Human-readable, unique class names for the class directories ``dirs``."""
    from_file = _read_name_file(root)
    synsets = imagenet_synset_names() if any(SYNSET_PATTERN.fullmatch(d) for d in dirs) else {}
    names = [from_file.get(d) or synsets.get(d) or d for d in dirs]
    # Some ImageNet names repeat (e.g. two "crane" synsets); suffix the directory to keep names unique
    # so that class_index(name) is unambiguous.
    counts = Counter(n.lower() for n in names)
    return tuple(f"{n} ({d})" if counts[n.lower()] > 1 else n for n, d in zip(names, dirs))


class ImageFolderDataset(FileDataset):
    """Images from ``root/<class>/...`` resized (shorter side) and center-cropped to ``image_size``.

    If ``root/train`` and ``root/val`` both exist they are the train and test splits; otherwise every
    image is in both splits. An unreadable file is skipped with a warning when it is first read.
    """

    name = "imagefolder"
    is_video = False
    LAYOUT = "root/<class>/*.jpg (or root/train/<class>/..., root/val/<class>/...)"

    def __init__(self, split: str = "train", *, root: str | Path | None = None, image_size: int = 32) -> None:
        super().__init__()
        self.root = check_root(root, self.name, self.LAYOUT)
        self.split, self.image_size = check_split(split), image_size
        self.sample_shape = (image_size, image_size, 3)
        split_folders = [self.root / "train", self.root / "val"]
        if all(f.is_dir() for f in split_folders):
            folder = split_folders[0] if split == "train" else split_folders[1]
        else:
            folder, split_folders = self.root, [self.root]
        dirs = class_dirs(split_folders)
        if not dirs:
            raise DatasetError(f"No class sub-folders in {folder}; expected {self.LAYOUT}.")
        self.class_names = display_names(dirs, self.root)
        card = self.root / CARD_FILE
        if card.is_file():
            try:
                self.sources = json.loads(card.read_text(encoding="utf-8"))["sources"]
            except (ValueError, KeyError, TypeError) as error:
                raise DatasetError(f"{card} is not a data set card with a 'sources' list ({error}).") from None
        self.files, self.labels = [], []
        for label, d in enumerate(dirs):
            found = files_with_suffix(folder / d, IMAGE_EXTENSIONS)
            if not found and (folder / d).is_dir():
                # kept, so that the other classes keep their indices (ImageNet's 1k order)
                warnings.warn(f"Class folder {folder / d} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                              f"class {self.class_names[label]!r} has no training samples.", stacklevel=2)
            self.files += found
            self.labels += [label] * len(found)
        if not self.files:
            raise DatasetError(
                f"No images in the class sub-folders of {folder}; accepted extensions are "
                f"{', '.join(IMAGE_EXTENSIONS)} (any case)."
            )

    def _load(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return fit_square(image, self.image_size)

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "root": str(self.root)}
