"""Shape consistency of clips (issue 44): the metric, the frames its classifier learns from, core.evaluate's report."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.cli import run
from core.config import ClassifierConfig, Experiment, TrainConfig
from core.data import get_dataset
from core.data.shapes import ROTATION_INVARIANT, SHAPE_NAMES, render_shapes
from core.data.video import ACTION_NAMES
from core.metrics import frame_predictions, shape_consistency

from conftest import load_script


def test_shape_consistency_is_the_share_of_frames_showing_the_most_common_shape():
    predicted = torch.tensor([[1, 1, 1, 1],
                              [1, 2, 1, 2],  # a tie: either shape is the most common, half the frames
                              [0, 1, 2, 3],
                              [3, 3, 0, 3],
                              [5, 4, 4, 7]])
    assert shape_consistency(predicted).tolist() == [1.0, 0.5, 0.25, 0.75, 0.5]


def test_frame_predictions_keep_each_clip_in_its_row():
    class ByBrightness:  # a stand-in classifier: the class is a frame's mean value
        def predict(self, frames):
            return frames.float().mean((1, 2, 3)).long()

    clips = torch.arange(6, dtype=torch.uint8).view(2, 3, 1, 1, 1).expand(2, 3, 2, 2, 3)
    assert frame_predictions(ByBrightness(), clips, batch=4).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_frame_labels_are_the_shapes_the_clips_draw():
    clips = get_dataset("moving-shapes", "test", num_frames=8)
    frames = get_dataset("moving-shapes-frames", "test", num_frames=8)
    assert frames.class_names == SHAPE_NAMES and len(frames) == 8 * len(clips) and not frames.is_video
    video, _ = clips.batch(range(20))
    pixels, labels = frames.batch(range(160))
    np.testing.assert_array_equal(pixels, video.reshape(160, 32, 32, 3))  # item i: frame i % 8 of clip i // 8
    np.testing.assert_array_equal(labels, np.repeat(clips.shapes(range(20)), 8))
    for i in range(20):
        label, shape, fg, bg, angle, track = clips._params(i)
        if ACTION_NAMES[label] == "rotate":
            assert SHAPE_NAMES[shape] not in ROTATION_INVARIANT
        t = int(np.argmax(track.opacity))  # a frame where the shape shows (blink clips go dark)
        redrawn = render_shapes(np.arange(len(SHAPE_NAMES)), np.repeat(track.center[t:t + 1], len(SHAPE_NAMES), 0),
                                np.full(len(SHAPE_NAMES), track.radius[t]), np.full(len(SHAPE_NAMES),
                                                                                    angle + track.spin[t]),
                                np.tile(fg, (len(SHAPE_NAMES), 1)), np.tile(bg, (len(SHAPE_NAMES), 1)), 32)
        same = [k for k in range(len(SHAPE_NAMES)) if np.array_equal(redrawn[k], video[i, t])]
        assert same == [shape], (i, same, shape)  # only the labelled shape draws this frame


def _cli(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        run(importlib.import_module(f"core.{module}").main, argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def with_frame_classifier(tiny_video_checkpoints, tmp_path_factory):
    """The tiny video checkpoints copied into one folder, with a tiny frame classifier beside the video classifier."""
    from core.train import train

    root = tmp_path_factory.mktemp("consistency")
    for name, folder in tiny_video_checkpoints.items():
        shutil.copytree(folder, root / name, ignore=shutil.ignore_patterns("train_state.*"))
    experiment = Experiment("tiny-frame-classifier",
                            TrainConfig(task="classifier", dataset="moving-shapes-frames", steps=3, batch_size=16,
                                        warmup_steps=1, bf16=False),
                            ClassifierConfig(num_classes=len(SHAPE_NAMES), image_size=16, channels=(8, 16),
                                             feature_dim=16))
    train(experiment, root / "moving-shapes-frame-classifier", device="cpu")
    return root


def test_evaluate_reports_consistency_of_generated_real_and_round_trip_clips(with_frame_classifier, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    code, out, err = _cli("evaluate", ["--checkpoint", str(with_frame_classifier / "tiny-video-elt"), "--loops", "1",
                                       "2", "--samples", "4", "--reference-count", "6", "--json", str(report_file)],
                          capsys)
    assert code == 0, err
    report = json.loads(report_file.read_text())
    reference = report["reference"]
    assert reference["consistency_count"] == 4  # as many real clips as generated ones
    for key in ("consistency", "round_trip_consistency", "frame_accuracy"):
        assert 0 <= reference[key] <= 1, key
    assert reference["consistency"] >= 1 / 8 and reference["round_trip_psnr_db"] > 0
    assert [r["loops"] for r in report["rows"]] == [1, 2]
    assert all(1 / 8 <= r["consistency"] <= 1 for r in report["rows"])  # at least one frame agrees with itself
    assert "consistency" in out.splitlines()[1] and "through the tokenizer and back" in out

    code, out, err = _cli("evaluate", ["--checkpoint", str(with_frame_classifier / "tiny-video-tokenizer"),
                                       "--samples", "3"], capsys)
    assert code == 0, err
    component = json.loads(out)
    assert component["samples"] == 3 and component["psnr_db"] > 0
    assert 1 / 8 <= component["consistency"] <= 1 and 1 / 8 <= component["round_trip_consistency"] <= 1


def test_evaluate_without_a_frame_classifier_reports_no_consistency(tiny_video_checkpoints, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./checkpoints/moving-shapes-frame-classifier to fall back on
    code, out, err = _cli("evaluate", ["--checkpoint", str(tiny_video_checkpoints["tiny-video-tokenizer"]),
                                       "--samples", "2"], capsys)
    assert code == 0, err
    assert "psnr_db" in json.loads(out) and "consistency" not in json.loads(out)


@pytest.mark.parametrize("checkpoint, frame_classifier, words", [
    ("tiny-video-elt", "tiny-video-classifier", "not a per-frame (2-D) classifier"),
    ("tiny-video-classifier", "moving-shapes-frame-classifier", "applies to generators and video tokenizers"),
])
def test_evaluate_refuses_a_wrong_frame_classifier_in_one_line(with_frame_classifier, capsys, checkpoint,
                                                              frame_classifier, words):
    code, _, err = _cli("evaluate", ["--checkpoint", str(with_frame_classifier / checkpoint), "--loops", "1",
                                     "--samples", "2", "--frame-classifier",
                                     str(with_frame_classifier / frame_classifier)], capsys)
    assert code == 2 and words in err and err.strip().count("\n") == 0, err


def test_evaluate_refuses_a_frame_classifier_for_images(tiny_checkpoints, with_frame_classifier, capsys):
    code, _, err = _cli("evaluate", ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--loops", "1", "--samples",
                                     "2", "--frame-classifier",
                                     str(with_frame_classifier / "moving-shapes-frame-classifier")], capsys)
    assert code == 2 and "scores the frames of clips" in err, err


def test_results_table_shows_consistency_where_measured(tmp_path, monkeypatch):
    table = load_script("results_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    row = {"loops": 1, "gflops": 1.0, "ms_per_sample": 2.0, "accuracy": 0.5, "fd": 9.0}
    reference = {"count": 10, "accuracy": 1.0, "consistency": 0.917, "consistency_count": 10, "frame_accuracy": 0.93,
                 "round_trip_consistency": 0.713, "round_trip_psnr_db": 23.7}
    report = {"fd_name": "FVD-movingshapesnet", "samples": 10, "seed": 0, "precision": "fp32", "device": "cpu",
              "reference": reference, "max_loops": 2, "num_params": 1000, "sampler": {"steps": 8},
              "rows": [{**row, "consistency": 0.603}]}
    ckpt.write_json(tmp_path / "checkpoints" / "new" / "metrics.json", report)
    ckpt.write_json(tmp_path / "checkpoints" / "old" / "metrics.json", {**report, "rows": [row]})
    text = table.generator_table(["new", "old"])
    assert "| class accuracy | shape consistency | FVD-movingshapesnet |" in text
    assert "| new | 0.00M | — | 1 | 1.00 | 0.500 | 0.603 | 9.00 |" in text
    assert "| old | 0.00M | — | 1 | 1.00 | 0.500 | — | 9.00 |" in text
    assert "Real test clips score 0.917" in text and "through the tokenizer and back 0.713 (23.70 dB PSNR)" in text
    assert "shape consistency" not in table.generator_table(["old"])
