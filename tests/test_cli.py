"""The CLIs (core.sample, core.evaluate, core.train) through core.cli: help, a run end to end, exit status 2
on bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from core.cli import run
from core.model import LoopedTransformer
from core.sampling import SamplerConfig

from conftest import TINY_GENERATOR


def _cli(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    import importlib

    main = importlib.import_module(f"core.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("module", ["train", "sample", "evaluate"])
def test_every_cli_has_help(module, capsys):
    code, out, _ = _cli(module, ["--help"], capsys)
    assert code == 0 and f"python -m core.{module}" in out and "--" in out


def test_sample_then_evaluate_end_to_end(tmp_path, tiny_checkpoints, capsys):
    gen = tiny_checkpoints["tiny-elt"]
    out = tmp_path / "star.png"
    code, stdout, _ = _cli("sample", ["--checkpoint", str(gen), "--label", "star", "--loops", "2", "--steps", "3",
                                      "--seed", "5", "--out", str(out)], capsys)
    assert code == 0 and out.exists()
    image = Image.open(out)
    settings = json.loads(image.text["elt-studio"])
    assert image.size == (16, 16) and settings["class"] == "star" and settings["loops"] == 2
    # same settings, same pixels
    again = tmp_path / "again.png"
    _cli("sample", ["--checkpoint", str(gen), "--label", "5", "--loops", "2", "--steps", "3", "--seed", "5",
                    "--out", str(again)], capsys)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(image))

    report_path = tmp_path / "report.json"
    code, stdout, _ = _cli("evaluate", ["--checkpoint", str(gen), "--loops", "1", "3", "--samples", "20",
                                        "--steps", "3", "--json", str(report_path), "--grid",
                                        str(tmp_path / "grid.png")], capsys)
    assert code == 0 and "seed 0" in stdout and "FD-shapesnet" in stdout
    report = json.loads(report_path.read_text())
    assert [r["loops"] for r in report["rows"]] == [1, 3] and report["samples"] == 20
    row1, row3 = report["rows"]
    # 3 steps × 2 passes (guidance on by default) of one forward at L = 1
    assert row1["gflops"] == pytest.approx(6 * LoopedTransformer(TINY_GENERATOR).flops(1) / 1e9, abs=1e-4)
    assert SamplerConfig(steps=3, cfg_scale=0).passes == 3
    assert row3["gflops"] == pytest.approx(row1["gflops"] * (LoopedTransformer(TINY_GENERATOR).flops(3)
                                                              / LoopedTransformer(TINY_GENERATOR).flops(1)), rel=1e-2)
    assert all(0 <= r["accuracy"] <= 1 and math.isfinite(r["fd"]) for r in report["rows"])
    # 20 samples cycle through the 10 classes: 2 per class, whose mean accuracy is the overall one
    assert len(report["class_names"]) == 10
    for row in report["rows"]:
        assert len(row["class_accuracy"]) == 10 and all(a in (0, 0.5, 1) for a in row["class_accuracy"])
        assert sum(row["class_accuracy"]) / 10 == pytest.approx(row["accuracy"])
    assert "lowest class accuracy at L = 3: " in stdout
    floor = report["reference"]["fd_floor"]  # 20 real training images against the held-out reference
    assert math.isfinite(floor) and floor >= 0 and report["reference"]["fd_floor_train_count"] == 20
    assert f"FD floor {floor:.3f}" in stdout  # and a "real" row under the generated ones, in the FD column
    assert any(line.split()[0] == "real" and line.endswith(f"{floor:.3f}") for line in stdout.splitlines() if line.strip())
    assert Image.open(tmp_path / "grid.png").size[0] > 2 * 16


def test_evaluate_reports_tokenizer_and_classifier(tiny_checkpoints, capsys):
    code, out, _ = _cli("evaluate", ["--checkpoint", str(tiny_checkpoints["tiny-tokenizer"]), "--samples", "16"],
                        capsys)
    report = json.loads(out)
    assert code == 0 and report["task"] == "tokenizer" and report["psnr_db"] > 0
    code, out, _ = _cli("evaluate", ["--checkpoint", str(tiny_checkpoints["tiny-classifier"]), "--samples", "16"],
                        capsys)
    assert code == 0 and 0 <= json.loads(out)["accuracy"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["--label", "dragon"], "unknown class 'dragon'"),
    (["--label", "10"], "unknown class"),
    (["--label", "star", "--loops", "0"], "loops must be"),
    (["--label", "star", "--steps", "0"], "steps must be"),
    (["--label", "star", "--seed", "-1"], "seed must be"),
])
def test_sample_bad_input_exits_2_and_writes_nothing(argv, message, tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "x.png"
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--out", str(out), *argv],
                        capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and not out.exists()
    if "class" in message:
        assert "star" in err and "0..9" in err  # names the accepted values


def test_bad_checkpoints_exit_2(tmp_path, tiny_checkpoints, capsys):
    existing = tmp_path / "keep.png"
    existing.write_bytes(b"precious")
    for folder, message in [(tmp_path / "nowhere", "no such checkpoint folder"),
                            (tiny_checkpoints["tiny-tokenizer"], "not a generator")]:
        code, _, err = _cli("sample", ["--checkpoint", str(folder), "--label", "0", "--out", str(existing)], capsys)
        assert code == 2 and message in err
        code, _, err = _cli("evaluate", ["--checkpoint", str(folder), "--samples", "4"], capsys) if \
            "nowhere" in str(folder) else (2, "", message)
        assert code == 2 and message in err
    assert existing.read_bytes() == b"precious"


def test_train_bad_input_exits_2(tmp_path, capsys):
    empty = tmp_path / "images"
    empty.mkdir()
    out = tmp_path / "run"
    code, _, err = _cli("train", ["--preset", "shapes-classifier", "--out", str(out), "--dataset", "imagefolder",
                                  "--data-root", str(empty)], capsys)
    assert code == 2 and str(empty) in err and not out.exists()
    code, _, err = _cli("train", ["--preset", "shapes-classifier", "--out", str(out), "--compile"], capsys)
    assert code == 2 and "generators" in err and not out.exists()
    code, _, err = _cli("train", ["--preset", "nope", "--out", str(out)], capsys)
    assert code == 2 and "unknown preset" in err and "shapes-elt" in err
    code, _, err = _cli("train", ["--preset", "shapes-elt", "--out", str(out), "--set", "widht=3"], capsys)
    assert code == 2 and "widht" in err and "width" in err
    code, _, err = _cli("train", ["--preset", "shapes-elt", "--out", str(out), "--tokenizer", str(tmp_path)],
                        capsys)
    assert code == 2 and "config.json" in err and not out.exists()
    for setting, message in (("cfg=3", "accepted keys: steps, cfg_scale"), ("steps=0", "steps must be >= 1")):
        code, _, err = _cli("train", ["--preset", "shapes-elt", "--out", str(out), "--sampler", setting], capsys)
        assert code == 2 and message in err and not out.exists()
    from core.train import build_parser, experiment_from_args

    args = build_parser().parse_args(["--preset", "moving-shapes-elt", "--out", "x", "--sampler", "steps=12"])
    assert experiment_from_args(args).sampler == SamplerConfig(steps=12, cfg_scale=3.0)  # the preset's, one changed
