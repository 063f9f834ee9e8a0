"""Core library: loop semantics, ILSD, sampler, tokenizer, checkpoints, training, CLIs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoint as ckpt
from core.cli import run
from core.config import (PRESETS, ConfigError, Experiment, ModelConfig, TokenizerConfig, TrainConfig, dense_twin,
                         get_preset)
from core.losses import ilsd_lambda, ilsd_loss, masked_ce, random_mask, sample_student_loops
from core.metrics import frechet_distance, frechet_terms, per_class_accuracy
from core.model import LoopedTransformer, sincos_grid
from core.sampling import SamplerConfig, decode_all, maskgit_decode, num_masked_after
from core.tokenizer import FSQ, Tokenizer

from conftest import TINY_GENERATOR, TINY_TOKENIZER, load_script, tiny_experiments

ROOT = Path(__file__).resolve().parents[1]


def _inputs(config: ModelConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size + 1, (batch, config.num_tokens), generator=g)  # incl. mask id
    labels = torch.randint(0, config.num_classes + 1, (batch,), generator=g)  # incl. null class
    return tokens, labels


# -- looped model ----------------------------------------------------------------------------------
def test_parameter_count_is_independent_of_loops():
    base = LoopedTransformer(TINY_GENERATOR).num_params()
    for loops in (1, 5, 12):
        assert LoopedTransformer(replace(TINY_GENERATOR, max_loops=loops)).num_params() == base
    # the dense twin has N·L unique layers: more parameters, same FLOPs at its single loop
    dense = LoopedTransformer(dense_twin(TINY_GENERATOR))
    assert dense.num_params() > base
    assert dense.flops(1) == pytest.approx(LoopedTransformer(TINY_GENERATOR).flops(TINY_GENERATOR.max_loops))


def test_every_loop_from_one_pass_equals_separate_runs():
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR).eval()
    tokens, labels = _inputs(TINY_GENERATOR)
    loops = TINY_GENERATOR.max_loops + 2  # extrapolation beyond max_loops is allowed
    with torch.no_grad():
        out = model(tokens, labels, loops=loops, return_loops="all")
        assert out.loop_logits.shape == (loops, 3, TINY_GENERATOR.num_tokens, TINY_GENERATOR.vocab_size)
        assert torch.equal(out.loop_logits[-1], out.logits)
        for L in range(1, loops + 1):
            alone = model(tokens, labels, loops=L).logits
            torch.testing.assert_close(out.loop_logits[L - 1], alone, rtol=1e-5, atol=1e-5)
        subset = model(tokens, labels, loops=4, return_loops=(2, 4))
        torch.testing.assert_close(subset.loop_logits[0], out.loop_logits[1], rtol=1e-5, atol=1e-5)
    assert model(tokens, labels).loop_logits is None
    # training decodes only the masked positions: the same numbers, fewer of them
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.no_grad():
        picked = model(tokens, labels, loops=4, return_loops=(2, 4), positions=mask)
    assert picked.loop_logits.shape == (2, int(mask.sum()), TINY_GENERATOR.vocab_size)
    torch.testing.assert_close(picked.loop_logits[0], out.loop_logits[1][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked.logits, out.loop_logits[3][mask], rtol=1e-5, atol=1e-5)


def test_loops_differ_and_flops_are_linear_in_loops():
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR).eval()
    tokens, labels = _inputs(TINY_GENERATOR)
    with torch.no_grad():
        assert not torch.allclose(model(tokens, labels, loops=1).logits, model(tokens, labels, loops=2).logits)
    f = [model.flops(L) for L in range(1, 6)]
    steps = np.diff(f)
    assert np.allclose(steps, steps[0]) and steps[0] > 0


@pytest.mark.parametrize("grid", [(4, 8, 8), (1, 8, 8), (3, 2, 5)])
def test_position_codes_depend_only_on_offsets(grid):
    """The starting position embedding: a code's dot product with another depends only on their
    (frame, row, column) offset, so "one frame earlier, same place" looks the same everywhere."""
    width = 48
    codes = sincos_grid(grid, width).double()
    assert codes.shape == (math.prod(grid), width)
    assert codes.std().item() == pytest.approx(0.02, rel=1e-3)
    coords = torch.tensor(np.indices(grid).reshape(len(grid), -1).T)
    gram = codes @ codes.T
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    for offset in ([0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]):
        shifted = coords + torch.tensor(offset)
        inside = (shifted < torch.tensor(grid)).all(1)
        if not inside.any():
            continue
        values = torch.stack([gram[i, index[tuple(shifted[i].tolist())]] for i in torch.nonzero(inside)[:, 0]])
        assert torch.allclose(values, values[0], rtol=1e-6, atol=1e-12), offset
        assert values[0] < gram[0, 0]  # a neighbour is less alike than the position itself
    model = LoopedTransformer(replace(TINY_GENERATOR, token_grid=(1, 4, 4), position_init="sincos"))
    assert torch.equal(model.pos_embed.data[0, 1:], sincos_grid((1, 4, 4), model.config.width))


def test_bad_loop_arguments_raise():
    model = LoopedTransformer(TINY_GENERATOR)
    tokens, labels = _inputs(TINY_GENERATOR)
    with pytest.raises(ValueError, match="loops must be >= 1"):
        model(tokens, labels, loops=0)
    with pytest.raises(ValueError, match="return_loops"):
        model(tokens, labels, loops=2, return_loops=(3,))


# -- ILSD ------------------------------------------------------------------------------------------
def test_lambda_decays_linearly_from_one_to_zero():
    total = 11
    values = [ilsd_lambda(s, total) for s in range(total)]
    assert values[0] == 1.0 and values[-1] == 0.0
    assert np.allclose(np.diff(values), -0.1)


def test_student_loops_uniform_and_never_max():
    g = torch.Generator().manual_seed(0)
    draws = [sample_student_loops(1, 4, g) for _ in range(600)]
    assert set(draws) == {1, 2, 3}
    counts = np.bincount(draws)[1:]
    assert counts.min() > 150  # roughly uniform


def test_distillation_term_sends_no_gradient_to_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    student = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    mask = torch.rand(2, 5, generator=g) > 0.3
    targets = torch.randint(0, 7, (2, 5), generator=g)
    ilsd_loss(teacher, student, targets, mask, 0.3)["distill"].backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_ilsd_gradients_through_the_model_match_the_formula():
    """With λ = 0.3, model gradients equal those of GT(T) + λ GT(S) + (1-λ) DIST(S, T.detach())."""
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR)
    tokens, labels = _inputs(TINY_GENERATOR, seed=1)
    targets = tokens.clamp(max=TINY_GENERATOR.vocab_size - 1)
    g = torch.Generator().manual_seed(2)
    masked, mask = random_mask(targets, TINY_GENERATOR.mask_id, torch.rand(3, generator=g),
                               torch.rand(3, TINY_GENERATOR.num_tokens, generator=g))

    def grads(loss_fn):
        model.zero_grad()
        out = model(masked, labels, return_loops=(1, TINY_GENERATOR.max_loops))
        loss_fn(out.loop_logits[1], out.loop_logits[0]).backward()
        return [p.grad.clone() for p in model.parameters()]

    lam = 0.3
    ours = grads(lambda t, s: ilsd_loss(t, s, targets, mask, lam)["loss"])

    def reference(t, s):
        target = torch.softmax(t.detach()[mask], -1)
        dist = -(target * torch.log_softmax(s[mask], -1)).sum(-1).mean()
        return masked_ce(t, targets, mask) + lam * masked_ce(s, targets, mask) + (1 - lam) * dist

    for a, b in zip(ours, grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the teacher-side path matters: a distillation term without stop-gradient differs
    leaky = grads(lambda t, s: masked_ce(t, targets, mask) + (1 - lam) * -(
        torch.softmax(t[mask], -1) * torch.log_softmax(s[mask], -1)).sum(-1).mean() + lam * masked_ce(s, targets, mask))
    assert any(not torch.allclose(a, b) for a, b in zip(ours, leaky))


def test_random_mask_masks_at_least_one_token_by_cosine_schedule():
    tokens = torch.arange(40).view(2, 20)
    masked, mask = random_mask(tokens, 99, torch.tensor([0.0, 1.0]), torch.rand(2, 20))
    assert mask[0].all()  # u = 0 -> everything masked
    assert mask[1].sum() == 1  # u = 1 -> cos(pi/2) = 0, but at least one
    assert torch.equal(masked[mask], torch.full((int(mask.sum()),), 99))


# -- sampler ---------------------------------------------------------------------------------------
def _fake_logits_fn(vocab: int, calls: list | None = None):
    """Deterministic logits: favours token (position + label) % vocab."""

    def fn(tokens, labels):
        if calls is not None:
            calls.append((tokens.clone(), labels.clone()))
        B, T = tokens.shape
        favourite = (torch.arange(T)[None] + labels[:, None]) % vocab
        return torch.nn.functional.one_hot(favourite, vocab).float()  # soft: sampling still varies

    return fn


def test_sampler_is_deterministic_and_fully_decodes():
    labels = torch.tensor([0, 1, 2])
    kwargs = dict(num_tokens=16, mask_id=8, null_label=5, config=SamplerConfig(steps=6, cfg_scale=0.0))
    a = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(3), **kwargs)
    b = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(3), **kwargs)
    c = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a < 8).all()


def test_sampler_follows_schedule_and_keeps_decided_tokens():
    states = list(maskgit_decode(_fake_logits_fn(8), torch.tensor([1]), num_tokens=32, mask_id=8, null_label=5,
                                 config=SamplerConfig(steps=5, cfg_scale=0.0),
                                 generator=torch.Generator().manual_seed(0)))
    assert [s.step for s in states] == [1, 2, 3, 4, 5]
    masked = [int((s.tokens == 8).sum()) for s in states]
    assert masked == [num_masked_after(k, 5, 32) for k in range(4)] + [0]
    assert all(a >= b for a, b in zip(masked, masked[1:]))
    for before, after in zip(states, states[1:]):
        decided = before.tokens != 8
        assert torch.equal(after.tokens[decided], before.tokens[decided])


def test_sampler_continues_from_given_tokens():
    """init keeps the known tokens (e.g. a clip's first frames) and schedules only the rest."""
    kwargs = dict(num_tokens=32, mask_id=8, null_label=5, config=SamplerConfig(steps=4, cfg_scale=0.0))
    init = torch.full((2, 32), 8)
    init[:, :12] = 3  # 12 known tokens the fake model would never choose at every position
    states = list(maskgit_decode(_fake_logits_fn(8), torch.tensor([0, 1]), init=init,
                                 generator=torch.Generator().manual_seed(0), **kwargs))
    assert all(torch.equal(s.tokens[:, :12], init[:, :12]) for s in states)
    assert [int((s.tokens == 8).sum(1).max()) for s in states] == [num_masked_after(k, 4, 20) for k in range(3)] + [0]
    everything_masked = decode_all(_fake_logits_fn(8), torch.tensor([0, 1]), init=torch.full((2, 32), 8),
                                   generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(everything_masked, decode_all(_fake_logits_fn(8), torch.tensor([0, 1]),
                                                     generator=torch.Generator().manual_seed(0), **kwargs))
    with pytest.raises(ValueError, match="init must have shape"):
        decode_all(_fake_logits_fn(8), torch.tensor([0]), init=init, **kwargs)


def test_confident_logits_decode_to_the_argmax():
    # Logits of 50 nats make sampling effectively greedy: the output is the favourite everywhere.
    def sharp(tokens, labels):
        return _fake_logits_fn(8)(tokens, labels) * 50

    out = decode_all(sharp, torch.tensor([3]), num_tokens=10, mask_id=8, null_label=5,
                     config=SamplerConfig(steps=4, cfg_scale=0.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0], (torch.arange(10) + 3) % 8)


def test_guidance_doubles_the_batch_with_null_labels_and_accepts_per_loop_logits():
    calls = []
    fn = _fake_logits_fn(8, calls)

    def all_loops(tokens, labels):
        one = fn(tokens, labels)
        return torch.stack([one * 0.5, one])  # (L=2, B, T, V)

    states = list(maskgit_decode(all_loops, torch.tensor([1, 2]), num_tokens=8, mask_id=8, null_label=5,
                                 config=SamplerConfig(steps=3, cfg_scale=2.0),
                                 generator=torch.Generator().manual_seed(0)))
    tokens, labels = calls[0]
    assert tokens.shape == (4, 8) and labels.tolist() == [1, 2, 5, 5]
    assert states[-1].loop_predictions.shape == (2, 2, 8)


def test_sampler_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplerConfig(cfg_scale=-1)


# -- tokenizer -------------------------------------------------------------------------------------
def test_fsq_indices_round_trip_exactly():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(500, 4) * 3
    q, idx = fsq(z)
    assert idx.min() >= 0 and idx.max() < 1000
    torch.testing.assert_close(fsq.indices_to_codes(idx), q)
    all_codes = torch.arange(1000)
    codes = fsq.indices_to_codes(all_codes)
    assert len({tuple(c.tolist()) for c in codes}) == 1000  # every index is its own code


def test_tokenizer_encode_decode_shapes_and_round_trip(tiny_checkpoints):
    tok = ckpt.load(tiny_checkpoints["tiny-tokenizer"]).module
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    tokens = tok.encode(pixels)
    assert tokens.shape == (2, 64) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < TINY_TOKENIZER.codebook_size
    recon = tok.decode(tokens)
    assert recon.shape == pixels.shape and recon.dtype == torch.uint8
    assert torch.equal(tok.decode(tokens), recon)  # decoding is deterministic
    assert tok.encode(recon).shape == tokens.shape


def test_shipped_tokenizer_reconstructs_well():
    folder = ROOT / "checkpoints" / "shapes-tokenizer"
    if not (folder / "model.safetensors").exists():
        pytest.skip("shipped tokenizer not present")
    from core.data import get_dataset
    from core.tokenizer import psnr

    tok = ckpt.load(folder).module
    pixels = torch.from_numpy(get_dataset("shapes", "test").batch(range(64))[0])
    tokens = tok.encode(pixels)
    assert psnr(tok.decode(tokens), pixels) > 22.0
    # re-encoding the reconstruction gives back (almost) the same tokens
    assert (tok.encode(tok.decode(tokens)) == tokens).float().mean() > 0.7


def test_video_tokenizer_compresses_time():
    from core.config import TokenizerConfig

    config = TokenizerConfig(image_size=16, num_frames=8, channels=(8, 16, 16), temporal_downsample=4, levels=(4, 4))
    tok = Tokenizer(config).eval()
    clip = torch.randint(0, 256, (1, 8, 16, 16, 3), dtype=torch.uint8)
    tokens = tok.encode(clip)
    assert config.token_grid == (2, 4, 4) and tokens.shape == (1, 32)
    assert tok.decode(tokens).shape == clip.shape


# -- config ----------------------------------------------------------------------------------------
def test_presets_round_trip_through_json_and_validate():
    for name, experiment in PRESETS.items():
        assert Experiment.from_json(experiment.to_json()) == experiment, name
    for name in ("imagenet-L-8x3", "imagenet-L-12x2", "imagenet-XL-7x4"):
        assert get_preset(name).model.width in (1024, 1152)
    assert [get_preset(n).trained_loops for n in ("shapes-elt", "shapes-vanilla", "shapes-dense")] == [
        (2, 4), (4, 4), (1, 1)]
    # every preset family: the generator reads its tokenizer's grid and codebook, the classifier its resolution
    for family in ("shapes", "digits", "moving-shapes"):
        tok, cls, gen = (get_preset(f"{family}-{part}") for part in ("tokenizer", "classifier", "elt"))
        assert (gen.model.vocab_size, gen.model.token_grid) == (tok.model.codebook_size, tok.model.token_grid), family
        assert (cls.model.image_size, cls.model.num_frames) == (tok.model.image_size, tok.model.num_frames), family
        assert {tok.train.dataset, cls.train.dataset, gen.train.dataset} == {family}, family
        assert gen.train.tokenizer == f"checkpoints/{family}-tokenizer"
    assert get_preset("digits-tokenizer").model.token_grid == (1, 8, 8)  # one token per source pixel
    assert [get_preset(n).trained_loops for n in ("digits-elt", "digits-vanilla")] == [(2, 4), (4, 4)]
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(width=30, num_heads=4)
    with pytest.raises(ConfigError, match="position_init"):
        ModelConfig(position_init="zeros")
    with pytest.raises(ConfigError, match="dense"):
        Experiment("x", TrainConfig(mode="dense"), TINY_GENERATOR)
    with pytest.raises(ConfigError, match="unknown"):
        Experiment.from_dict({**PRESETS["shapes-elt"].to_dict(), "model": {"widht": 3}})


def test_an_experiment_carries_the_sampler_it_is_evaluated_with():
    video, image = get_preset("moving-shapes-elt"), get_preset("shapes-elt")
    assert video.sampler == SamplerConfig(cfg_scale=3.0) and image.sampler == SamplerConfig(steps=16)
    data = video.to_dict()
    assert data["sampler"]["cfg_scale"] == 3.0 and "sampler" not in get_preset("shapes-tokenizer").to_dict()
    older = {k: v for k, v in data.items() if k != "sampler"}  # a config.json written before samplers were stored
    assert Experiment.from_dict(older).sampler == SamplerConfig()
    with pytest.raises(ConfigError, match="unknown SamplerConfig keys.*cfg_scale"):
        Experiment.from_dict({**data, "sampler": {"guidance": 3}})
    with pytest.raises(ConfigError, match="cfg_scale must be >= 0"):
        Experiment.from_dict({**data, "sampler": {"cfg_scale": -1}})
    for name in PRESETS:
        folder = ROOT / "checkpoints" / name  # the shipped ones are built and sampled as their preset says
        if folder.is_dir():
            shipped = Experiment.from_dict(ckpt.read_config(folder)["experiment"])
            assert (shipped.model, shipped.sampler) == (get_preset(name).model, get_preset(name).sampler), name


# -- checkpoints -----------------------------------------------------------------------------------
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


# -- training --------------------------------------------------------------------------------------
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


def test_compiled_layers_keep_the_checkpoint_format():
    model = LoopedTransformer(TINY_GENERATOR)
    keys = list(model.state_dict())
    assert model.compile_layers() is model and list(model.state_dict()) == keys  # saved and resumed as before


@pytest.mark.slow
def test_compiled_layers_compute_the_same_step():
    torch.manual_seed(0)
    eager = LoopedTransformer(TINY_GENERATOR)
    compiled = LoopedTransformer(TINY_GENERATOR)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    tokens = torch.randint(0, TINY_GENERATOR.vocab_size, (2, TINY_GENERATOR.num_tokens))
    labels = torch.tensor([0, 1])
    out = [m(tokens, labels, return_loops="all").loop_logits for m in (eager, compiled)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)


# -- CLIs ------------------------------------------------------------------------------------------
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


def test_per_class_accuracy_counts_each_class_and_skips_absent_ones():
    predicted, labels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2])
    assert per_class_accuracy(predicted, labels, 4) == [1.0, 1.0, pytest.approx(1 / 3, abs=1e-4), None]


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


@pytest.mark.parametrize("frames", [1, 4])
def test_tokenizer_codes_depend_only_on_their_own_patch(frames):
    """A flat patch gets the same code wherever it is, whatever its neighbours (stable codes)."""
    torch.manual_seed(0)
    config = TokenizerConfig(image_size=16, num_frames=frames, channels=(8, 16, 16),
                             temporal_downsample=2 if frames > 1 else 1)
    tok = Tokenizer(config)
    pixels = torch.full((2, frames, 16, 16, 3), 40, dtype=torch.uint8)
    pixels[0, :, :, 8:] = torch.randint(0, 256, (frames, 16, 8, 3), dtype=torch.uint8)  # busy right half
    pixels[1, :, 4:, :] = 200  # a different colour below the first row of patches
    if frames == 1:
        pixels = pixels[:, 0]
    codes = tok.encode(pixels).view(2, -1, 4, 4)  # (B, T', H', W'): 4x4 patches of 4x4 pixels
    flat = torch.cat([codes[0, :, :, :2].flatten(), codes[1, :, 0].flatten()])  # every all-40 patch
    assert (flat == flat[0]).all()


def test_diagnose_tokens_script(tiny_checkpoints, capsys):
    diagnose = load_script("diagnose_tokens")
    # the count table is exact on a rule it can see: every token equals its left neighbour
    rows = np.repeat(np.arange(4)[None, :, None], 6, axis=2).repeat(50, axis=0)  # (50, 4, 6), constant rows
    edge = np.ones((50, 4, 4), bool)
    assert diagnose.neighbour_table_ce(rows, rows, edge, edge, vocab=4) < 0.01
    noise = np.random.default_rng(0).integers(0, 4, (50, 4, 6))
    assert diagnose.neighbour_table_ce(noise, noise[::-1].copy(), edge, edge, vocab=4) > 1.0
    assert diagnose.main(["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--images", "200",
                          "--test-images", "100", "--flat", "0"]) == 0
    out = capsys.readouterr().out
    model_ce = float(re.search(r"masked, edge tokens: CE (\S+) nats", out).group(1))
    table_ce = float(re.search(r"neighbours, edge tokens: CE (\S+) nats", out).group(1))
    accuracies = [float(x) for x in re.search(r"reconstruction (\S+), .* model (\S+)", out).groups()]
    assert math.isfinite(model_ce) and math.isfinite(table_ce) and model_ce > 0 and table_ce >= 0
    assert all(0 <= a <= 1 for a in accuracies) and "P(background code)" in out


def test_results_table_puts_one_sampler_in_each_table(tmp_path, monkeypatch):
    table = load_script("results_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    report = {"fd_name": "FD-shapesnet", "samples": 10, "seed": 0, "precision": "bf16", "device": "cpu",
              "reference": {"count": 10, "accuracy": 1.0}, "max_loops": 2, "num_params": 1000,
              "sampler": vars(SamplerConfig()),
              "rows": [{"loops": 1, "gflops": 1.0, "ms_per_sample": 2.0, "accuracy": 0.5, "fd": 9.0}]}
    for name, cfg_scale in (("a", 3.0), ("b", 3.0), ("c", 2.0)):
        ckpt.write_json(tmp_path / "checkpoints" / name / "metrics.json",
                        {**report, "sampler": {**report["sampler"], "cfg_scale": cfg_scale}})
    assert "guidance 3.0" in table.generator_table(["a", "b"]) and "| b | 0.00M | — | 1 |" in table.generator_table(["a", "b"])
    assert "FD floor" not in table.generator_table(["a"])  # measured before the floor was stored
    ckpt.write_json(tmp_path / "checkpoints" / "d" / "metrics.json",
                    {**report, "reference": {**report["reference"], "fd_floor": 1.5, "fd_floor_train_count": 10}})
    assert "FD floor 1.50: 10 real training images" in table.generator_table(["d"])
    with pytest.raises(SystemExit, match="c: metrics.json measured with another sampler than a's"):
        table.generator_table(["a", "b", "c"])


def test_results_table_compares_classes_at_each_models_max_loops(tmp_path, monkeypatch):
    table = load_script("results_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    rows = lambda accs: [{"loops": L, "class_accuracy": a} for L, a in enumerate(accs, 1)]  # noqa: E731
    reports = {"looped": {"max_loops": 2, "rows": rows([[0.1, 0.2], [0.9, 0.4]])},
               "dense": {"max_loops": 1, "rows": rows([[0.7, 0.6], [0.0, 0.0]])},
               "old": {"max_loops": 1, "rows": [{"loops": 1}]},  # measured before per-class accuracy: left out
               "short": {"max_loops": 3, "rows": rows([[0.5, 0.5]])}}  # no row at L_max: left out
    for name, report in reports.items():
        extra = {"class_names": ["circle", "heart"]} if name != "old" else {}
        ckpt.write_json(tmp_path / "checkpoints" / name / "metrics.json", {**report, **extra})
    text = table.class_table(["looped", "dense", "old", "short"])
    assert "| class | looped (L = 2) | dense (L = 1) |" in text
    assert "| circle | 0.90 | 0.70 |" in text and "| heart | 0.40 | 0.60 |" in text
    assert table.class_table(["old", "short"]) == ""


def test_frechet_distance_is_where_the_sets_sit_plus_how_they_spread():
    a = np.random.default_rng(0).normal(size=(4000, 4))
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    mean_term, cov_term = frechet_terms(a, a + shift)  # same spread, moved
    assert mean_term == pytest.approx(float(shift @ shift)) and cov_term == pytest.approx(0, abs=1e-9)
    mean_term, cov_term = frechet_terms(a - a.mean(0), 2 * (a - a.mean(0)))  # same place, twice the spread
    assert mean_term == pytest.approx(0, abs=1e-12) and cov_term == pytest.approx(4.0, rel=0.05)  # Tr(Σ) for Σ ≈ I
    assert frechet_distance(a, 2 * a + shift) == pytest.approx(sum(frechet_terms(a, 2 * a + shift)))
