"""The page's clip download (assets/browser/clip.js), in Node: an animated PNG that Pillow reads back frame for frame,
looping at the clip's fps with the settings in its "elt-studio" chunk (core.media.png_bytes's key); one frame is a
plain PNG; a result that is not a clip gets one message."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from test_browser_sampler import run_node

HARNESS = """
const { clipPng } = await import(modules + "clip.js");
const out = [];
for (const { frames, width, height, fps, settings } of input.cases) {
  const result = { width, height, fps, frames: frames.map((f) => Uint8ClampedArray.from(f)) };
  try {
    out.push({ png: Buffer.from(await clipPng(result, settings)).toString("base64") });
  } catch (error) {
    out.push({ error: error.message });
  }
}
console.log(JSON.stringify(out));
"""


def rgba(frames: np.ndarray) -> list[list[int]]:
    alpha = np.full((*frames.shape[:-1], 1), 255, np.uint8)
    return [f.ravel().tolist() for f in np.concatenate([frames, alpha], -1)]


def test_a_clip_downloads_as_a_looping_png_with_its_settings(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # F, H, W, 3
    settings = {"checkpoint": "moving-shapes-elt", "class": "grow", "loops": 4, "seed": 3, "note": "ünïcode"}
    cases = [{"frames": rgba(clip), "width": 7, "height": 6, "fps": 8, "settings": settings},
             {"frames": rgba(clip[:1]), "width": 7, "height": 6, "fps": None, "settings": None},
             {"frames": rgba(clip), "width": 7, "height": 6, "fps": 0, "settings": None},
             {"frames": rgba(clip), "width": 8, "height": 6, "fps": 8, "settings": None}]
    got = run_node(tmp_path, HARNESS, {"cases": cases})

    image = Image.open(io.BytesIO(base64.b64decode(got[0]["png"])))
    assert image.format == "PNG" and image.is_animated and image.n_frames == 5
    assert json.loads(image.info["elt-studio"]) == settings
    assert image.info["loop"] == 0  # forever, as the page and the server's MP4 loop
    for f in range(5):
        image.seek(f)
        assert image.info["duration"] == 1000 / 8
        assert np.array_equal(np.asarray(image.convert("RGB")), clip[f])

    still = Image.open(io.BytesIO(base64.b64decode(got[1]["png"])))
    assert not getattr(still, "is_animated", False) and np.array_equal(np.asarray(still.convert("RGB")), clip[0])
    assert "elt-studio" not in still.info

    assert got[2]["error"] == "a clip's fps must be an integer in 1..60, got 0"
    assert got[3]["error"].startswith("a clip is {width, height, frames: [RGBA of width×height per frame], fps}")
