"""Real-data paths end to end: an ImageNet-layout JPEG folder and a UCF-101-layout clip folder, made by the
test, -> core.train tokenizer, classifier and a tiny ELT generator (through the token cache) -> a checkpoint
with the real class names -> listed, searchable and generating in the app.  Plus the token cache's guards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_TOKENIZER, TINY_VIDEO_TOKENIZER, launched_app, write_clip
from core.cli import UsageError
from core.config import ClassifierConfig, Experiment, ModelConfig, SamplerConfig, TrainConfig
from core.data import DatasetError, get_dataset
from core.data.names import imagenet_synset_names, load_class_names
from core.train import train

gr = pytest.importorskip("gradio")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
from gradio_client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361")  # tench, goldfish, great white / tiger shark
ACTIONS = ("ApplyEyeMakeup", "Archery", "YoYo")


# ---------------------------------------------------------------------------------------------- folders

def write_photo(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    """A smooth random picture saved in `mode` (L, RGB, RGBA, CMYK); the format follows the suffix."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.convert(mode).save(path)


def make_imagenet_folder(root: Path) -> Path:
    """4 synsets x 4 pictures of mixed modes and sizes, plus one corrupt JPEG."""
    kinds = [("L", (40, 30), "JPEG"), ("RGB", (64, 48), "JPEG"), ("CMYK", (24, 36), "JPEG"), ("RGBA", (20, 20), "png")]
    for c, synset in enumerate(SYNSETS):
        for k, (mode, size, ext) in enumerate(kinds):
            write_photo(root / synset / f"{synset}_{k}.{ext}", mode, size, seed=10 * c + k)
    (root / SYNSETS[1] / f"{SYNSETS[1]}_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    return root


def make_ucf_folder(root: Path) -> Path:
    """3 actions x 2 clips of 12 frames in two containers and sizes, plus one corrupt clip."""
    for action in ACTIONS:
        (root / action).mkdir(parents=True)
        write_clip(root / action / f"v_{action}_g01_c01.avi", 12)
        write_clip(root / action / f"v_{action}_g02_c01.avi", 12, size=(48, 64))
    (root / "Archery" / "v_Archery_g03_c01.avi").write_bytes(b"RIFF not really an avi")
    return root


def train_family(data: Path, out: Path, dataset: str, tokenizer_cfg, frames: int, cache: Path,
                 classes: int) -> dict[str, Path]:
    """Tokenizer, classifier and ILSD generator trained for a few steps each by core.train; the generator
    reads its tokens from the cache `cache` (built with two decoding processes)."""
    base = TrainConfig(task="tokenizer", dataset=dataset, data_root=str(data), steps=3, batch_size=4,
                       warmup_steps=1, bf16=False)
    classifier = ClassifierConfig(num_classes=classes, image_size=16, num_frames=frames, channels=(8, 16),
                                  feature_dim=16)
    generator = ModelConfig(vocab_size=16, num_classes=classes, token_grid=tokenizer_cfg.token_grid, width=32,
                            num_heads=2, num_layers=1, max_loops=3)
    tok, cls, gen = out / "tok", out / "cls", out / "elt"
    train(Experiment("tok", base, tokenizer_cfg), tok, device="cpu")
    train(Experiment("cls", replace(base, task="classifier"), classifier), cls, device="cpu")
    gen_train = replace(base, task="generator", steps=4, batch_size=8, tokenizer=str(tok), classifier=str(cls))
    train(Experiment("elt", gen_train, generator, sampler=SamplerConfig(steps=2)), gen, device="cpu",
          token_cache=cache, cache_workers=2)
    return {"tokenizer": tok, "classifier": cls, "generator": gen, "experiment": gen_train}


def trained_folder(tmp_path_factory, folder: str, make, dataset: str, tokenizer_cfg, frames: int, classes: int):
    """A folder made by `make`, a family trained on it, and the warnings that training raised."""
    root = tmp_path_factory.mktemp(folder)
    data = make(root / "data")
    with pytest.warns(UserWarning) as caught:
        family = train_family(data, root / "checkpoints", dataset, tokenizer_cfg, frames, root / "cache", classes)
    return {**family, "data": data, "cache": root / "cache", "warnings": [str(w.message) for w in caught]}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return trained_folder(tmp_path_factory, "imagenet", make_imagenet_folder, "imagefolder", TINY_TOKENIZER, 1,
                          len(SYNSETS))


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return trained_folder(tmp_path_factory, "ucf101", make_ucf_folder, "videofolder", TINY_VIDEO_TOKENIZER, 8,
                          len(ACTIONS))


def class_box_choices(url: str) -> list[str]:
    """The Generate tab's class dropdown as the page receives it (what the browser's search filters)."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    box = next(c["props"] for c in config["components"] if c.get("props", {}).get("elem_id") == "class-name")
    assert box["filterable"]  # "type to search"
    return [choice[0] for choice in box["choices"]]


def search(choices: list[str], typed: str) -> list[str]:
    """Gradio's dropdown filter: the choices containing what was typed, case-insensitively."""
    return [c for c in choices if typed.lower() in c.lower()]


def assert_in_app(checkpoints: Path, generator: str, typed: str, found: str, names: list[str], video: bool):
    with launched_app([checkpoints]) as server:
        client = Client(server["url"], verbose=False)
        listing = client.predict(api_name="/checkpoints")
        assert listing[generator]["error"] is None and listing[generator]["classes"] == names
        assert listing[generator]["video"] is video
        choices = class_box_choices(server["url"])
        assert choices == names and search(choices, typed) == [found]
        job = client.submit(generator, found, 2, 2, 2.0, 3, False, 2, api_name="/generate")
        job.result(timeout=120)
        final = job.outputs()[-1]
        assert final[-1]["final"] and not final[-1]["stopped"] and final[-1]["class"] == found
        assert len(final[4]) >= 3  # the side-by-side file plus one per sample


# ------------------------------------------------------------------------------------- ImageNet layout

def test_imagenet_folder_to_app_with_real_class_names(imagenet):
    real = [imagenet_synset_names()[s] for s in SYNSETS]
    assert real == ["tench", "goldfish", "great white shark", "tiger shark"]
    assert real == list(load_class_names("imagenet")[:4])
    for part in ("tokenizer", "classifier", "generator"):
        config = json.loads((imagenet[part] / "config.json").read_text())
        assert config["class_names"] == real, part
    assert any(f"{SYNSETS[1]}_corrupt.JPEG" in w for w in imagenet["warnings"])  # named, then skipped
    index = json.loads((imagenet["cache"] / "index.json").read_text())
    assert index["count"] == 16 and len(index["skipped"]) == 1 and "corrupt" in index["skipped"][0]
    assert_in_app(imagenet["generator"].parent, "elt", "gold", "goldfish", real, video=False)


def test_mixed_modes_and_sizes_load_as_rgb(imagenet):
    ds = get_dataset("imagefolder", root=imagenet["data"], image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corrupt file, tested above
        pixels = [ds[i][0] for i in range(len(ds))]
    assert all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p in pixels)
    grey = ds.files.index(imagenet["data"] / SYNSETS[0] / f"{SYNSETS[0]}_0.JPEG")
    assert (pixels[grey][..., 0] == pixels[grey][..., 1]).all()  # grayscale became grey RGB


# ------------------------------------------------------------------------------------- UCF-101 layout

def test_ucf_folder_to_app_with_real_action_names(ucf):
    names = list(ACTIONS)
    assert set(names) <= set(load_class_names("ucf101"))
    for part in ("tokenizer", "classifier", "generator"):
        assert json.loads((ucf[part] / "config.json").read_text())["class_names"] == names, part
    assert any("v_Archery_g03_c01.avi" in w for w in ucf["warnings"])
    assert json.loads((ucf["cache"] / "index.json").read_text())["count"] == 6
    assert_in_app(ucf["generator"].parent, "elt", "eye", "ApplyEyeMakeup", names, video=True)


# ---------------------------------------------------------------------------------------- token cache

def test_token_cache_is_reused_and_matches_encoding_on_the_fly(imagenet, tmp_path):
    from core import checkpoint as ckpt
    from core.token_cache import open_cache

    before = (imagenet["cache"] / "tokens.npy").stat().st_mtime_ns
    experiment = Experiment.from_dict(ckpt.read_config(imagenet["generator"])["experiment"])
    train(experiment, tmp_path / "again", device="cpu", token_cache=imagenet["cache"], max_steps=1)
    assert (imagenet["cache"] / "tokens.npy").stat().st_mtime_ns == before  # read, not rebuilt

    tokenizer = ckpt.load(imagenet["tokenizer"]).module
    ds = get_dataset("imagefolder", root=imagenet["data"], image_size=16)
    cache = open_cache(imagenet["cache"], ds, imagenet["tokenizer"], tokenizer.encode, num_tokens=64, vocab_size=16)
    readable = [i for i, f in enumerate(ds.files) if "corrupt" not in f.name]
    import torch

    tokens, labels = cache.get(torch.tensor([3, 0, 3]))
    pixels, expected_labels = ds.batch([readable[3], readable[0], readable[3]])
    assert torch.equal(tokens, tokenizer.encode(torch.from_numpy(pixels)))
    assert labels.tolist() == expected_labels.tolist()


def test_stale_or_foreign_token_cache_is_refused(imagenet, tmp_path):
    from core import checkpoint as ckpt
    from core.token_cache import open_cache

    tokenizer = ckpt.load(imagenet["tokenizer"]).module
    ds = get_dataset("imagefolder", root=imagenet["data"], image_size=16)
    args = dict(num_tokens=64, vocab_size=16)
    other_tok = tmp_path / "other-tok"
    train(Experiment("tok", replace(imagenet["experiment"], task="tokenizer", steps=1, seed=1), TINY_TOKENIZER),
          other_tok, device="cpu")
    with pytest.raises(UsageError, match="another tokenizer"):
        open_cache(imagenet["cache"], ds, other_tok, tokenizer.encode, **args)
    with pytest.raises(UsageError, match="does not match the dataset: it was built from imagefolder"):
        open_cache(imagenet["cache"], get_dataset("imagefolder", root=imagenet["data"], image_size=32),
                   imagenet["tokenizer"], tokenizer.encode, **args)
    foreign = tmp_path / "not-a-cache"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="no finished cache"):
        open_cache(foreign, ds, imagenet["tokenizer"], tokenizer.encode, **args)
    assert (foreign / "notes.txt").read_text() == "keep me"

    copy = tmp_path / "data"
    import shutil

    shutil.copytree(imagenet["data"], copy)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="corrupt"):
        open_cache(cache, get_dataset("imagefolder", root=copy, image_size=16), imagenet["tokenizer"],
                   tokenizer.encode, workers=0, **args)
    write_photo(copy / SYNSETS[0] / "new.JPEG", "RGB", (30, 30), seed=99)
    changed = get_dataset("imagefolder", root=copy, image_size=16)
    with pytest.raises(UsageError, match="its files changed"):
        open_cache(cache, changed, imagenet["tokenizer"], tokenizer.encode, **args)
    with pytest.warns(UserWarning, match="corrupt"):  # asked to: rebuilt for the new file list
        rebuilt = open_cache(cache, changed, imagenet["tokenizer"], tokenizer.encode, rebuild=True, workers=0, **args)
    assert len(rebuilt) == 17


def test_train_cli_refuses_a_mismatched_cache_in_one_line(imagenet, tmp_path):
    """The CLI path: a cache built from the 16-pixel tokenizer, asked for by a run over another tokenizer."""
    other_tok = tmp_path / "tok32"
    train(Experiment("tok", replace(imagenet["experiment"], task="tokenizer", steps=1),
                     replace(TINY_TOKENIZER, image_size=32, channels=(8, 16, 16))), other_tok, device="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "core.train", "--preset", "shapes-elt", "--out", str(tmp_path / "run"),
         "--dataset", "imagefolder", "--data-root", str(imagenet["data"]), "--tokenizer", str(other_tok),
         "--token-cache", str(imagenet["cache"]), "--steps", "1", "--batch-size", "4", "--bf16", "false",
         "--set", "vocab_size=16", "num_classes=4", "token_grid=1,8,8", "width=32", "num_heads=2", "num_layers=1",
         "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "another tokenizer" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ bad input

def test_bad_folders_give_one_clear_message(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write_photo(flat / "loose.JPEG", "RGB", (20, 20), seed=0)
    with pytest.raises(DatasetError, match=f"No class sub-folders in {flat}"):
        get_dataset("imagefolder", root=flat)

    layout = tmp_path / "imagenet"
    write_photo(layout / SYNSETS[0] / "a.JPEG", "RGB", (20, 20), seed=0)
    (layout / SYNSETS[1]).mkdir()
    (layout / SYNSETS[1] / "readme.txt").write_text("no pictures here")
    with pytest.warns(UserWarning, match=f"Class folder .*{SYNSETS[1]} holds no images.*'goldfish'"):
        ds = get_dataset("imagefolder", root=layout)
    assert ds.class_names == ("tench", "goldfish") and len(ds) == 1  # indices kept in the 1k order

    clips = tmp_path / "ucf"
    (clips / "Archery").mkdir(parents=True)
    write_clip(clips / "Archery" / "v_Archery_g01_c01.avi", 12)
    (clips / "YoYo").mkdir()
    (clips / "YoYo" / "v_YoYo_g01_c01.avi").write_bytes(b"broken")
    (clips / "Empty").mkdir()
    with pytest.warns(UserWarning) as caught:
        video = get_dataset("videofolder", root=clips, num_frames=8, image_size=16)
    messages = " ".join(str(w.message) for w in caught)
    assert "v_YoYo_g01_c01.avi" in messages and "'YoYo' has no usable clip" in messages
    assert f"Skipping folder {clips / 'Empty'}" in messages
    assert video.class_names == ("Archery", "YoYo") and len(video) == 1
