"""Checkpoint folders (core.checkpoint): round trips, moved folders, clear failures."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from core import checkpoint as ckpt
from core.config import Experiment, TrainConfig
from core.model import LoopedTransformer

from conftest import TINY_GENERATOR


def test_checkpoint_round_trip_strips_wrapper_prefixes(tmp_path):
    experiment = Experiment("t", TrainConfig(), TINY_GENERATOR)
    model = LoopedTransformer(TINY_GENERATOR)
    ckpt.save(tmp_path / "a", experiment, model, class_names=[str(i) for i in range(10)])
    loaded = ckpt.load(tmp_path / "a")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # a DDP / torch.compile style state dict loads the same
    prefixed = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    ckpt.write_tensors(tmp_path / "a" / "model.safetensors", prefixed)
    assert torch.equal(ckpt.load(tmp_path / "a").module.head.weight, model.head.weight)
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_a_moved_checkpoint_finds_its_tokenizer_beside_it(tmp_path, tiny_checkpoints):
    """Trained in one folder, shipped in another: the stored relative path breaks, the sibling is used."""
    import shutil

    from core.pipeline import Pipeline

    shipped = tmp_path / "shipped"
    for name in ("tiny-tokenizer", "tiny-classifier", "tiny-elt"):
        shutil.copytree(tiny_checkpoints[name], shipped / name)
    config = shipped / "tiny-elt" / "config.json"
    meta = json.loads(config.read_text())
    meta["tokenizer"] = "../../runs/tiny-tokenizer"  # as written by a run trained under runs/
    config.write_text(json.dumps(meta))
    moved = ckpt.load(shipped / "tiny-elt")
    assert not (moved.path / moved.meta["tokenizer"]).exists()  # the path stored at training time
    assert moved.reference("tokenizer") == (shipped / "tiny-tokenizer").resolve()
    assert Pipeline.load(shipped / "tiny-elt").tokenizer.path.resolve() == (shipped / "tiny-tokenizer").resolve()
    shutil.rmtree(shipped / "tiny-tokenizer")  # neither there: the stored path, which load reports clearly
    with pytest.raises(ckpt.CheckpointError, match="tokenizer '../../runs/tiny-tokenizer' not found"):
        Pipeline.load(shipped / "tiny-elt")


def test_checkpoint_failure_modes_have_clear_messages(tmp_path):
    experiment = Experiment("t", TrainConfig(), TINY_GENERATOR)
    ckpt.save(tmp_path / "ok", experiment, LoopedTransformer(TINY_GENERATOR), class_names=list("abcdefghij"))
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint folder"):
        ckpt.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="missing config.json"):
        ckpt.load(tmp_path / "empty")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="corrupt JSON"):
        ckpt.load(bad)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors"):
        ckpt.load(torn)
    mismatched = tmp_path / "mismatch"
    ckpt.save(mismatched, replace(experiment, model=replace(TINY_GENERATOR, width=64)),
              LoopedTransformer(TINY_GENERATOR), class_names=list("abcdefghij"))
    with pytest.raises(ckpt.CheckpointError, match="shape mismatch"):
        ckpt.load(mismatched)
    meta = json.loads((tmp_path / "ok" / "config.json").read_text())
    for sampler, message in (({"steps": 0}, "steps must be >= 1"), ({"cfg": 3}, "unknown SamplerConfig keys")):
        (bad / "config.json").write_text(json.dumps({**meta, "experiment": {**meta["experiment"], "sampler": sampler}}))
        with pytest.raises(ckpt.CheckpointError, match=f"invalid config.*{message}"):
            ckpt.load(bad)
