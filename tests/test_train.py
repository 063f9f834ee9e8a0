"""Training (core.train): resume after an interruption."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from core import checkpoint as ckpt
from core.sampling import SamplerConfig

from conftest import tiny_experiments


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, tiny_checkpoints):
    from core.train import train

    experiment = tiny_experiments(tiny_checkpoints["tiny-elt"].parent)["tiny-elt"]
    train(experiment, tmp_path / "full", device="cpu")
    train(experiment, tmp_path / "split", device="cpu", max_steps=3)  # "killed" after step 3
    assert json.loads((tmp_path / "split" / "config.json").read_text())["trained_steps"] == 3
    with (tmp_path / "split" / "train_log.jsonl").open("a") as f:  # logged after the checkpoint, then killed
        f.write(json.dumps({"step": 4, "loss": 9.0}) + '\n{"step": 5, "lo')  # the last line cut short
    train(experiment, tmp_path / "split", device="cpu")  # resumes by default
    full = ckpt.read_tensors(tmp_path / "full" / "model.safetensors")
    split = ckpt.read_tensors(tmp_path / "split" / "model.safetensors")
    for key in full:
        torch.testing.assert_close(full[key], split[key], rtol=1e-5, atol=1e-6)
    log = [json.loads(line) for line in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)) and log[3]["loss"] != 9.0  # each step logged once
    assert {"teacher_ce", "student_ce", "distill", "lambda", "student_loops"} <= set(log[0])


def test_resume_refuses_a_different_experiment(tmp_path, tiny_checkpoints):
    from core.cli import UsageError
    from core.train import train

    experiments = tiny_experiments(tiny_checkpoints["tiny-elt"].parent)
    train(experiments["tiny-elt"], tmp_path / "run", device="cpu", max_steps=1)
    with pytest.raises(UsageError, match="different experiment"):
        train(experiments["tiny-vanilla"], tmp_path / "run", device="cpu")
    resampled = replace(experiments["tiny-elt"], sampler=SamplerConfig(cfg_scale=3.0))  # sampling is not training
    train(resampled, tmp_path / "run", device="cpu", max_steps=2)
    assert ckpt.load(tmp_path / "run").experiment == resampled and ckpt.read_config(tmp_path / "run")["trained_steps"] == 2
    train(experiments["tiny-vanilla"], tmp_path / "run", device="cpu", resume=False, max_steps=2)  # start over
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and "teacher_ce" not in log[0]
