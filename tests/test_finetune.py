"""`python -m core.train --init-from`: weights from a checkpoint, the class-embedding rule, λ schedules, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt
from core.config import LAMBDA_SCHEDULES, ConfigError, TrainConfig
from core.losses import ilsd_lambda
from core.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent


def finetune(base: Path, out: Path, *extra: str) -> Path:
    train_main(["--init-from", str(base), "--out", str(out), "--device", "cpu", "--steps", "2", "--batch-size", "8",
                "--warmup-steps", "1", "--log-every", "1", "--checkpoint-every", "1", *extra])
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(folder / "model.safetensors")


def test_init_from_starts_from_the_checkpoint_weights(tiny_checkpoints, tmp_path):
    base = tiny_checkpoints["tiny-elt"]
    out = finetune(base, tmp_path / "ft", "--lr", "0")  # lr 0: the weights stay the base's exactly
    before, after = tensors(base), tensors(out)
    assert set(before) == set(after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    meta = ckpt.read_config(out)
    assert meta["class_names"] == ckpt.read_config(base)["class_names"]
    assert (out / meta["tokenizer"]).resolve() == (base / ckpt.read_config(base)["tokenizer"]).resolve()
    assert meta["experiment"]["name"] == "ft" and meta["experiment"]["train"]["steps"] == 2
    assert (out / meta["init_from"]).resolve() == base.resolve()
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_init_from_trains_and_keeps_the_loop_count_changeable(tiny_checkpoints, tmp_path):
    base = tiny_checkpoints["tiny-elt"]
    out = finetune(base, tmp_path / "ft", "--set", "max_loops=4", "--min-loops", "2", "--lr", "1e-2")
    before, after = tensors(base), tensors(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert ckpt.read_config(out)["experiment"]["model"]["max_loops"] == 4


def test_a_new_class_list_gets_a_fresh_class_embedding(tiny_checkpoints, tmp_path):
    base = tiny_checkpoints["tiny-elt"]
    out = finetune(base, tmp_path / "digits", "--dataset", "digits", "--lr", "0")
    before, after = tensors(base), tensors(out)
    meta = ckpt.read_config(out)
    assert meta["class_names"] != ckpt.read_config(base)["class_names"]
    assert meta["experiment"]["model"]["num_classes"] == len(meta["class_names"])
    assert after["class_embed.weight"].shape[0] == len(meta["class_names"]) + 1
    assert not torch.equal(before["class_embed.weight"], after["class_embed.weight"])  # fresh, not copied
    for key in before.keys() - {"class_embed.weight"}:
        assert torch.equal(before[key], after[key]), key


def test_help_states_the_class_embedding_rule():
    result = subprocess.run([sys.executable, "-m", "core.train", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    text = " ".join(result.stdout.split())
    assert "--init-from" in text and "class embedding" in text and "differs" in text


@pytest.mark.parametrize("extra, message", [
    (["--set", "width=48"], "shape mismatch"),
    (["--dataset", "moving-shapes"], "clips"),
    (["--lambda-schedule", "sideways"], "lambda_schedule must be one of"),
    (["--preset", "shapes-elt"], "not both"),
])
def test_bad_fine_tunes_exit_2_with_one_line(tiny_checkpoints, tmp_path, extra, message):
    out = tmp_path / "bad"
    result = subprocess.run([sys.executable, "-m", "core.train", "--init-from", str(tiny_checkpoints["tiny-elt"]),
                             "--out", str(out), "--device", "cpu", "--steps", "1", "--batch-size", "4", *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists()


def test_init_from_refuses_a_tokenizer(tiny_checkpoints, tmp_path):
    from core.cli import UsageError

    with pytest.raises(UsageError, match="needs a generator"):
        finetune(tiny_checkpoints["tiny-tokenizer"], tmp_path / "x")


def test_lambda_schedules():
    total = 11
    linear = [ilsd_lambda(i, total, "linear") for i in range(total)]
    cosine = [ilsd_lambda(i, total, "cosine") for i in range(total)]
    assert linear[0] == cosine[0] == 1.0 and abs(linear[-1]) < 1e-12 and abs(cosine[-1]) < 1e-12
    assert linear[5] == pytest.approx(0.5) and cosine[5] == pytest.approx(0.5)
    assert cosine[2] > linear[2] and cosine[8] < linear[8]  # slower start, faster end
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    assert {ilsd_lambda(i, total, "ground-truth") for i in range(total)} == {1.0}
    assert {ilsd_lambda(i, total, "distill") for i in range(total)} == {0.0}
    assert ilsd_lambda(3, total) == linear[3]  # linear is the default (the paper's)
    with pytest.raises(ValueError, match="accepted"):
        ilsd_lambda(0, total, "sideways")
    with pytest.raises(ConfigError, match="lambda_schedule"):
        TrainConfig(lambda_schedule="sideways")
    assert set(LAMBDA_SCHEDULES) == {"linear", "cosine", "ground-truth", "distill"}


def test_the_objective_logs_the_scheduled_lambda(tiny_checkpoints, tmp_path):
    out = finetune(tiny_checkpoints["tiny-elt"], tmp_path / "gt", "--lambda-schedule", "distill")
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["lambda"] for r in records] == [0.0, 0.0]
    assert {"teacher_ce", "student_ce", "distill"} <= set(records[0])
