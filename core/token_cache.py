"""A dataset's tokens, encoded once into a memory-mapped file and reused by every run and DDP rank.

    python -m core.train --preset my-elt --out runs/elt --token-cache /data/tokens/imagenet-train

Decoding JPEGs or video clips on every step is what bounds a large generator run on few CPUs; the
generator only ever sees the frozen tokenizer's codes, so they are computed once.  A cache folder holds

- ``tokens.npy``: (N, num_tokens) int16/int32 codes, a plain ``.npy`` opened with ``numpy.load(mmap_mode="r")``;
- ``labels.npy``: (N,) int64 class labels;
- ``index.json``: what the codes were made from: the tokenizer (a hash of its weights and config) and
  the dataset (its description plus, for a folder, a hash of every file's path, size and mtime), the
  shapes, and the files skipped as unreadable.  It is written last, so a folder without it is an
  unfinished build.

A cache whose tokenizer or dataset differs from the run's is an error naming what changed, never a
silent retrain on the wrong tokens, and an existing cache is only replaced when asked (``rebuild``).
Rank 0 builds (decoding in worker processes); the other ranks wait for ``index.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.utils.data

from core import checkpoint as ckpt
from core.cli import UsageError
from core.data import Dataset
from core.data.base import FileDataset

FORMAT = "elt-studio-token-cache/1"
INDEX, TOKENS, LABELS = "index.json", "tokens.npy", "labels.npy"
OWN_FILES = (INDEX, TOKENS, LABELS)


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 of a tokenizer checkpoint's weights and config: any retraining changes it."""
    folder = Path(tokenizer_dir)
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json"):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset's items: its description and, for file datasets, every file's
    path (relative to the root), size and mtime, so an added, removed or edited file is noticed."""
    description = dataset.describe()
    fingerprint = {"description": description}
    if isinstance(dataset, FileDataset):
        digest = hashlib.sha256()
        for path, label in zip(dataset.files, dataset.labels):
            stat = path.stat()
            digest.update(f"{path.relative_to(dataset.root)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
        fingerprint.update(files=len(dataset.files), files_sha256=digest.hexdigest())
    return fingerprint


class _Decoded(torch.utils.data.Dataset):
    """Item i as (pixels or None, label, error text): unreadable files are reported, not replaced."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if isinstance(self.dataset, FileDataset):
            try:
                return self.dataset._load(self.dataset.files[i]), self.dataset.labels[i], ""
            except Exception as error:  # any decoder error: skip this file, say which
                return None, self.dataset.labels[i], f"{self.dataset.files[i]}: {error}"
        pixels, label = self.dataset[i]
        return pixels, label, ""


def _collate(items):
    return items  # a list of (pixels | None, label, error); stacked after dropping the unreadable


class DiskTokenCache:
    """The opened cache: ``len(cache)`` items, ``cache.get(indices)`` -> (tokens (b, T), labels (b,)) int64."""

    def __init__(self, folder: Path, index: dict[str, Any]):
        self.folder, self.index = folder, index
        self.tokens = np.load(folder / TOKENS, mmap_mode="r")
        self.labels = np.load(folder / LABELS, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(indices.numpy())  # ascending reads from the memory map, then back in order
        order = np.argsort(np.argsort(indices.numpy(), kind="stable"), kind="stable")
        tokens = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.int64)[order])
        return tokens, torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64)[order])


def _expected(tokenizer_dir: str | Path, dataset: Dataset, num_tokens: int) -> dict[str, Any]:
    return {"format": FORMAT, "tokenizer": {"path": str(Path(tokenizer_dir).resolve()),
                                            "sha256": tokenizer_fingerprint(tokenizer_dir)},
            "dataset": dataset_fingerprint(dataset), "num_tokens": num_tokens}


def check_index(folder: Path, index: dict[str, Any], expected: dict[str, Any]) -> None:
    """UsageError naming what differs between a cache and this run (tokenizer, dataset, shape)."""
    fix = f"pass another --token-cache folder, or --rebuild-token-cache to replace {folder}"
    if index.get("format") != FORMAT:
        raise UsageError(f"token cache {folder} has format {index.get('format')!r}, not {FORMAT!r}; {fix}")
    if index["tokenizer"]["sha256"] != expected["tokenizer"]["sha256"]:
        raise UsageError(f"token cache {folder} was built with another tokenizer ({index['tokenizer']['path']}, "
                         f"weights differ from {expected['tokenizer']['path']}); {fix}")
    if index["dataset"] != expected["dataset"]:
        was, now = index["dataset"], expected["dataset"]
        what = ("its files changed (added, removed or modified since the cache was built)"
                if was["description"] == now["description"] else
                f"it was built from {was['description'].get('name')} {was['description'].get('sample_shape')} "
                f"({was['description'].get('root', 'no folder')}), this run uses "
                f"{now['description'].get('name')} {now['description'].get('sample_shape')} "
                f"({now['description'].get('root', 'no folder')})")
        raise UsageError(f"token cache {folder} does not match the dataset: {what}; {fix}")
    if index["num_tokens"] != expected["num_tokens"]:
        raise UsageError(f"token cache {folder} holds {index['num_tokens']} tokens per item, the model "
                         f"needs {expected['num_tokens']}; {fix}")


def build(folder: Path, dataset: Dataset, encode: Callable[[torch.Tensor], torch.Tensor], expected: dict[str, Any],
          *, vocab_size: int, batch_size: int = 256, workers: int | None = None,
          log: Callable[[str], None] = print) -> None:
    """Decode ``dataset`` with ``workers`` processes, encode batches, write the cache; index.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(_Decoded(dataset), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate, shuffle=False)
    dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
    n = len(dataset)
    tokens = np.lib.format.open_memmap(folder / TOKENS, mode="w+", dtype=dtype, shape=(n, expected["num_tokens"]))
    labels = np.zeros(n, np.int64)
    skipped: list[str] = []
    kept, t0 = 0, time.perf_counter()
    for batch in loader:
        for _, _, error in batch:
            if error:
                skipped.append(error)
                warnings.warn(f"Skipping unreadable file {error}", stacklevel=2)
        good = [(pixels, label) for pixels, label, _ in batch if pixels is not None]
        if not good:
            continue
        pixels = torch.from_numpy(np.stack([p for p, _ in good]))
        codes = encode(pixels).cpu().numpy()
        tokens[kept:kept + len(good)] = codes.astype(dtype)
        labels[kept:kept + len(good)] = [label for _, label in good]
        kept += len(good)
    if kept == 0:
        raise UsageError(f"no readable items in {dataset.name} to build the token cache {folder} from")
    for label in np.flatnonzero(np.bincount(labels[:kept], minlength=dataset.num_classes) == 0):
        warnings.warn(f"Class {dataset.class_names[label]!r} has no readable item in {dataset.name}; the cache "
                      f"{folder} holds no sample of it.", stacklevel=2)
    tokens.flush()
    del tokens
    if kept < n:  # drop the rows of skipped files: rewrite the first `kept` rows into a right-sized file
        full = np.load(folder / TOKENS, mmap_mode="r")
        np.save(folder / f".{TOKENS}.tmp.npy", np.asarray(full[:kept]))
        del full
        os.replace(folder / f".{TOKENS}.tmp.npy", folder / TOKENS)
    np.save(folder / LABELS, labels[:kept])
    seconds = time.perf_counter() - t0
    ckpt.write_json(folder / INDEX, {**expected, "count": kept, "dtype": np.dtype(dtype).name,
                                     "skipped": skipped, "build_seconds": round(seconds, 2),
                                     "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log(f"token cache {folder}: {kept} items ({len(skipped)} unreadable skipped) in {seconds:.1f} s")


def open_cache(folder: str | Path, dataset: Dataset, tokenizer_dir: str | Path,
               encode: Callable[[torch.Tensor], torch.Tensor], *, num_tokens: int, vocab_size: int,
               rank: int = 0, rebuild: bool = False, workers: int | None = None,
               log: Callable[[str], None] = print, poll_s: float = 2.0) -> DiskTokenCache:
    """Open the cache at ``folder`` for ``dataset`` encoded by the tokenizer at ``tokenizer_dir``.

    Rank 0 builds it when the folder is absent or empty (or when ``rebuild``, which deletes only the
    cache's own files); other ranks wait for its index.  A cache built from something else, or a
    folder holding anything but a finished cache, is a UsageError.
    """
    folder = Path(folder)
    expected = _expected(tokenizer_dir, dataset, num_tokens)
    if rank == 0:
        if rebuild:
            for name in OWN_FILES:
                (folder / name).unlink(missing_ok=True)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--token-cache {folder} is a file, not a folder")
        if not (folder / INDEX).exists():
            if folder.is_dir() and any(folder.iterdir()):
                raise UsageError(f"--token-cache {folder} holds files but no finished cache ({INDEX} missing: an "
                                 f"interrupted build, or another folder); pass --rebuild-token-cache to build "
                                 f"there anyway, or choose an empty folder")
            build(folder, dataset, encode, expected, vocab_size=vocab_size, workers=workers, log=log)
    else:
        while not (folder / INDEX).exists():  # rank 0 is building; torchrun stops us if it fails
            time.sleep(poll_s)
    index = json.loads((folder / INDEX).read_text())
    check_index(folder, index, expected)
    return DiskTokenCache(folder, index)

