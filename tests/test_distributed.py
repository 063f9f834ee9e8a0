"""Data-parallel training (2 CPU processes, gloo) against one process on the same global batch.

What is compared, and to what tolerance:

- Classifier task (cross-entropy = a mean over equal-sized shards, GroupNorm only): DDP's gradient
  average equals the single-process gradient (logged grad norms agree to ~1e-7), so after N steps
  every weight agrees to float rounding (rtol 1e-4, atol 1e-6; measured max rel 4e-5), except conv
  biases whose true gradient is exactly zero (see _zero_gradient_biases).  The per-step loss: rank 0
  logs only its own shard's loss, so the test records every rank's shard loss and checks that
  their mean equals the single-process logged loss (rtol 1e-5).  The run is split in two and resumed
  from rank 0's checkpoint, so the same check covers resumption under DDP.
- Generator task (ILSD, bf16=False): the loss is a mean over the shard's *masked tokens*, whose
  count differs between shards, so the mean of the two ranks' losses is not the global mean; the
  global mean is the masked-token-weighted mean, which must match the single-process loss at step 1
  (same weights; rtol 1e-5).  A DDP run interrupted and resumed matches an uninterrupted DDP run.
  train.py weights each rank's loss by its share of the global masked tokens (core.train.rank_share),
  so after N steps the DDP weights equal the single-process weights (rtol 1e-4, atol 1e-6).
- The log: rank 0 writes the global batch's terms (all-reduced), equal to one process at step 1.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core import checkpoint as ckpt
from core.config import ClassifierConfig, Experiment, TrainConfig

from conftest import free_port, tiny_experiments

WORLD = 2
TIMEOUT_S = 120


def _record_losses(train_module, path: Path, rank: int) -> dict:
    """Wrap every loss function so each rank appends (run, step, loss, weight) to its own file.

    Returns the dict whose "run" entry the caller sets to the name of the run in progress.

    weight = number of positions the loss averages over on this rank (masked tokens for the
    generator, rows otherwise); recomputed from a copy of the step generator, so the real
    draws are untouched.
    """
    current = {"run": None}

    def wrap(loss_fn):
        def recorded(model, step, cfg):
            state = step.generator.get_state()
            terms = loss_fn(model, step, cfg)
            weight = len(step.labels)
            if step.tokens is not None:
                mc = objectives._config(model)
                twin = replace(step, generator=torch.Generator().manual_seed(0))
                twin.generator.set_state(state)
                weight = int(objectives._masked_inputs(twin, cfg, mc.mask_id, mc.null_class)[2].sum())
            with path.open("a") as f:
                f.write(json.dumps({"run": current["run"], "step": step.index + 1, "rank": rank,
                                    "loss": float(terms["loss"].detach()), "weight": weight}) + "\n")
            return terms
        return recorded

    from core import objectives

    chosen = train_module.loss_function
    train_module.loss_function = lambda experiment: wrap(chosen(experiment))
    return current


def _worker(rank: int, port: int, jobs: list, record: str | None) -> None:
    """One DDP rank: run the (experiment dict, out folder, max_steps) jobs in order."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from core import train as train_module

    current = _record_losses(train_module, Path(record) / f"rank{rank}.jsonl", rank) if record else {}
    for experiment, out, max_steps, *options in jobs:  # options: train()'s keyword arguments, e.g. token_cache
        current["run"] = Path(out).name
        train_module.train(Experiment.from_dict(experiment), out, device="cpu", max_steps=max_steps,
                           **(options[0] if options else {}))
    dist.destroy_process_group()


def _run_ddp(jobs: list, record: Path | None = None) -> None:
    context = mp.start_processes(_worker, args=(free_port(), jobs, str(record) if record else None),
                                 nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP workers did not finish in {TIMEOUT_S}s")


def _records(folder: Path, run: str) -> dict[int, list[dict]]:
    """step -> [record of rank 0, record of rank 1] for one DDP run (output folder name)."""
    by_step: dict[int, list[dict]] = {}
    for file in sorted(folder.glob("rank*.jsonl")):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            if r["run"] == run:
                by_step.setdefault(r["step"], []).append(r)
    by_step = {k: sorted(v, key=lambda r: r["rank"]) for k, v in by_step.items()}
    assert all([r["rank"] for r in v] == list(range(WORLD)) for v in by_step.values())
    return by_step


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    """Single-process reference runs, then ONE spawn of 2 ranks running every DDP job in turn."""
    from core.train import train

    root = tmp_path_factory.mktemp("ddp")
    classifier = Experiment("ddp-classifier", TrainConfig(task="classifier", steps=4, batch_size=8, warmup_steps=1,
                                                          label_dropout=0.0, log_every=1, checkpoint_every=10,
                                                          bf16=False),
                            ClassifierConfig(num_classes=10, image_size=16, channels=(8, 16), feature_dim=16))
    generator = tiny_experiments(tiny_checkpoints["tiny-elt"].parent)["tiny-elt"]  # ILSD, 6 steps, bf16=False
    # the token cache: built by rank 0 while rank 1 waits, then read by a one-process run (digits: 1,437 images)
    digits = replace(generator, name="ddp-digits", train=replace(generator.train, dataset="digits"))
    paths = {name: root / name for name in ("cls-single", "cls-ddp", "gen-single", "gen-ddp", "gen-ddp-split",
                                            "cached-ddp", "cached-single", "cache")}
    train(classifier, paths["cls-single"], device="cpu")
    train(generator, paths["gen-single"], device="cpu")
    (root / "records").mkdir()
    _run_ddp([(classifier.to_dict(), str(paths["cls-ddp"]), 2),  # "killed" after step 2 ...
              (classifier.to_dict(), str(paths["cls-ddp"]), None),  # ... resumed from rank 0's checkpoint
              (generator.to_dict(), str(paths["gen-ddp"]), None),
              (generator.to_dict(), str(paths["gen-ddp-split"]), 3),
              (generator.to_dict(), str(paths["gen-ddp-split"]), None),
              (digits.to_dict(), str(paths["cached-ddp"]), None, {"token_cache": str(paths["cache"]),
                                                                  "cache_workers": 0})],
             record=root / "records")
    train(digits, paths["cached-single"], device="cpu", token_cache=paths["cache"])
    paths["records"] = root / "records"
    return paths


def _zero_gradient_biases(path: Path) -> set[str]:
    """Conv biases feeding a GroupNorm with one channel per group: their true gradient is exactly 0.

    The norm subtracts each channel's mean, bias included, so only rounding noise reaches these
    biases, and Adam (update ~ lr * g / |g| early on) turns that noise into full +-lr steps whose
    sign depends on summation order.  They are excluded from the weight comparison.
    """
    body = ckpt.load(path).module.body
    return {f"body.{i}.bias" for i in range(len(body) - 1)
            if isinstance(body[i + 1], torch.nn.GroupNorm) and body[i + 1].num_groups == body[i + 1].num_channels
            and getattr(body[i], "bias", None) is not None}


def test_ddp_classifier_with_resume_matches_one_process(runs):
    single = ckpt.read_tensors(runs["cls-single"] / "model.safetensors")
    ddp = ckpt.read_tensors(runs["cls-ddp"] / "model.safetensors")
    inert = _zero_gradient_biases(runs["cls-single"])
    assert inert  # the tiny config has them: 8 channels, GroupNorm(8, 8)
    kept = sorted(set(single) - inert)
    noise = _max_rel({k: ddp[k] for k in inert}, {k: single[k] for k in inert})
    print(f"\nclassifier: max rel weight difference DDP(2+2 resumed) vs 1 process after 4 steps: "
          f"{_max_rel({k: ddp[k] for k in kept}, {k: single[k] for k in kept}):.2e} "
          f"(excluded zero-gradient biases {sorted(inert)}: {noise:.2e})")
    for key in kept:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-6)
    assert json.loads((runs["cls-ddp"] / "config.json").read_text())["trained_steps"] == 4
    log = _log(runs["cls-ddp"])
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # rank 0 alone logs, across the resume
    records = _records(runs["records"], "cls-ddp")
    for single_row, ddp_row in zip(_log(runs["cls-single"]), log):
        ranks = records[ddp_row["step"]]
        mean = sum(r["loss"] for r in ranks) / WORLD
        print(f"  step {single_row['step']}: 1 process {single_row['loss']:.6f}  mean of ranks {mean:.6f}  "
              f"rank 0 {ranks[0]['loss']:.6f}")
        assert mean == pytest.approx(single_row["loss"], rel=1e-5)


def test_ddp_generator_resume_and_first_step_loss(runs):
    full = ckpt.read_tensors(runs["gen-ddp"] / "model.safetensors")
    split = ckpt.read_tensors(runs["gen-ddp-split"] / "model.safetensors")
    for key in full:  # resumed DDP == uninterrupted DDP
        torch.testing.assert_close(split[key], full[key], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in _log(runs["gen-ddp-split"])] == list(range(1, 7))
    first = _records(runs["records"], "gen-ddp")[1]
    weighted = sum(r["loss"] * r["weight"] for r in first) / sum(r["weight"] for r in first)
    single = _log(runs["gen-single"])[0]["loss"]
    print(f"\ngenerator step 1: 1 process {single:.6f}  token-weighted mean of ranks {weighted:.6f}  "
          f"plain mean {sum(r['loss'] for r in first) / WORLD:.6f}  (masked tokens per rank "
          f"{[r['weight'] for r in first]})")
    assert weighted == pytest.approx(single, rel=1e-5)


def test_ddp_logs_the_global_batch_loss(runs):
    for name in ("cls", "gen"):
        single = [r["loss"] for r in _log(runs[f"{name}-single"])]
        ddp = [r["loss"] for r in _log(runs[f"{name}-ddp"])]
        assert ddp[0] == pytest.approx(single[0], rel=1e-5)  # step 1: same weights, same global batch


def test_ddp_generator_weights_match_one_process(runs):
    single = ckpt.read_tensors(runs["gen-single"] / "model.safetensors")
    ddp = ckpt.read_tensors(runs["gen-ddp"] / "model.safetensors")
    print(f"\ngenerator: max rel weight difference DDP vs 1 process after 6 steps: {_max_rel(ddp, single):.2e}")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-6)


def test_ddp_ranks_share_one_token_cache(runs):
    index = json.loads((runs["cache"] / "index.json").read_text())
    assert index["count"] == 1437 and index["dataset"]["description"]["name"] == "digits"
    single = ckpt.read_tensors(runs["cached-single"] / "model.safetensors")  # reused the cache the ranks built
    ddp = ckpt.read_tensors(runs["cached-ddp"] / "model.safetensors")
    for key in single:  # both ranks read the right rows of the same tokens
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-6)


def test_torchrun_cli_trains_and_rank0_saves(tmp_path):
    """The documented entry point: `torchrun --nproc_per_node=2 -m core.train …` (gloo on CPU)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "core.train", "--preset", "shapes-classifier", "--out", str(out), "--steps", "2",
           "--batch-size", "8", "--bf16", "false", "--log-every", "1",
           "--set", "channels=8,16", "feature_dim=16", "image_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("saved") == 1  # rank 0 only
    assert [r["step"] for r in _log(out)] == [1, 2]
    assert ckpt.load(out).experiment.train.steps == 2
