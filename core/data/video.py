"""Video datasets: procedural moving shapes (classes are motions) and UCF-101 style video folders.

Clips are ``(T, H, W, 3)`` uint8. Moving shapes reuse the image renderer in ``shapes.py``: a clip is
T rendered frames whose centre / radius / rotation / opacity follow the action's trajectory.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .base import (Dataset, DatasetError, FileDataset, as_index_list, check_split, fit_square,
                   split_id)
from .folders import check_root, files_with_suffix
from .shapes import ROTATION_INVARIANT, SHAPE_NAMES, render_shapes, sample_colours

# --------------------------------------------------------------------------------------------------
# Procedural moving shapes
# --------------------------------------------------------------------------------------------------

ACTION_NAMES = ("slide-right", "slide-left", "slide-up", "slide-down", "grow", "shrink",
                "rotate", "orbit", "bounce", "blink")
LENGTHS = {"train": 20_000, "test": 5_000}  # nominal: clips are rendered on demand, never stored
RADIUS_RANGE = (0.15, 0.22)  # shape radius as a fraction of the image side, for moving shapes
TRAVEL_RANGE = (0.3, 0.5)  # slide distance as a fraction of the side; fits since 2 * 0.22 + 0.5 < 1
ROTATABLE = tuple(i for i, s in enumerate(SHAPE_NAMES) if s not in ROTATION_INVARIANT)


class Track(NamedTuple):
    """Per-frame pose of the shape over one clip; every field has T rows."""

    center: np.ndarray  # (T, 2) x, y in pixels
    radius: np.ndarray  # (T,) pixels
    spin: np.ndarray  # (T,) radians added to the clip's random base angle
    opacity: np.ndarray  # (T,) in [0, 1]


# A track function draws its own random parameters and returns the pose at normalised times t in
# [0, 1] (first to last frame), so 8- and 16-frame clips show the same motion at two frame rates.
TrackFn = Callable[[np.random.Generator, np.ndarray, int], Track]


def _pose(t: np.ndarray, center, radius, spin=0.0, opacity=1.0) -> Track:
    """Track from constants or per-frame arrays: center (2,) or (T, 2); the others scalars or (T,)."""
    frames = len(t)
    return Track(
        np.broadcast_to(np.asarray(center, np.float64), (frames, 2)),
        np.broadcast_to(np.asarray(radius, np.float64), (frames,)),
        np.broadcast_to(np.asarray(spin, np.float64), (frames,)),
        np.broadcast_to(np.asarray(opacity, np.float64), (frames,)),
    )


def _slide(dx: int, dy: int) -> TrackFn:
    """Straight-line motion in direction (dx, dy), y pointing down as in images."""

    def track(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
        radius = rng.uniform(*RADIUS_RANGE) * size
        step = np.array([dx, dy]) * rng.uniform(*TRAVEL_RANGE) * size  # total displacement (2,)
        # Start anywhere that keeps the shape inside the image for the whole path.
        start = rng.uniform(radius - np.minimum(step, 0), size - radius - np.maximum(step, 0))
        return _pose(t, start + step * t[:, None], radius)

    return track


def _scale(grow: bool) -> TrackFn:
    def track(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
        small, large = rng.uniform(0.08, 0.12) * size, rng.uniform(0.3, 0.4) * size
        center = rng.uniform(large, size - large, 2)
        start, end = (small, large) if grow else (large, small)
        return _pose(t, center, start + (end - start) * t)

    return track


def _rotate(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
    radius = rng.uniform(*RADIUS_RANGE) * size
    center = rng.uniform(radius, size - radius, 2)
    # 90-180 degrees in total keeps the per-frame step (<= 26 degrees at 8 frames) below half of the
    # smallest symmetry angle in ROTATABLE (72 degrees, the star), so the spin is never aliased.
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(np.pi / 2, np.pi)
    return _pose(t, center, radius, spin=turn * t)


def _orbit(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
    orbit = rng.uniform(0.18, 0.25) * size
    radius = min(rng.uniform(*RADIUS_RANGE) * size, size / 2 - orbit)
    sweep = rng.choice([-1.0, 1.0]) * rng.uniform(1.5 * np.pi, 2 * np.pi)  # 3/4 to one full turn
    phase = rng.uniform(0, 2 * np.pi) + sweep * t
    return _pose(t, size / 2 + orbit * np.stack([np.cos(phase), np.sin(phase)], 1), radius)


def _bounce(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
    radius = rng.uniform(*RADIUS_RANGE) * size
    height = min(rng.uniform(0.35, 0.55) * size, size - 2 * radius)
    x, floor = rng.uniform(radius, size - radius), size - radius
    bounces = rng.uniform(1.0, 2.0)
    y = floor - height * np.abs(np.cos(np.pi * bounces * t))  # starts at the top, hits the floor
    return _pose(t, np.stack([np.full_like(t, x), y], 1), radius)


def _blink(rng: np.random.Generator, t: np.ndarray, size: int) -> Track:
    radius = rng.uniform(*RADIUS_RANGE) * size
    center = rng.uniform(radius, size - radius, 2)
    blinks = rng.integers(2, 4)  # full on/off cycles per clip
    visible = np.floor(t * 2 * blinks) % 2 == 0
    return _pose(t, center, radius, opacity=visible.astype(np.float64))


_TRACKS: dict[str, TrackFn] = {
    "slide-right": _slide(1, 0), "slide-left": _slide(-1, 0), "slide-up": _slide(0, -1),
    "slide-down": _slide(0, 1), "grow": _scale(True), "shrink": _scale(False), "rotate": _rotate,
    "orbit": _orbit, "bounce": _bounce, "blink": _blink,
}
assert tuple(_TRACKS) == ACTION_NAMES


class MovingShapesDataset(Dataset):
    """Procedural clips whose class is the motion: label ``i % 10``, random shape, colours and path.

    Clip ``i`` of a split is drawn from ``np.random.default_rng([seed, split_id, i])``.
    """

    name = "moving-shapes"
    class_names = ACTION_NAMES
    is_video = True

    def __init__(self, split: str = "train", *, image_size: int = 32, num_frames: int = 16,
                 seed: int = 0) -> None:
        self.split, self.image_size, self.num_frames, self.seed = split, image_size, num_frames, seed
        self._split_id = split_id(split)
        self.sample_shape = (num_frames, image_size, image_size, 3)
        self._t = np.linspace(0.0, 1.0, num_frames)

    def __len__(self) -> int:
        return LENGTHS[self.split]

    def _params(self, i: int) -> tuple[int, int, np.ndarray, np.ndarray, float, Track]:
        """(label, shape index, foreground, background, base angle, track) of clip ``i``."""
        rng = np.random.default_rng([self.seed, self._split_id, i])
        label = i % len(ACTION_NAMES)
        action = ACTION_NAMES[label]
        shapes = ROTATABLE if action == "rotate" else range(len(SHAPE_NAMES))
        shape = shapes[rng.integers(len(shapes))]
        foreground, background = sample_colours(rng)
        angle = rng.uniform(0, 2 * np.pi)
        return label, shape, foreground, background, angle, _TRACKS[action](rng, self._t, self.image_size)

    def batch(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rendered clips (B, T, H, W, 3) uint8 and labels (B,) int64; all B*T frames in one call."""
        params = [self._params(self._check_index(i)) for i in as_index_list(indices)]
        frames = len(self._t)
        video = self._render([p for p in params for _ in range(frames)], np.tile(np.arange(frames), len(params)))
        return video.reshape(len(params), *self.sample_shape), np.array([p[0] for p in params], np.int64)

    def shapes(self, indices: Iterable[int]) -> np.ndarray:
        """The shape (an index into SHAPE_NAMES) each clip draws in every frame: (B,) int64."""
        return np.array([self._params(self._check_index(i))[1] for i in as_index_list(indices)], np.int64)

    def _render(self, params: list, frames: np.ndarray) -> np.ndarray:
        """Frame ``frames[k]`` of the clip with parameters ``params[k]``: (N, H, W, 3) uint8, in one call."""
        if not params:
            return np.zeros((0, *self.sample_shape[1:]), np.uint8)
        _, shape, fg, bg, angle, tracks = zip(*params)
        pose = Track(*(np.stack([getattr(track, field)[f] for track, f in zip(tracks, frames)])
                       for field in Track._fields))
        return render_shapes(np.array(shape), pose.center, pose.radius, np.array(angle) + pose.spin,
                             np.array(fg), np.array(bg), self.image_size, opacity=pose.opacity)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        clips, labels = self.batch([i])
        return clips[0], int(labels[0])

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "num_frames": self.num_frames,
                "seed": self.seed}


class MovingShapeFramesDataset(Dataset):
    """Single frames of moving-shapes clips, labelled by the shape the clip draws (SHAPE_NAMES): what the
    per-frame shape classifier behind the consistency metric learns from.  Item i is frame i % T of clip
    i // T of the same split, so the frames are exactly those of ``MovingShapesDataset``'s clips.  A blink
    clip's dark frames keep their clip's label: the metric judges every frame of a clip alike.
    """

    name = "moving-shapes-frames"
    class_names = SHAPE_NAMES
    is_video = False

    def __init__(self, split: str = "train", *, image_size: int = 32, num_frames: int = 8, seed: int = 0) -> None:
        self.clips = MovingShapesDataset(split, image_size=image_size, num_frames=num_frames, seed=seed)
        self.split, self.image_size, self.num_frames, self.seed = split, image_size, num_frames, seed
        self.sample_shape = (image_size, image_size, 3)

    def __len__(self) -> int:
        return len(self.clips) * self.num_frames

    def batch(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames (B, H, W, 3) uint8 and their clips' shapes (B,) int64."""
        clip, frame = np.divmod(np.array([self._check_index(i) for i in as_index_list(indices)], np.int64),
                                self.num_frames)
        params = [self.clips._params(int(c)) for c in clip]
        return self.clips._render(params, frame), np.array([p[1] for p in params], np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        frames, labels = self.batch([i])
        return frames[0], int(labels[0])

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "num_frames": self.num_frames,
                "seed": self.seed}


# --------------------------------------------------------------------------------------------------
# Video folders (UCF-101 layout)
# --------------------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm")
SPLIT_LIST_DIR = "ucfTrainTestlist"
SPLIT_LISTS = {"train": "trainlist01.txt", "test": "testlist01.txt"}

# Frame counts by (path, mtime, size): probing runs ffmpeg over the whole file, so do it once per
# process even when the train and test datasets (or several experiments) share a folder.
_FRAME_COUNTS: dict[tuple[str, int, int], int | str] = {}


def _probe(path: Path) -> int | str:
    """Frame count of ``path``, or a one-line reason why ffmpeg could not read it."""
    import imageio_ffmpeg  # deferred: only video folders need ffmpeg

    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _FRAME_COUNTS:
        try:
            _FRAME_COUNTS[key] = int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
        except Exception as error:  # ffmpeg failures surface as RuntimeError with its whole log
            lines = [line for line in str(error).splitlines() if line.strip()]
            _FRAME_COUNTS[key] = lines[-1].strip() if lines else type(error).__name__
    return _FRAME_COUNTS[key]


def probe_frame_counts(paths: list[Path]) -> list[int | str]:
    """Frame counts (or failure reasons) for ``paths``, probed in parallel ffmpeg processes."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(_probe, paths))


def read_clip(path: Path, frame_count: int, num_frames: int, image_size: int) -> np.ndarray:
    """Decode ``num_frames`` frames spread uniformly over the clip: (T, image_size, image_size, 3) uint8."""
    import imageio_ffmpeg

    wanted = np.linspace(0, frame_count - 1, num_frames).round().astype(int)
    wanted_set = set(wanted.tolist())
    reader = imageio_ffmpeg.read_frames(str(path))
    picked: dict[int, np.ndarray] = {}
    try:
        width, height = next(reader)["size"]  # the first item is the stream's metadata
        for k, raw in enumerate(reader):
            if k in wanted_set:
                picked[k] = fit_square(Image.frombytes("RGB", (width, height), raw), image_size)
            if k >= wanted[-1]:
                break  # closing the reader below stops ffmpeg without decoding the rest
    finally:
        reader.close()
    if 0 not in picked:
        raise RuntimeError("no frames could be decoded")
    # The probe can overcount by a frame or two; repeat the last decoded frame for any missing ones.
    frames, last = [], picked[0]
    for k in wanted:
        last = picked.get(k, last)
        frames.append(last)
    return np.stack(frames)


class VideoFolderDataset(FileDataset):
    """Clips from ``root/<Class>/*.avi`` (UCF-101 layout), ``num_frames`` frames sampled uniformly.

    With ``root/ucfTrainTestlist/trainlist01.txt`` and ``testlist01.txt`` the official split 1 is
    used; otherwise every clip is in both splits. Classes are the sub-folders that hold clips, in
    case-insensitive order (for UCF-101 that is the official classInd.txt order).
    """

    name = "videofolder"
    is_video = True
    LAYOUT = "root/<Class>/<clip>.avi (UCF-101 style; .mp4 .mov .mkv .webm also accepted)"

    def __init__(self, split: str = "train", *, root: str | Path | None = None, image_size: int = 32,
                 num_frames: int = 16) -> None:
        super().__init__()
        self.root = check_root(root, self.name, self.LAYOUT)
        self.split, self.image_size, self.num_frames = check_split(split), image_size, num_frames
        self.sample_shape = (num_frames, image_size, image_size, 3)
        clips_by_class = {d.name: files_with_suffix(d, VIDEO_EXTENSIONS) for d in self.root.iterdir()
                          if d.is_dir() and not d.name.startswith(".") and d.name != SPLIT_LIST_DIR}
        dirs = sorted((d for d, clips in clips_by_class.items() if clips), key=lambda d: (d.lower(), d))
        for d in sorted(set(clips_by_class) - set(dirs)):
            warnings.warn(f"Skipping folder {self.root / d}: no video clips ({', '.join(VIDEO_EXTENSIONS)}).",
                          stacklevel=2)
        if not dirs:
            raise DatasetError(
                f"No class sub-folders with video clips in {self.root}; expected {self.LAYOUT}.")
        self.class_names = tuple(dirs)
        candidates = self._split_candidates(split, {d: clips_by_class[d] for d in dirs})
        self.files, self.labels, self._frame_counts = self._keep_usable(candidates)

    def _split_candidates(self, split: str, clips_by_class: dict[str, list[Path]]) -> list[tuple[Path, int]]:
        """(path, label) pairs of ``split``: from the official list file if present, else every clip."""
        label_of = {d: label for label, d in enumerate(clips_by_class)}
        list_file = self.root / SPLIT_LIST_DIR / SPLIT_LISTS[split]
        if not list_file.is_file():
            return [(p, label_of[d]) for d, clips in clips_by_class.items() for p in clips]
        listed = []
        for line in list_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                relative = line.split()[0]  # "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
                listed.append((self.root / relative, label_of.get(relative.split("/")[0])))
        present = [(p, label) for p, label in listed if label is not None and p.is_file()]
        if len(present) < len(listed):
            # Allowed on purpose: a subset of UCF-101's classes is a common way to try things out.
            warnings.warn(f"{len(listed) - len(present)} of {len(listed)} clips listed in {list_file} "
                          f"are missing under {self.root}; using the {len(present)} present.", stacklevel=3)
        return present

    def _keep_usable(
        self, candidates: list[tuple[Path, int]]
    ) -> tuple[list[Path], list[int], dict[Path, int]]:
        """Drop clips ffmpeg cannot read or that are shorter than ``num_frames``, with warnings."""
        counts = probe_frame_counts([p for p, _ in candidates])
        readable = [(p, label, n) for (p, label), n in zip(candidates, counts) if isinstance(n, int)]
        for (path, _), n in zip(candidates, counts):
            if isinstance(n, str):
                warnings.warn(f"Skipping unreadable clip {path}: {n}", stacklevel=4)
        if not readable:
            raise DatasetError(f"No readable clips for the {self.split} split in {self.root}; "
                               f"expected {self.LAYOUT} that ffmpeg can decode.")
        usable = [(p, label, n) for p, label, n in readable if n >= self.num_frames]
        short = [(p, n) for p, _, n in readable if n < self.num_frames]
        if not usable:
            examples = ", ".join(f"{p} has {n} frames" for p, n in short[:3])
            raise DatasetError(f"Every clip in {self.root} is shorter than num_frames={self.num_frames} "
                               f"({examples}{', ...' if len(short) > 3 else ''}); use a smaller num_frames.")
        for path, n in short:
            warnings.warn(f"Skipping clip {path}: {n} frames, fewer than num_frames={self.num_frames}.",
                          stacklevel=4)
        for label in sorted(set(label for _, label in candidates) - set(label for _, label, _ in usable)):
            name = self.class_names[label]
            warnings.warn(f"Class {name!r} has no usable clip in {self.root / name} (every one unreadable or "
                          f"too short); it gets no {self.split} samples.", stacklevel=4)
        return [p for p, _, _ in usable], [label for _, label, _ in usable], {p: n for p, _, n in usable}

    def _load(self, path: Path) -> np.ndarray:
        return read_clip(path, self._frame_counts[path], self.num_frames, self.image_size)

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "num_frames": self.num_frames,
                "root": str(self.root)}
