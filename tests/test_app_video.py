"""Video checkpoints in the same tabs as image ones: /generate, /sweep, /compare, /inspect through gradio_client.

One server with the tiny image checkpoints and a copy of the tiny video ones (plus a second copy of
the video generator to compare with, and an animated samples.gif as `core.evaluate --grid` writes it).
Pixel equality is checked on raw uint8 clips (the service's result and the lossless PNG frame strip
download) against `Pipeline.generate`, which is what `python -m core.sample` uses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app.service import STRIP_SIZE, Tile, clip_grid, display_still, frame_strips  # noqa: E402
from conftest import launched_app  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.media import gif_bytes  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sampling import SamplerConfig  # noqa: E402

VIDEO = dict(checkpoint="tiny-video-elt", class_name="slide-right", loops=2, steps=4, cfg_scale=2.0, seed=5,
             randomize_seed=False, num_samples=2)
FRAMES, SIDE = 8, 16  # the tiny video tokenizer's clips
SETTINGS_KEYS = ("checkpoint", "class", "label", "seed", "loops", "steps", "cfg_scale", "num_samples", "precision",
                 "backend")



def finish(job, timeout: float = 60):
    job.result(timeout=timeout)
    return job.outputs()


def read_mp4(path: str | Path) -> tuple[dict, np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, np.stack([np.frombuffer(frame, np.uint8).reshape(h, w, 3) for frame in reader])


def assert_playable(path: str | Path, frames: int = FRAMES) -> np.ndarray:
    """H.264 / yuv420p / even size / `frames` frames: what browsers play."""
    meta, clip = read_mp4(path)
    assert meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"], meta
    assert all(side % 2 == 0 for side in meta["size"]) and len(clip) == frames
    return clip


def mp4_settings(path: str | Path) -> dict:
    """The settings JSON in an MP4's comment tag (as `python -m core.sample` writes it)."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, text=True, check=True).stdout
    value = next(line for line in out.splitlines() if line.startswith("comment="))[len("comment="):]
    return json.loads(re.sub(r"\\(.)", r"\1", value))  # ffmetadata escapes = ; # \ with a backslash


def video_path(output) -> str | None:
    """The file of a gr.Video output (None for no video, or a skipped update)."""
    return output.get("video") if isinstance(output, dict) else output


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tiny_video_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("app-video-checkpoints")
    for name, path in tiny_video_checkpoints.items():
        shutil.copytree(path, root / name, ignore=shutil.ignore_patterns("train_state.safetensors"))
    shutil.copytree(root / "tiny-video-elt", root / "tiny-video-copy")
    from core.evaluate import sample_grid

    pipeline = Pipeline.load(root / "tiny-video-elt", Runtime.create("cpu", "fp32"))
    ckpt.write_bytes(root / "tiny-video-elt" / "samples.gif", gif_bytes(sample_grid(pipeline, [1, 2], SamplerConfig(
        steps=2), 0)))
    with launched_app([tiny_checkpoints["tiny-elt"].parent, root]) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def generate(client: Client, **changes):
    return client.submit(*{**VIDEO, **changes}.values(), api_name="/generate")


def cli_pixels(server) -> np.ndarray:
    """What `python -m core.sample` computes for VIDEO: Pipeline.generate with the CLI's default runtime."""
    pipeline = Pipeline.load(server["root"] / VIDEO["checkpoint"], Runtime.create())
    label = pipeline.class_names.index(VIDEO["class_name"])
    return pipeline.generate([label] * VIDEO["num_samples"], VIDEO["loops"],
                             SamplerConfig(steps=VIDEO["steps"], cfg_scale=VIDEO["cfg_scale"]), VIDEO["seed"])


# -- display helpers, no server ----------------------------------------------------------------------
def test_clip_stills_and_grids():
    clips = np.random.default_rng(0).integers(0, 255, (2, FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    raw = frame_strips(clips, None, pad=0)  # lossless: every frame, a row per clip
    assert raw.shape == (2 * SIDE, FRAMES * SIDE, 3)
    np.testing.assert_array_equal(raw.reshape(2, SIDE, FRAMES, SIDE, 3).transpose(0, 2, 1, 3, 4), clips)
    assert frame_strips(np.zeros((1, 16, 4, 4, 3), np.uint8), 8, pad=0).shape == (4, 8 * 4, 3)  # frames picked
    assert display_still(clips).shape[0] == 2 * (STRIP_SIZE // SIDE * SIDE + 2) + 2  # rows of enlarged frames
    assert display_still(clips[:, 0]).ndim == 3  # images: unchanged path
    tiles = [Tile(name, L, 3, clips[0], 1.0, 0.1) for name in ("a", "b") for L in (1, 3)]
    grid = clip_grid(tiles)
    cell = STRIP_SIZE // SIDE * SIDE
    assert grid.shape == (FRAMES, 2 * (cell + 2) + 2, 3 * (cell + 2) + 2, 3)
    assert (grid[:, 2:2 + cell, cell + 4:2 * cell + 4] == 255).all()  # no tile at L=2: a blank cell
    assert clip_grid([Tile("a", 1, 3, clips[0, 0], 1.0, 0.1)]) is None  # images have no clip grid


# -- the launched app ----------------------------------------------------------------------------------
def test_video_checkpoints_are_listed_and_ready(client):
    listing = client.predict(api_name="/checkpoints")
    assert listing["tiny-video-elt"]["video"] is True and listing["tiny-video-elt"]["error"] is None
    assert listing["tiny-video-elt"]["default_sampler"] == {"steps": 3, "cfg_scale": 3.0, "passes": 6,
                                                           "guide_loop": None}
    assert listing["tiny-elt"]["video"] is False


def test_generate_video_streams_and_matches_the_cli(client, server, tmp_path):
    outputs = finish(generate(client))
    details = [out[-1] for out in outputs]
    assert [d["step"] for d in details if not d["final"]] == list(range(1, VIDEO["steps"] + 1))
    assert outputs[0][0] is not None and outputs[0][1] is not None  # step 1: frame-strip preview + loop strip
    final = outputs[-1]
    assert details[-1]["final"] and details[-1]["frames"] == FRAMES and "frames" in final[3]
    assert len(final[2]) == VIDEO["num_samples"]  # a frame strip per sample
    assert_playable(video_path(final[7]))  # the clip shown (autoplay, loop)

    files = {Path(f).name.rsplit("_", 1)[-1]: Path(f) for f in final[4]}
    assert sorted(files) == ["0.mp4", "1.mp4", "all.mp4", "frames.png"]
    expected = cli_pixels(server)
    strip = np.asarray(Image.open(files["frames.png"]))  # lossless: the raw clips, a row of frames each
    b, t, h, w, _ = expected.shape
    np.testing.assert_array_equal(strip.reshape(b, h, t, w, 3).transpose(0, 2, 1, 3, 4), expected)
    event = list(server["studio"].generate(*list(VIDEO.values())[:6], VIDEO["num_samples"]))[-1]
    np.testing.assert_array_equal(event.pixels, expected)  # the service's raw result

    from core.sample import main as sample_main

    cli_mp4 = tmp_path / "cli.mp4"
    assert sample_main(["--checkpoint", str(server["root"] / VIDEO["checkpoint"]), "--label", VIDEO["class_name"],
                        "--loops", str(VIDEO["loops"]), "--steps", str(VIDEO["steps"]), "--cfg-scale",
                        str(VIDEO["cfg_scale"]), "--seed", str(VIDEO["seed"]), "--num-samples",
                        str(VIDEO["num_samples"]), "--out", str(cli_mp4)]) == 0
    np.testing.assert_array_equal(assert_playable(files["all.mp4"]), read_mp4(cli_mp4)[1])  # same input, same encoder
    app_settings, cli_settings = mp4_settings(files["all.mp4"]), mp4_settings(cli_mp4)
    assert {k: app_settings[k] for k in SETTINGS_KEYS} == {k: cli_settings[k] for k in SETTINGS_KEYS}
    assert mp4_settings(files["1.mp4"])["index"] == 1
    assert json.loads(Image.open(files["frames.png"]).text["elt-studio"])["seed"] == VIDEO["seed"]


def test_image_checkpoint_in_the_same_app_has_no_clip(client):
    final = finish(generate(client, checkpoint="tiny-elt", class_name="star", steps=2, num_samples=1))[-1]
    assert final[7] is None and final[-1]["frames"] is None
    assert [Path(f).suffix for f in final[4]] == [".png"]


@pytest.mark.parametrize("changes, message", [
    ({"class_name": "star"}, "unknown class 'star'"),  # an image checkpoint's class
    ({"loops": 7}, "loops must be between 1 and 6"),
    ({"num_samples": 9}, "number of samples must be between 1 and 8"),
])
def test_bad_video_input_gives_a_clear_error(client, changes, message):
    with pytest.raises(AppError, match=message):
        generate(client, **changes).result(timeout=30)
    assert finish(generate(client, steps=1, num_samples=1))[-1][-1]["final"]  # the next request works


def test_video_sweep_streams_strips_and_a_clip_grid(client):
    outputs = finish(client.submit("tiny-video-elt", "slide-up", 2, 2, 2.0, 1, 1, api_name="/sweep"))
    tiles = outputs[-1][-1]["tiles"]
    assert [t["loops"] for t in tiles] == [1, 2, 3, 4] and tiles[-1]["extrapolated"]
    counts = [len(out[0]) for out in outputs if isinstance(out[0], list) and out[0]]
    assert counts == sorted(counts) and counts[-1] == 4  # filled in tile by tile
    first = outputs[-1][0][0]["image"]
    strip = Image.open(first["path"] if isinstance(first, dict) else first)
    assert strip.width > 4 * strip.height  # a row of frames
    clips = [video_path(out[2]) for out in outputs if video_path(out[2])]
    assert len(set(clips)) >= 4  # one complete MP4 per finished tile
    grid = assert_playable(clips[-1])
    assert grid.shape[2] > 3.5 * grid.shape[1]  # one row, four loop counts


def test_video_compare_and_mixing_kinds_is_refused(client):
    outputs = finish(client.submit(["tiny-video-elt", "tiny-video-copy"], "slide-up", 2, 2.0, 3,
                                   api_name="/compare"))
    tiles = outputs[-1][-1]["tiles"]
    assert [(t["checkpoint"], t["loops"]) for t in tiles] == [(n, L) for n in ("tiny-video-elt", "tiny-video-copy")
                                                            for L in (1, 2, 3)]
    assert [row[0] for row in outputs[-1][2]["data"]] == ["tiny-video-elt", "tiny-video-copy"]
    grid = assert_playable(video_path(outputs[-1][4]))
    assert 1.2 < grid.shape[2] / grid.shape[1] < 1.8  # two rows, three loop counts
    with pytest.raises(AppError, match="image and video"):
        client.predict(["tiny-elt", "tiny-video-elt"], "star", 2, 2.0, 3, api_name="/compare")


def test_inspect_shows_the_animated_grid(client):
    summary, _, grid, _, config = client.predict("tiny-video-elt", api_name="/inspect")
    assert "video clips" in summary and config["experiment"]["model"]["token_grid"] == [2, 4, 4]
    assert "| default sampling (config.json `sampler`) | 3 steps, guidance 3 |" in summary
    path = grid["path"] if isinstance(grid, dict) else grid
    assert Path(path).suffix == ".gif" and Image.open(path).n_frames == FRAMES
    assert "images" in client.predict("tiny-elt", api_name="/inspect")[0]


def test_spot_check_of_a_video_checkpoint(client):
    text, table, _ = client.predict("tiny-video-elt", 2, api_name="/spot_check")
    assert "2 samples per loop count" in text and "FVD" in "".join(table["headers"])
