"""Video path: the same looped model, trainer, sampler, checkpoints and evaluation over T'×H'×W' tokens."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from core import checkpoint as ckpt
from core.cli import run
from core.pipeline import Pipeline
from core.runtime import Runtime
from core.sampling import SamplerConfig

from conftest import TINY_VIDEO_SAMPLER, load_script


def _cli(module, argv, capsys):
    import importlib

    with pytest.raises(SystemExit) as info:
        run(importlib.import_module(f"core.{module}").main, argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_video_generator_produces_clips(tiny_video_checkpoints):
    pipeline = Pipeline.load(tiny_video_checkpoints["tiny-video-elt"], Runtime.create("cpu", "fp32"))
    assert pipeline.is_video and pipeline.config.num_tokens == 2 * 4 * 4
    clips = pipeline.generate([0, 3], 2, SamplerConfig(steps=3), seed=1)
    assert clips.shape == (2, 8, 16, 16, 3) and clips.dtype == np.uint8
    again = pipeline.generate([0, 3], 2, SamplerConfig(steps=3), seed=1)
    assert np.array_equal(clips, again)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_sample_cli_writes_playable_video(suffix, tmp_path, tiny_video_checkpoints, capsys):
    out = tmp_path / f"clip{suffix}"
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--label",
                                   "slide-right", "--loops", "2", "--steps", "3", "--out", str(out)], capsys)
    assert code == 0, err
    if suffix == ".mp4":
        reader = imageio_ffmpeg.read_frames(str(out))
        meta = next(reader)
        frames = list(reader)
        assert meta["codec"] == "h264" and "yuv420p" in meta["pix_fmt"] and len(frames) == 8
        assert all(side % 2 == 0 for side in meta["size"])
    else:
        gif = Image.open(out)
        assert gif.n_frames == 8 and json.loads(gif.info["comment"])["class"] == "slide-right"


def test_cli_samples_with_the_checkpoints_own_defaults(tmp_path, tiny_video_checkpoints, capsys):
    folder, out = str(tiny_video_checkpoints["tiny-video-elt"]), tmp_path / "clip.gif"
    settings = []
    for flags in ([], ["--cfg-scale", "0.5", "--steps", "2"]):
        code, _, err = _cli("sample", ["--checkpoint", folder, "--label", "grow", "--out", str(out), *flags], capsys)
        assert code == 0, err
        settings.append(json.loads(Image.open(out).info["comment"]))
    assert (settings[0]["steps"], settings[0]["cfg_scale"]) == (TINY_VIDEO_SAMPLER.steps, TINY_VIDEO_SAMPLER.cfg_scale)
    assert (settings[1]["steps"], settings[1]["cfg_scale"]) == (2, 0.5)  # flags still win
    report = tmp_path / "r.json"
    code, _, err = _cli("evaluate", ["--checkpoint", folder, "--loops", "1", "--samples", "2", "--json", str(report)],
                        capsys)
    assert code == 0 and json.loads(report.read_text())["sampler"] == asdict(TINY_VIDEO_SAMPLER)
    assert "steps 3, cfg 3.0" in err
    code, _, err = _cli("evaluate", ["--checkpoint", folder, "--cfg-scale", "-1"], capsys)
    assert code == 2 and "cfg-scale must be >= 0" in err


def test_video_checkpoint_with_image_options_exits_2(tmp_path, tiny_video_checkpoints, capsys):
    out = tmp_path / "clip.png"
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--label", "0",
                                   "--out", str(out)], capsys)
    assert code == 2 and "video checkpoint" in err and not out.exists()
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--label",
                                   "moonwalk", "--out", str(tmp_path / "c.mp4")], capsys)
    assert code == 2 and "slide-right" in err


def test_video_evaluate_names_fvd_and_writes_an_animated_grid(tmp_path, tiny_video_checkpoints, capsys):
    report = tmp_path / "r.json"
    grid = tmp_path / "grid.gif"
    code, out, err = _cli("evaluate", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--loops", "1",
                                       "2", "--samples", "10", "--steps", "2", "--json", str(report), "--grid",
                                       str(grid)], capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["fd_name"] == "FVD-movingshapesnet" and [r["loops"] for r in data["rows"]] == [1, 2]
    assert Image.open(grid).n_frames == 8
    sheet = tmp_path / "sheet.png"  # a .png grid of a video checkpoint: one clip per class, frames as columns
    code, _, err = _cli("evaluate", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--loops", "1",
                                     "--samples", "2", "--steps", "2", "--grid", str(sheet)], capsys)
    assert code == 0, err
    width, height = Image.open(sheet).size
    classes = len(ckpt.read_config(tiny_video_checkpoints["tiny-video-elt"])["class_names"])
    cell = (height - 18 - 2) // classes  # labels on top (18 px) and left (90 px), 2 px padding
    assert getattr(Image.open(sheet), "n_frames", 1) == 1 and width == 90 + 2 + 8 * cell  # 8 frame columns
    code, out, _ = _cli("evaluate", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-tokenizer"]),
                                     "--samples", "4"], capsys)
    assert code == 0 and json.loads(out)["psnr_db"] > 0


def test_diagnose_video_script(tiny_checkpoints, tiny_video_checkpoints, capsys):
    diagnose = load_script("diagnose_video")
    assert diagnose.main(["--checkpoint", str(tiny_video_checkpoints["tiny-video-elt"]), "--clips", "12"]) == 0
    out = capsys.readouterr().out
    scores = [float(x) for x in re.findall(r"accuracy ([0-9.]+)", out)]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)  # reconstruction, then k = 0, 1 of 2
    assert "first 1 of 2 token-frames real" in out
    shares = [float(x) for x in re.findall(r"vanishes from a frame in ([0-9.]+)", out)]
    assert len(shares) == 3 and all(0 <= s <= 1 for s in shares)
    clip = np.zeros((2, 4, 8, 8, 3), np.uint8)
    clip[:, :, 2:6, 2:6] = 200  # a square on black in every frame
    clip[1, 2] = 0  # ... that vanishes from frame 2 of the second clip
    assert diagnose.vanishing_share(clip) == 0.5
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["--checkpoint", str(tiny_checkpoints["tiny-elt"])])
    assert exit_info.value.code == 2 and "image generator" in capsys.readouterr().err
