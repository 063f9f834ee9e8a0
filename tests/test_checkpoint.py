"""Checkpoint folders (core.checkpoint): round trips, moved folders, clear failures."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.config import ClassifierConfig, Experiment, TrainConfig
from core.model import LoopedTransformer

from conftest import TINY_DIT, TINY_GENERATOR, TINY_TOKENIZER, copy_tiny


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


# -- bf16 storage ---------------------------------------------------------------------------------------
TINY_CLASSIFIER = ClassifierConfig(num_classes=10, image_size=16, channels=(8, 16), feature_dim=16)
TINY_FOLDERS = {"maskgit": ("generator", TINY_GENERATOR), "dit": ("generator", TINY_DIT),
                "tokenizer": ("tokenizer", TINY_TOKENIZER), "classifier": ("classifier", TINY_CLASSIFIER)}


def _tiny_folder(path, kind: str, ema: bool = True):
    """A randomly initialised checkpoint folder (float32) of one kind, with an EMA copy of other weights."""
    task, config = TINY_FOLDERS[kind]
    experiment = Experiment(kind, TrainConfig(task=task, bf16=False), config)
    torch.manual_seed(0)
    module, average = ckpt.build_module(experiment), ckpt.build_module(experiment)
    with torch.no_grad():  # adaLN-Zero starts a DiT at x0 = 0 for any weights; trained ones are not zero
        for p in (*module.parameters(), *average.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    ckpt.save(path, experiment, module, class_names=[str(i) for i in range(10)], ema=average if ema else None)
    return module, average


def _files(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@pytest.mark.parametrize("kind", sorted(TINY_FOLDERS))
def test_store_bf16_round_trip_keeps_outputs_within_the_tolerance(tmp_path, kind):
    module, average = _tiny_folder(tmp_path / kind, kind)
    sizes = {w: (tmp_path / kind / f"{w}.safetensors").stat().st_size for w in ("model", "ema")}
    record = ckpt.store_bf16(tmp_path / kind)
    meta = ckpt.read_config(tmp_path / kind)
    assert meta["weights_dtype"] == ckpt.BFLOAT16 and meta["bf16_check"] == record
    assert record["tolerance"] == ckpt.BF16_TOLERANCE and set(record) >= {"model", "ema"}
    for weights, original in (("model", module), ("ema", average)):
        assert ckpt.stored_dtype(tmp_path / kind, weights) == ckpt.BFLOAT16
        assert (tmp_path / kind / f"{weights}.safetensors").stat().st_size < 0.6 * sizes[weights]
        loaded = ckpt.load(tmp_path / kind, weights=weights)
        assert all(p.dtype == torch.float32 for p in loaded.module.parameters())  # bf16 on disk, fp32 to run
        what, reference = ckpt.probe_outputs(original.eval(), loaded.experiment)
        _, outputs = ckpt.probe_outputs(loaded.module, loaded.experiment)
        deviation = float((outputs - reference).abs().max())
        assert 0 < deviation <= ckpt.BF16_TOLERANCE * float(reference.std())
        assert record[weights]["max_abs_deviation"] == pytest.approx(deviation, abs=1e-6)
        if kind in ("maskgit", "dit"):
            assert what.endswith(f"loops 1..{loaded.experiment.model.max_loops}")
            assert outputs.shape[0] == loaded.experiment.model.max_loops  # every loop's prediction is measured
    assert not list((tmp_path / kind).glob(".*.tmp"))


def test_a_refused_bf16_conversion_leaves_the_folder_byte_identical(tmp_path):
    _tiny_folder(tmp_path / "a", "maskgit")
    before = _files(tmp_path / "a")
    with pytest.raises(ckpt.CheckpointError, match=r"model weights in bf16 move the logits at loops 1..3 by up to "
                                                   r".* over the tolerance 0.00%; nothing changed"):
        ckpt.store_bf16(tmp_path / "a", tolerance=1e-9)
    assert _files(tmp_path / "a") == before


def test_a_bf16_generator_validates_loads_and_reaches_jax_as_float32(tiny_checkpoints, tmp_path):
    root = copy_tiny(tiny_checkpoints, tmp_path / "ckpts", ("tiny-tokenizer", "tiny-elt"))
    folder = root / "tiny-elt"
    fp32 = ckpt.load(folder)
    sha = ckpt.weights_sha256(folder)
    ckpt.store_bf16(folder)
    assert ckpt.validate(folder)["weights_dtype"] == ckpt.BFLOAT16
    assert ckpt.weights_sha256(folder) != sha  # core.export's cache folder is named by it: a fresh export
    loaded = ckpt.load(folder)  # what core.export, the pipeline and the JAX runtime read through
    for a, b in zip(fp32.module.parameters(), loaded.module.parameters()):
        assert b.dtype == torch.float32 and torch.equal(a.to(torch.bfloat16).float(), b)
    jax_backend = pytest.importorskip("core.runtime.jax_backend")
    if jax_backend.jax is None:
        pytest.skip("jax is not installed")
    params = jax_backend.params_from_state(ckpt.read_tensors(folder / "model.safetensors"))  # the bf16 tensors
    head = np.asarray(params["head"]["weight"])
    assert head.dtype == np.float32 and np.array_equal(head, loaded.module.head.weight.detach().numpy().T)


def test_store_bf16_bad_input_is_one_clear_line(tmp_path, capsys):
    from core.cli import run

    (tmp_path / "empty").mkdir()
    _tiny_folder(tmp_path / "ok", "classifier", ema=False)
    run_ok = [str(tmp_path / "ok")]
    with pytest.raises(SystemExit) as exit_:
        run(ckpt.main, ["store-bf16", *run_ok])
    assert exit_.value.code == 0
    assert "weights in bf16" in capsys.readouterr().out
    for argv, message in ((["store-bf16", str(tmp_path / "empty")], "missing config.json (not a checkpoint folder)"),
                          (["store-bf16", *run_ok], "weights already stored in bf16"),
                          (["store-bf16", "--tolerance", "0", *run_ok], "--tolerance must be > 0")):
        before = _files(tmp_path / "ok")
        with pytest.raises(SystemExit) as exit_:
            run(ckpt.main, argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
        assert _files(tmp_path / "ok") == before
