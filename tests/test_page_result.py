"""Studio.page_result / page_tile: a sample the visitor's page made, shown as a server run is (the same input checks,
the same PNG settings, the latency chart's input from the page's clock) without any model work."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def studio(tiny_checkpoints):
    from app.service import Studio

    studio = Studio([tiny_checkpoints["tiny-elt"].parent])
    try:
        yield studio
    finally:
        studio.close()


def page_image(height=32, width=32, seed=0) -> dict:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"width": width, "height": height, "rgb": base64.b64encode(pixels.tobytes()).decode()}


def timings(calls=2, loops=3) -> dict:
    return {"loop_ms": [[1.5] * loops for _ in range(calls)], "embed_ms": [0.5] * calls, "head_ms": [0.7] * calls,
            "decode_ms": 3.0, "measured_ms": 20.0}


def test_a_page_sample_is_shown_as_a_server_run_without_model_work(studio):
    from app import charts

    engine_before = studio.engine.model_calls
    image = page_image()
    event = studio.page_result("tiny-elt", "star", 3, 2, 1.0, 7, 0, image, timings(), "wasm")
    settings = event.settings
    assert (settings["loops"], settings["steps"], settings["seed"], settings["backend"]) == (3, 2, 7,
                                                                                           "onnxruntime-web (wasm)")
    png = Image.open(event.files[0])
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")),
                                  np.frombuffer(base64.b64decode(image["rgb"]), np.uint8).reshape(32, 32, 3))
    # the same keys as the server's own PNG
    server = studio.request("tiny-elt", "star", 3, 2, 1.0, 7).settings()
    assert set(json.loads(png.text["elt-studio"])) == set(server)
    assert event.gflops > 0 and event.latency["loop_ms"] == [[1.5] * 3] * 2
    charts.latency_figure(event.latency)  # the server's chart builder takes the page's timings
    tile, run = studio.page_tile("tiny-elt", "star", 4, 2, 1.0, 7, page_image(seed=1), 12.5)
    again, same = studio.page_tile("tiny-elt", "star", 5, 2, 1.0, 7, page_image(seed=2), 13.0, run)
    assert same == run and tile.image_file.parent == again.image_file.parent and tile.image_file.is_file()
    assert again.caption.startswith("L=5 (extrapolated) · 13 ms · ")
    assert studio.engine.model_calls == engine_before


@pytest.mark.parametrize("args, message", [
    (dict(loops=99), "loops must be"),
    (dict(seed=-1), "seed must be"),
    (dict(image={"width": 32, "height": 32, "rgb": "!!"}), "image must be {width, height, rgb"),
    (dict(image=page_image(2, 3) | {"width": 4}), "image must be 1..1024 pixels a side"),
    (dict(timings={"loop_ms": [[1, 2]]}), "timings must hold loop_ms"),
    (dict(timings=timings() | {"loop_ms": []}), "the page ran no loop"),
])
def test_bad_page_results_get_one_clear_error(studio, args, message):
    from app.service import StudioError

    call = dict(checkpoint="tiny-elt", class_name="star", loops=3, steps=2, cfg_scale=1.0, seed=0, guide_loop=0,
                image=page_image(), timings=timings(), backend="wasm") | args
    with pytest.raises(StudioError, match=message.replace("{", r"\{").replace("(", r"\(")):
        studio.page_result(**call)


def test_a_page_clip_gets_the_servers_mp4_with_its_settings(tiny_video_checkpoints):
    from app.service import Studio, StudioError
    from test_app_video import mp4_settings, read_mp4

    studio = Studio([tiny_video_checkpoints["tiny-video-elt"].parent])
    try:
        frames = studio.checkpoints.pipeline("tiny-video-elt").tokenizer.experiment.model.num_frames
        size = studio.checkpoints.pipeline("tiny-video-elt").tokenizer.experiment.model.image_size
        pixels = np.random.default_rng(3).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        clip = {"width": size, "height": size, "frames": frames, "rgb": base64.b64encode(pixels.tobytes()).decode()}
        engine_before = studio.engine.model_calls
        event = studio.page_result("tiny-video-elt", 0, 2, 2, 1.0, 4, 0, clip, timings(loops=2), "webgpu")
        assert event.pixels.shape == (1, frames, size, size, 3) and event.video is not None
        mp4 = next(f for f in event.files if f.suffix == ".mp4")
        assert mp4_settings(mp4)["seed"] == 4 and mp4_settings(mp4)["backend"] == "onnxruntime-web (webgpu)"
        assert read_mp4(mp4)[1].shape[0] == frames
        assert studio.engine.model_calls == engine_before
        first, run = studio.page_tile("tiny-video-elt", 0, 1, 2, 1.0, 4, clip, 10.0)  # a sweep of clips: strips
        second, _ = studio.page_tile("tiny-video-elt", 0, 2, 2, 1.0, 4, clip, 11.0, run, [first])
        assert first.pixels.shape == (frames, size, size, 3) and second.image_file.is_file()
        grid, alone = read_mp4(second.grid_video)[1], read_mp4(first.grid_video)[1]
        assert len(grid) == len(alone) == frames and grid.shape[2] > alone.shape[2]  # L = 1, 2 side by side
        with pytest.raises(StudioError, match=f"clip must have this generator's {frames} frames, got 1"):
            studio.page_result("tiny-video-elt", 0, 2, 2, 1.0, 4, 0, clip | {"frames": 1}, timings(loops=2), "wasm")
        with pytest.raises(StudioError, match=r"clip must be \{width, height, frames, rgb"):
            studio.page_result("tiny-video-elt", 0, 2, 2, 1.0, 4, 0, page_image(), timings(loops=2), "wasm")
    finally:
        studio.close()


def test_a_budget_run_planned_in_the_page_is_shown_with_its_pick(studio):
    from app.service import StudioError
    from app.ui import budget_summary

    model = {"fixed_ms": 3.0, "per_step_ms": 0.6, "per_loop_ms": 1.5, "margin": 1.1}
    steps = studio.checkpoints.pipeline("tiny-elt").sampler().steps
    engine_before = studio.engine.model_calls
    result = studio.page_budget("tiny-elt", "star", 5, 40.0, 2, 33.0, model, page_image(),
                                timings(calls=steps, loops=2), "wasm")
    assert result["met"] is True and result["budget_ms"] == 40.0 and result["achieved_ms"] == 20.0
    plan = result["plan"]
    assert (plan.loops, plan.steps, plan.predicted_ms) == (2, steps, 33.0)
    assert result["settings"]["loops"] == 2 and result["files"][0].suffix == ".png"
    text = budget_summary(result)
    assert "✓ within budget" in text and f"chosen **L=2, {steps} steps**" in text and "from this page's first run" in text
    assert studio.engine.model_calls == engine_before
    with pytest.raises(StudioError, match="page_model must hold fixed_ms"):
        studio.page_budget("tiny-elt", "star", 5, 40.0, 2, 33.0, {"fixed_ms": 1}, page_image(), timings(loops=2), "wasm")
    with pytest.raises(StudioError, match=r"a budget picks a trained loop count \(up to L_max = 3\), got 4"):
        studio.page_budget("tiny-elt", "star", 5, 40.0, 4, 33.0, model, page_image(), timings(loops=4), "wasm")
