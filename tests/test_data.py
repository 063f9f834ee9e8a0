"""Tests for core.data: procedural, bundled and folder datasets, class names and assets."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DATASET_NAMES, Dataset, DatasetError, get_dataset
from core.data.names import ASSETS, load_class_names
from core.data.shapes import MIN_COLOUR_DISTANCE, SHAPE_NAMES, render_shapes
from core.data.video import ACTION_NAMES

from conftest import write_clip

REPO = Path(__file__).resolve().parents[1]
PROCEDURAL = ("shapes", "moving-shapes")


# ---------------------------------------------------------------------------------------------- helpers

def background_of(pixels: np.ndarray) -> np.ndarray:
    """Most common colour in an image or clip (..., 3): the background of a procedural sample."""
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()]


def foreground_mask(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels clearly different from ``background``: (..., H, W) bool."""
    return np.abs(pixels.astype(int) - background.astype(int)).sum(-1) > 60


def centroids(clip: np.ndarray) -> np.ndarray:
    """Foreground centroid (x, y) of every frame of a clip (T, H, W, 3) -> (T, 2)."""
    masks = foreground_mask(clip, background_of(clip))
    ys, xs = np.mgrid[: clip.shape[1], : clip.shape[2]]
    return np.array([[xs[m].mean(), ys[m].mean()] for m in masks])


# ----------------------------------------------------------------------------------------- get_dataset

def test_import_has_no_side_effects():
    code = ("import sys, core.data; "
            "assert 'sklearn' not in sys.modules and 'imageio_ffmpeg' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="cifar"), ["cifar", "shapes", "videofolder"]),
    (dict(name="shapes", split="val"), ["val", "train", "test"]),
    (dict(name="shapes", image_size=4), ["image_size", "8"]),
    (dict(name="moving-shapes", num_frames=1), ["num_frames", "2"]),
    (dict(name="shapes", root="/tmp"), ["root", "imagefolder"]),
    (dict(name="imagefolder"), ["root"]),
    (dict(name="imagefolder", root="/does/not/exist"), ["/does/not/exist", "does not exist"]),
])
def test_get_dataset_rejects_bad_arguments(kwargs, words):
    with pytest.raises(DatasetError) as error:
        get_dataset(**kwargs)
    message = str(error.value)
    assert all(w in message for w in words), message
    assert message.count("\n") == 0


def test_names_are_normalised():
    assert get_dataset("Moving_Shapes", num_frames=8).name == "moving-shapes"
    assert len(DATASET_NAMES) == 6


# ------------------------------------------------------------------------------------------- procedural

@pytest.mark.parametrize("name, lengths", [("shapes", (50_000, 10_000)), ("moving-shapes", (20_000, 5_000))])
def test_procedural_lengths_shapes_and_dtypes(name, lengths):
    train, test = get_dataset(name, "train"), get_dataset(name, "test")
    assert (len(train), len(test)) == lengths
    assert isinstance(train, Dataset) and isinstance(train, torch.utils.data.Dataset)
    x, y = train[3]
    assert x.dtype == np.uint8 and x.shape == train.sample_shape and isinstance(y, int)
    assert train.sample_shape == ((16, 32, 32, 3) if train.is_video else (32, 32, 3))
    xs, ys = train.batch([0, 1, 2, 3])
    assert xs.shape == (4, *train.sample_shape) and xs.dtype == np.uint8
    assert ys.dtype == np.int64 and ys.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(xs[3], x)  # batch and __getitem__ render identically
    assert train[-1][1] == train[len(train) - 1][1]
    assert json.loads(json.dumps(train.describe()))["name"] == name
    with pytest.raises(IndexError):
        train[len(train)]


@pytest.mark.parametrize("name", PROCEDURAL)
def test_procedural_is_deterministic_in_seed_split_and_index(name):
    a, b = get_dataset(name, seed=7), get_dataset(name, seed=7)
    np.testing.assert_array_equal(a[5][0], b[5][0])
    np.testing.assert_array_equal(a.batch(np.arange(5, 8))[0], b.batch(torch.arange(5, 8))[0])
    assert not np.array_equal(a[5][0], get_dataset(name, "test", seed=7)[5][0])
    assert not np.array_equal(a[5][0], get_dataset(name, seed=8)[5][0])
    assert not np.array_equal(a[5][0], a[15][0])  # same class, different sample


def test_moving_shapes_supports_other_frame_counts_and_sizes():
    ds = get_dataset("moving-shapes", num_frames=8, image_size=48)
    x, _ = ds[0]
    assert x.shape == ds.sample_shape == (8, 48, 48, 3)


def test_every_shape_class_renders_a_visible_shape():
    ds = get_dataset("shapes")
    images, labels = ds.batch(range(100))
    for image, label in zip(images, labels):
        covered = foreground_mask(image, background_of(image)).mean()
        assert 0.03 < covered < 0.9, (SHAPE_NAMES[label], covered)


def test_shape_classes_differ_under_any_rotation():
    """Each pair of classes stays apart even when one of them is rotated to its best match."""
    k, size = len(SHAPE_NAMES), 48
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    shape = np.repeat(np.arange(k), len(angles))
    n = len(shape)
    images = render_shapes(shape, np.full((n, 2), size / 2), np.full(n, size * 0.4), np.tile(angles, k),
                           np.full((n, 3), 255), np.zeros((n, 3)), size)
    masks = (images[..., 0] > 127).reshape(k, len(angles), -1)
    for a in range(k):
        for b in range(a + 1, k):
            fewest = (masks[a, 0] != masks[b]).sum(-1).min()  # a upright vs b at every angle
            assert fewest > 40, f"{SHAPE_NAMES[a]} vs {SHAPE_NAMES[b]} differ by only {fewest} pixels"


def test_shapes_foreground_contrasts_with_background():
    ds = get_dataset("shapes")
    for i in range(300):
        *_, fg, bg = ds._params(i)
        assert np.linalg.norm(fg.astype(float) - bg) >= MIN_COLOUR_DISTANCE


def clips_of(action: str, count: int = 3, num_frames: int = 16) -> np.ndarray:
    ds = get_dataset("moving-shapes", num_frames=num_frames)
    first = ACTION_NAMES.index(action)
    clips, labels = ds.batch(range(first, first + 10 * count, 10))
    assert set(labels.tolist()) == {first}
    return clips


@pytest.mark.parametrize("action, axis, sign", [
    ("slide-right", 0, 1), ("slide-left", 0, -1), ("slide-up", 1, -1), ("slide-down", 1, 1)])
@pytest.mark.parametrize("num_frames", [8, 16])
def test_slides_move_the_centroid_steadily(action, axis, sign, num_frames):
    for clip in clips_of(action, num_frames=num_frames):
        path = centroids(clip)[:, axis] * sign
        assert path[-1] - path[0] > 6  # at least 0.3 of the image minus anti-aliasing slack
        assert (np.diff(path) > -0.5).all()


@pytest.mark.parametrize("action, sign", [("grow", 1), ("shrink", -1)])
def test_grow_and_shrink_change_the_area(action, sign):
    for clip in clips_of(action):
        area = foreground_mask(clip, background_of(clip)).sum((1, 2)) * sign
        assert area[-1] - area[0] > 50
        assert (np.diff(area) >= -2).all()  # monotonic, up to anti-aliasing noise


def test_rotate_spins_in_place_and_blink_disappears():
    for clip in clips_of("rotate"):
        masks = foreground_mask(clip, background_of(clip))
        area = masks.sum((1, 2))
        assert area.max() < 1.3 * area.min()  # same shape and size throughout (up to aliasing) ...
        # ... turning about its anchor point (off-centre shapes such as the crescent wobble a little,
        # far less than a slide's >= 9 pixels) ...
        assert np.ptp(centroids(clip), axis=0).max() < 6
        # ... while the pixels change (the last frame alone may match the first: a square turned 90 degrees).
        assert max((masks[0] != m).sum() for m in masks) > 10
    for clip in clips_of("blink"):
        area = foreground_mask(clip, background_of(clip)).sum((1, 2))
        assert (area == 0).any() and (area > 20).any()


@pytest.mark.parametrize("num_frames", [8, 16])
def test_orbit_follows_a_circle_and_bounce_falls_and_rises(num_frames):
    for clip in clips_of("orbit", num_frames=num_frames):
        x, y = centroids(clip).T
        # Least-squares circle through the centroids: x^2 + y^2 = a x + b y + c.
        (a, b, c), *_ = np.linalg.lstsq(np.stack([x, y, np.ones_like(x)], 1), x * x + y * y, rcond=None)
        radius = np.sqrt(c + (a * a + b * b) / 4)
        assert 4.5 < radius < 9.5  # 0.18-0.25 of the image side, up to anti-aliasing
        assert np.abs(np.hypot(x - a / 2, y - b / 2) - radius).max() < 1.0
    for clip in clips_of("bounce", num_frames=num_frames):
        x, y = centroids(clip).T
        assert np.ptp(x) < 1.5  # purely vertical motion ...
        # ... that falls at least 6 pixels to some frame and rises at least 6 pixels after it (y is down).
        assert any(y[k] - y[:k].min() > 6 and y[k] - y[k + 1:].min() > 6 for k in range(1, len(y) - 1))


def test_torch_dataloader_and_distributed_sampler():
    ds = get_dataset("shapes", "test")
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler)
    x, y = next(iter(loader))
    assert x.shape == (8, 32, 32, 3) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert len(sampler) == len(ds) // 2


# ------------------------------------------------------------------------------------------------ digits

def test_digits_split_and_pixels():
    train, test = get_dataset("digits"), get_dataset("digits", "test", image_size=16)
    assert (len(train), len(test)) == (1437, 360)
    test_labels = test.batch(range(len(test)))[1]
    assert np.bincount(test_labels).min() >= 35 and np.bincount(test_labels).max() <= 37  # stratified
    from core.data.digits import test_mask

    mask = test_mask()
    assert mask.sum() == 360 and (test_mask() == mask).all()  # fixed: the same images every time
    everything = get_dataset("digits", image_size=16)._images.reshape(len(train), -1)
    held_out = test.batch(range(len(test)))[0][..., 0].reshape(len(test), -1)
    assert not {r.tobytes() for r in everything} & {r.tobytes() for r in held_out}  # no test image in train
    assert train.class_names == tuple("0123456789")
    x, y = train[0]
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8 and 0 <= y < 10
    assert test[0][0].shape == (16, 16, 3)
    assert x.max() > 200 and x.min() == 0  # white digit on black
    assert (x[..., 0] == x[..., 1]).all()
    labels = train.batch(range(len(train)))[1]
    assert set(labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(train[10][0], get_dataset("digits")[10][0])


# ---------------------------------------------------------------------------------------- class_index

def test_class_index_accepts_names_indices_and_digit_strings():
    ds = get_dataset("shapes")
    assert ds.class_index("circle") == 0
    assert ds.class_index(" STAR ") == SHAPE_NAMES.index("star")
    assert ds.class_index(3) == 3 and ds.class_index(np.int64(4)) == 4 and ds.class_index("9") == 9
    digits = get_dataset("digits")
    assert digits.class_index("7") == 7


@pytest.mark.parametrize("bad", ["hexagon", 10, -1, "12", True, 2.0])
def test_class_index_error_lists_accepted_values(bad):
    ds = get_dataset("shapes")
    with pytest.raises(DatasetError) as error:
        ds.class_index(bad)
    message = str(error.value)
    assert "'circle'" in message and "0 to 9" in message and repr(bad) in message


# ------------------------------------------------------------------------------------------ imagefolder

def write_image(path: Path, colour, size=(40, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def synset_folder(tmp_path: Path) -> Path:
    for k in range(3):
        write_image(tmp_path / "n01443537" / f"gold_{k}.png", (255, 200, 0))
        write_image(tmp_path / "n01440764" / f"tench_{k}.png", (0, 90, 30))
    write_image(tmp_path / "n01440764" / "upper.JPEG", (0, 90, 30))
    (tmp_path / "n01440764" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_maps_synsets_and_resizes(synset_folder: Path):
    ds = get_dataset("imagefolder", root=str(synset_folder), image_size=16)
    assert ds.class_names == ("tench", "goldfish")  # sorted synsets, names from the asset
    assert len(ds) == 7  # the .JPEG counts, the .txt does not
    x, y = ds[0]
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8 and y == 0
    assert abs(int(x[..., 1].mean()) - 90) <= 2
    assert ds.batch([0, 6])[1].tolist() == [0, 1]
    assert ds.class_index("Goldfish") == 1
    assert len(get_dataset("imagefolder", "test", root=synset_folder)) == 7  # no train/val: both splits


def test_imagefolder_name_file_and_plain_names(tmp_path: Path):
    write_image(tmp_path / "n99999999" / "a.png", (1, 2, 3))
    write_image(tmp_path / "zebra" / "b.bmp", (4, 5, 6))
    (tmp_path / "synset_words.txt").write_text("n99999999 my thing, other name\n")
    assert get_dataset("imagefolder", root=tmp_path).class_names == ("my thing", "zebra")


def test_imagefolder_keeps_repeated_imagenet_names_unique(tmp_path: Path):
    for synset in ("n03773504", "n04008634", "n04355933"):
        write_image(tmp_path / synset / "a.png", (9, 9, 9))
    ds = get_dataset("imagefolder", root=tmp_path)
    assert ds.class_names == ("missile (n03773504)", "missile (n04008634)", "sunglasses")
    assert ds.class_index("MISSILE (n04008634)") == 1


def test_imagefolder_train_val_layout(tmp_path: Path):
    for split, count in (("train", 3), ("val", 1)):
        for cls in ("cat", "dog"):
            for k in range(count):
                write_image(tmp_path / split / cls / f"{k}.webp", (k, 0, 0))
    train = get_dataset("imagefolder", root=tmp_path)
    test = get_dataset("imagefolder", "test", root=tmp_path)
    assert (len(train), len(test)) == (6, 2)
    assert train.class_names == test.class_names == ("cat", "dog")


def test_imagefolder_skips_a_corrupt_file_with_a_warning(synset_folder: Path):
    bad = synset_folder / "n01440764" / "broken.png"
    bad.write_bytes(b"\x89PNG this is not really a png")
    ds = get_dataset("imagefolder", root=synset_folder, image_size=8)
    with pytest.warns(UserWarning, match="broken.png"):
        items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (8, 8, 3) for x, _ in items)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, then skipped silently
        ds[ds.files.index(bad)]


def test_imagefolder_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(DatasetError, match="No class sub-folders"):
        get_dataset("imagefolder", root=tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"No images .*{tmp_path.name}.*\\.jpg"):
        get_dataset("imagefolder", root=tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        get_dataset("imagefolder", root=tmp_path / "cat" / "readme.txt")


# ------------------------------------------------------------------------------------------ videofolder

@pytest.fixture(scope="module")
def ucf_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf")
    for cls in ("YoYo", "ApplyEyeMakeup", "HammerThrow", "Hammering"):
        (root / cls).mkdir()
        write_clip(root / cls / f"v_{cls}_g01_c01.avi", 12)
        write_clip(root / cls / f"v_{cls}_g08_c01.mp4", 12)
    (root / "YoYo" / "v_YoYo_g02_c01.avi").write_bytes(np.random.default_rng(0).bytes(3000))
    write_clip(root / "Hammering" / "v_Hammering_g03_c01.avi", 4)  # too short for 8 frames
    return root


def test_videofolder_reads_clips_and_skips_bad_ones(ucf_folder: Path):
    with pytest.warns(UserWarning) as caught:
        ds = get_dataset("videofolder", root=ucf_folder, num_frames=8, image_size=16)
    messages = " ".join(str(w.message) for w in caught)
    assert "v_YoYo_g02_c01.avi" in messages and "unreadable" in messages
    assert "v_Hammering_g03_c01.avi" in messages and "4 frames" in messages
    # Case-insensitive order, as in UCF-101's classInd.txt (Hammering before HammerThrow).
    assert ds.class_names == ("ApplyEyeMakeup", "Hammering", "HammerThrow", "YoYo")
    assert ds.is_video and len(ds) == 8 and ds.sample_shape == (8, 16, 16, 3)
    clip, label = ds[0]
    assert clip.shape == (8, 16, 16, 3) and clip.dtype == np.uint8 and label == 0
    first, last = centroids(clip)[[0, -1], 0]
    assert last - first > 4  # the square slides right, and frames come out in order
    clips, labels = ds.batch([0, 7])
    assert clips.shape == (2, 8, 16, 16, 3) and labels.tolist() == [0, 3]


def test_videofolder_uses_official_split_lists(ucf_folder: Path, tmp_path: Path):
    lists = ucf_folder / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    try:
        (lists / "trainlist01.txt").write_text("YoYo/v_YoYo_g08_c01.mp4 101\nYoYo/v_YoYo_g99_c01.avi 101\n")
        (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
        with pytest.warns(UserWarning, match="1 of 2 clips listed"):
            train = get_dataset("videofolder", root=ucf_folder, num_frames=8)
        test = get_dataset("videofolder", "test", root=ucf_folder, num_frames=8)
        assert [p.name for p in train.files] == ["v_YoYo_g08_c01.mp4"] and train.labels == [3]
        assert [p.name for p in test.files] == ["v_ApplyEyeMakeup_g01_c01.avi"] and test.labels == [0]
        assert train.class_names == test.class_names and len(train.class_names) == 4
    finally:
        for f in lists.iterdir():
            f.unlink()
        lists.rmdir()


def test_videofolder_all_clips_too_short(ucf_folder: Path):
    with pytest.raises(DatasetError) as error, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_dataset("videofolder", root=ucf_folder, num_frames=40)
    message = str(error.value)
    assert "num_frames=40" in message and str(ucf_folder) in message and "has 12" in message


def test_videofolder_without_readable_clips(tmp_path: Path):
    (tmp_path / "Punch").mkdir()
    (tmp_path / "Punch" / "v_Punch_g01_c01.avi").write_bytes(b"definitely not a video")
    with pytest.warns(UserWarning, match="v_Punch_g01_c01.avi"):
        with pytest.raises(DatasetError, match="No readable clips"):
            get_dataset("videofolder", root=tmp_path, num_frames=8)
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Punch" / "v_Punch_g01_c01.avi").unlink()
    with pytest.raises(DatasetError, match="No class sub-folders with video clips"):
        get_dataset("videofolder", root=tmp_path)


# ------------------------------------------------------------------------------------------------ assets

def test_class_name_assets():
    imagenet, ucf = load_class_names("imagenet"), load_class_names("ucf101")
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[999] == "toilet paper"
    assert len(ucf) == 101 and ucf[0] == "ApplyEyeMakeup" and ucf[-1] == "YoYo"
    assert list(ucf) == sorted(ucf, key=str.lower)  # classInd order is case-insensitive alphabetical
    rows = json.loads((ASSETS / "imagenet_classes.json").read_text())
    assert [r["index"] for r in rows] == list(range(1000))
    synsets = [r["synset"] for r in rows]
    assert synsets == sorted(set(synsets)) and synsets[0] == "n01440764"
    with pytest.raises(DatasetError, match="imagenet, ucf101"):
        load_class_names("kinetics")
