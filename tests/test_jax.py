"""JAX runtime: parity with torch on the same weights, same sampler, no recompiles across loop counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")

from core import checkpoint as ckpt  # noqa: E402
from core.cli import UsageError, run  # noqa: E402
from core.config import Experiment, ModelConfig, TrainConfig  # noqa: E402
from core.model import LoopedTransformer  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.runtime import jax_backend as jb  # noqa: E402
from core.sampling import SamplerConfig, maskgit_decode  # noqa: E402

RANDOM_GENERATOR = ModelConfig(vocab_size=32, num_classes=10, token_grid=(1, 4, 4), width=64, num_heads=4,
                               num_layers=2, max_loops=3)
TOLERANCE = 1e-5  # max |jax - torch| / max |torch|, fp32 on both sides


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised width-64 2N×3L generator saved by core.checkpoint.save."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("random") / "random-elt"
    experiment = Experiment("random-elt", TrainConfig(task="generator", bf16=False), RANDOM_GENERATOR)
    ckpt.save(path, experiment, LoopedTransformer(RANDOM_GENERATOR), class_names=[f"c{i}" for i in range(10)])
    return path


@pytest.fixture(params=["tiny-elt", "random"])
def checkpoint(request, tiny_checkpoints, random_checkpoint) -> Path:
    return tiny_checkpoints["tiny-elt"] if request.param == "tiny-elt" else random_checkpoint


def _inputs(config: ModelConfig, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size + 1, (batch, config.num_tokens), generator=g)
    tokens[0, ::3] = config.mask_id  # mask ids for sure
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)
    labels[-1] = config.null_class  # a null (unconditional) label for sure
    return tokens, labels


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_every_loop_matches_torch(checkpoint):
    model = ckpt.load(checkpoint).module  # eval mode, fp32, no autocast
    config, params = jb.load_params(checkpoint)
    assert config == model.config
    tokens, labels = _inputs(config)
    loops = config.max_loops + 2  # extrapolation too
    with torch.no_grad():
        expected = model(tokens, labels, loops=loops, return_loops="all").loop_logits.numpy()
    every = np.asarray(jb.forward(params, config, tokens.numpy(), labels.numpy(), loops, return_all_loops=True))
    assert every.shape == expected.shape == (loops, 4, config.num_tokens, config.vocab_size)
    errors = [_rel(every[i], expected[i]) for i in range(loops)]
    print(f"\n{checkpoint.name}: max rel error per loop {['%.1e' % e for e in errors]}")
    assert max(errors) <= TOLERANCE
    for L in (1, loops):  # the last-loop-only path agrees too
        assert _rel(jb.forward(params, config, tokens.numpy(), labels.numpy(), L), expected[L - 1]) <= TOLERANCE


def _decode_states(logits_fn, config: ModelConfig, sampler: SamplerConfig, seed: int):
    labels = torch.tensor([0, 3, 7, config.num_classes - 1])
    states = maskgit_decode(logits_fn, labels, num_tokens=config.num_tokens, mask_id=config.mask_id,
                            null_label=config.null_class, config=sampler,
                            generator=torch.Generator().manual_seed(seed))
    return [(s.tokens.clone(), s.loop_predictions) for s in states]


@pytest.mark.parametrize("sampler", [
    SamplerConfig(steps=4, cfg_scale=0.0, choice_temperature=0.0, temperature_base=0.0, temperature_bias=0.0),
    SamplerConfig(steps=4),  # stochastic, with guidance: the same torch.Generator drives both
], ids=["greedy", "sampled-cfg"])
def test_same_sampler_gives_identical_tokens(checkpoint, sampler):
    model = ckpt.load(checkpoint).module
    generator = jb.JaxGenerator.from_checkpoint(checkpoint)
    config = generator.config

    def torch_fn(tokens, labels):
        with torch.no_grad():
            return model(tokens, labels, loops=2, return_loops="all").loop_logits

    ours = _decode_states(generator.logits_fn(2, all_loops=True), config, sampler, seed=3)
    theirs = _decode_states(torch_fn, config, sampler, seed=3)
    for (tokens_j, loops_j), (tokens_t, loops_t) in zip(ours, theirs):
        assert torch.equal(tokens_j, tokens_t)
        assert torch.equal(loops_j, loops_t)  # every loop's argmax, each step
    assert (ours[-1][0] != config.mask_id).all()


def test_loop_count_is_traced_not_compiled_in(random_checkpoint):
    """One compiled function serves every L: L = 8 neither retraces nor compiles again."""
    config, params = jb.load_params(random_checkpoint)
    config = replace(config, max_loops=2)  # a static config no other test traced
    tokens, labels = (x.numpy() for x in _inputs(config))
    before = dict(jb.TRACES)
    first = np.asarray(jb.forward(params, config, tokens, labels, 1))
    for L in (2, 5, 8):
        jb.forward(params, config, tokens, labels, L).block_until_ready()
    assert jb.TRACES["last"] == before["last"] + 1
    for L in (1, 2):  # all loops: one compile per buffer bucket (here max_loops = 2)
        jb.forward(params, config, tokens, labels, L, return_all_loops=True)
    assert jb.TRACES["all"] == before["all"] + 1
    np.testing.assert_array_equal(first, np.asarray(jb.forward(params, config, tokens, labels, 1)))
    assert [jb.buffer_length(L, 3) for L in (1, 3, 4, 5, 8, 9)] == [3, 3, 4, 8, 8, 16]

    last = jb._jitted()[0]
    fresh = replace(config, max_loops=5)  # not traced yet: L = 1 pays trace + lower + XLA compile
    times = {}
    for L in (1, 8):
        start = time.perf_counter()
        last.lower(params, tokens, labels, np.int32(L), config=fresh, precision="highest").compile()
        times[L] = time.perf_counter() - start
    print(f"\ntrace + lower + compile, L=1 (cold): {times[1]:.3f}s  then L=8: {times[8]:.3f}s (same program)")
    assert times[8] < 3 * times[1] + 1.0


def test_pipeline_and_cli_on_the_jax_backend(tiny_checkpoints, tmp_path, capsys):
    path = tiny_checkpoints["tiny-elt"]
    runtime = Runtime.create("cpu", "fp32")
    sampler = SamplerConfig(steps=3)
    pixels_torch = Pipeline.load(path, runtime).generate([1, 4], 2, sampler, seed=9)
    pixels_jax = Pipeline.load(path, runtime, backend="jax", precision="fp32").generate([1, 4], 2, sampler, seed=9)
    np.testing.assert_array_equal(pixels_jax, pixels_torch)

    from core.sample import main

    for backend in ("torch", "jax"):
        with pytest.raises(SystemExit) as exit_info:
            run(main, ["--checkpoint", str(path), "--label", "star", "--loops", "2", "--steps", "3",
                       "--precision", "fp32", "--backend", backend, "--out", str(tmp_path / f"{backend}.png")])
        assert exit_info.value.code == 0
    capsys.readouterr()
    from PIL import Image

    images = {b: Image.open(tmp_path / f"{b}.png") for b in ("torch", "jax")}
    assert json.loads(images["jax"].text["elt-studio"])["backend"] == "jax"
    np.testing.assert_array_equal(np.asarray(images["jax"]), np.asarray(images["torch"]))

    from core.evaluate import main as evaluate_main

    reports = {}
    for backend in ("torch", "jax"):
        with pytest.raises(SystemExit) as exit_info:
            run(evaluate_main, ["--checkpoint", str(path), "--loops", "1", "4", "--samples", "6", "--steps", "2",
                                "--precision", "fp32", "--backend", backend, "--json", str(tmp_path / f"{backend}.json")])
        assert exit_info.value.code == 0
        reports[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    capsys.readouterr()
    assert reports["jax"]["backend"] == "jax"
    for row_jax, row_torch in zip(reports["jax"]["rows"], reports["torch"]["rows"]):
        assert (row_jax["accuracy"], row_jax["fd"]) == (row_torch["accuracy"], row_torch["fd"])


def test_missing_jax_is_a_clear_error(monkeypatch, tiny_checkpoints):
    monkeypatch.setattr(jb, "jax", None)
    with pytest.raises(ImportError, match=r"pip install jax \(or jax\[tpu\] / jax\[cuda12\]\)"):
        jb.JaxGenerator(RANDOM_GENERATOR, {})
    with pytest.raises(UsageError, match="the jax backend needs JAX"):
        Pipeline.load(tiny_checkpoints["tiny-elt"], backend="jax")


def test_importing_the_runtime_package_does_not_import_jax():
    code = "import sys, core.runtime, core.pipeline, core.sample; sys.exit('jax' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
