"""Diffusion family: looped DiT, its ILSD objective, the DDIM / DDPM sampler, training and the CLIs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt
from core.cli import UsageError, run
from core.config import PRESETS, DiffusionSamplerConfig, DiTConfig, Experiment, TrainConfig, dense_twin
from core.family import family_of, loss_function
from core.losses import diffusion_ilsd_loss, diffusion_inputs, weighted_mse
from core.model import LoopedDiT, dit_flops
from core.objectives import Step, _noised_inputs, diffusion_ilsd_objective
from core.pipeline import Pipeline
from core.runtime import Runtime
from core.sampling import ExitCriterion, diffusion_decode, noise_schedule

from conftest import TINY_DIT

SMALL = replace(TINY_DIT, patch_size=1)  # 64 tokens of 2 channels


def _inputs(config: DiTConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = config.latent_grid[1] * config.latent_grid[2]
    x = torch.randn(batch, T, config.latent_channels, generator=g)
    t = torch.rand(batch, generator=g)
    labels = torch.randint(0, config.num_classes + 1, (batch,), generator=g)  # incl. null class
    return x, t, labels


def _trained_like(config: DiTConfig, seed: int = 0) -> LoopedDiT:
    """A DiT whose zero-initialised (adaLN-Zero) projections are random, so every loop changes the output."""
    torch.manual_seed(seed)
    model = LoopedDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


# -- the model -------------------------------------------------------------------------------------------
def test_patches_round_trip_and_a_fresh_model_predicts_zero():
    model = LoopedDiT(TINY_DIT)
    x, t, labels = _inputs(TINY_DIT)
    assert model.patchify(x).shape == (3, 16, 8)  # 8x8 grid in 2x2 patches of 2 channels
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    stacked = torch.stack([model.patchify(x)] * 2)
    assert torch.equal(model.unpatchify(stacked), torch.stack([x, x]))
    out = model(x, t, labels, return_loops="all")
    assert out.x0.shape == x.shape and out.loop_x0.shape == (3, *x.shape)
    assert out.x0.abs().max() == 0  # adaLN-Zero: the final layer starts at zero


def test_dit_every_loop_from_one_pass_equals_separate_runs():
    model = _trained_like(TINY_DIT)
    x, t, labels = _inputs(TINY_DIT)
    with torch.no_grad():
        out = model(x, t, labels, loops=5, return_loops="all")
        for L in range(1, 6):
            torch.testing.assert_close(out.loop_x0[L - 1], model(x, t, labels, loops=L).x0)
        assert not torch.allclose(out.loop_x0[0], out.loop_x0[1])
    marks = []
    model(x, t, labels, loops=2, on_loop=marks.append)
    assert marks == [0, 1, 2]
    with pytest.raises(ValueError, match="loops must be >= 1"):
        model(x, t, labels, loops=0)


def test_dit_parameters_independent_of_loops_and_flops_linear():
    a, b = LoopedDiT(TINY_DIT), LoopedDiT(replace(TINY_DIT, max_loops=7))
    assert a.num_params() == b.num_params()
    f = [dit_flops(TINY_DIT, L) for L in (1, 2, 3)]
    assert f[2] - f[1] == pytest.approx(f[1] - f[0]) and f[1] > f[0]
    dense = dense_twin(TINY_DIT)
    assert (dense.num_layers, dense.max_loops) == (6, 1)
    assert dit_flops(dense, 1) == pytest.approx(dit_flops(TINY_DIT, 3))  # equal FLOPs per forward
    assert LoopedDiT(dense).num_params() > a.num_params()


def test_class_and_time_condition_the_prediction():
    model = _trained_like(TINY_DIT)
    x, t, _ = _inputs(TINY_DIT, batch=1)
    with torch.no_grad():
        by_class = [model(x, t, torch.tensor([c])).x0 for c in (0, 1, TINY_DIT.null_class)]
        by_time = [model(x, torch.tensor([s]), torch.tensor([0])).x0 for s in (0.1, 0.9)]
    assert not torch.allclose(by_class[0], by_class[1]) and not torch.allclose(by_class[0], by_class[2])
    assert not torch.allclose(*by_time)


# -- schedule and objective --------------------------------------------------------------------------------
def test_noise_schedule_is_variance_preserving_and_shift_adds_noise():
    t = torch.linspace(0, 1, 11)
    alpha, sigma, logsnr = noise_schedule(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(11))
    assert (logsnr[1:] < logsnr[:-1]).all() and alpha[-1] < 1e-3 and sigma[0] < 1e-3
    assert (noise_schedule(t[1:-1], shift=2.0)[2] < logsnr[1:-1]).all()
    _, _, weight = diffusion_inputs(torch.zeros(11, 4, 2), t, torch.zeros(11, 4, 2), 1.0, -1.0)
    torch.testing.assert_close(weight, torch.sigmoid(logsnr + 1.0))  # w(t) = sigmoid(logSNR − b)
    assert (weight[1:] < weight[:-1]).all() and weight[-1] < 1e-3


def test_diffusion_inputs_noise_the_clean_latent():
    g = torch.Generator().manual_seed(0)
    x0, noise, u = torch.randn(5, 6, 2, generator=g), torch.randn(5, 6, 2, generator=g), torch.rand(5, generator=g)
    x_t, t, _ = diffusion_inputs(x0, u, noise, 1.0, 0.0)
    alpha, sigma, _ = noise_schedule(u)
    torch.testing.assert_close(x_t, alpha[:, None, None] * x0 + sigma[:, None, None] * noise)
    assert torch.equal(t, u)


def test_no_gradient_reaches_the_model_through_the_teacher_side_of_dist():
    """DIST's gradient equals the one with the teacher replaced by a constant: sg[] holds inside the model."""
    model = _trained_like(TINY_DIT)
    x, t, labels = _inputs(TINY_DIT)
    weight = torch.rand(3)

    def grads(teacher_constant: bool):
        model.zero_grad()
        student, teacher = model(x, t, labels, loops=3, return_loops=(1, 3)).loop_x0
        if teacher_constant:
            with torch.no_grad():
                teacher = model(x, t, labels, loops=3).x0
        diffusion_ilsd_loss(teacher, student, x, weight, lam=0.0)["distill"].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b)
    # and it is not vacuous: without sg[] the gradient differs
    model.zero_grad()
    student, teacher = model(x, t, labels, loops=3, return_loops=(1, 3)).loop_x0
    weighted_mse(student, teacher, weight).backward()
    without_sg = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert any(not torch.allclose(a, b) for a, b in zip(without_sg, grads(True)))


def test_diffusion_ilsd_loss_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    teacher, student, x0 = (torch.randn(4, 6, 2, generator=g) for _ in range(3))
    weight = torch.rand(4, generator=g)
    terms = diffusion_ilsd_loss(teacher, student, x0, weight, lam=0.25)

    def mse(a, b):
        return (weight * ((a - b) ** 2).mean((1, 2))).mean()

    torch.testing.assert_close(terms["teacher_mse"], mse(teacher, x0))
    torch.testing.assert_close(terms["student_mse"], mse(student, x0))
    torch.testing.assert_close(terms["distill"], mse(student, teacher))
    torch.testing.assert_close(terms["loss"], mse(teacher, x0) + 0.25 * mse(student, x0) + 0.75 * mse(student, teacher))


def _step(index: int, total: int, batch: int = 64, seed: int = 0) -> Step:
    g = torch.Generator().manual_seed(seed + index)
    x0 = torch.randn(batch, 64, 2, generator=g)
    return Step(index, total, g, batch, slice(0, None, 1), None, torch.randint(0, 10, (batch,), generator=g), x0)


def test_objective_draws_students_below_lmax_decays_lambda_and_drops_labels():
    cfg = TrainConfig(min_loops=1, label_dropout=0.1)
    model = _trained_like(SMALL)
    seen = set()
    for index in range(12):
        terms = diffusion_ilsd_objective(model, _step(index, 12), cfg)
        seen.add(int(terms["student_loops"]))
        assert float(terms["lambda"]) == pytest.approx(1 - index / 11)
    assert seen == {1, 2}  # U{L_min … L_max − 1}, never L_max = 3
    for schedule, expected in (("ground-truth", 1.0), ("distill", 0.0), ("cosine", 0.5)):  # --lambda-schedule
        terms = diffusion_ilsd_objective(model, _step(5, 11), TrainConfig(min_loops=1, lambda_schedule=schedule))
        assert float(terms["lambda"]) == pytest.approx(expected)
    step = _step(0, 1, batch=4000)
    labels = _noised_inputs(step, cfg, SMALL)[3]
    assert 0.08 < (labels == SMALL.null_class).float().mean() < 0.12  # 10 % label dropout → null class
    assert (labels[labels != SMALL.null_class] == step.labels[labels != SMALL.null_class]).all()


def test_one_family_choice_gives_model_loss_and_sampler():
    for name in ("shapes-dit-elt", "shapes-dit-vanilla", "shapes-dit-dense"):
        experiment = PRESETS[name]
        family = family_of(experiment.model)
        assert family.name == "diffusion" and isinstance(experiment.sampler, family.sampler_type)
        assert isinstance(ckpt.build_module(experiment), LoopedDiT)
        assert loss_function(experiment) is family.objectives[experiment.train.mode]
        assert Experiment.from_json(experiment.to_json()) == experiment
        assert json.loads(experiment.to_json())["model"]["family"] == "diffusion"
    assert family_of(PRESETS["shapes-elt"].model).name == "maskgit"
    assert "family" not in json.loads(PRESETS["shapes-elt"].to_json())["model"]  # MaskGIT configs unchanged
    with pytest.raises(ValueError, match="needs a DiffusionSamplerConfig"):
        Experiment("x", TrainConfig(), TINY_DIT, sampler=PRESETS["shapes-elt"].sampler)


def test_a_dit_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    model = LoopedDiT(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = TrainConfig(label_dropout=0.0)
    step = _step(0, 1, batch=16)
    step.tokens.copy_(step.tokens.sign() * 0.8)  # a learnable clean latent
    losses = []
    for i in range(40):
        step.generator.manual_seed(i % 4)
        x_t, t, weight, labels = _noised_inputs(step, cfg, SMALL)
        loss = weighted_mse(model(x_t, t, labels).x0, step.tokens, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])


# -- sampler ----------------------------------------------------------------------------------------------
def _oracle(x0: torch.Tensor, calls: list | None = None, loops: int = 0):
    """A denoise_fn that always predicts x0 (every loop the same when loops > 0)."""
    def fn(x, labels, t):
        if calls is not None:
            calls.append((x.clone(), labels.clone(), t.clone()))
        out = x0.expand(x.shape[0], *x0.shape[1:])
        return out.expand(loops, *out.shape) if loops else out
    return fn


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sampler_reaches_the_prediction_and_streams_every_step(method):
    x0 = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(3))
    config = DiffusionSamplerConfig(steps=4, cfg_scale=0.0, method=method)
    states = list(diffusion_decode(_oracle(x0, loops=3), torch.tensor([0, 1]), shape=(6, 2), null_label=10,
                                   config=config, generator=torch.Generator().manual_seed(0)))
    assert [s.step for s in states] == [1, 2, 3, 4] and states[-1].t == 0.0
    assert states[0].loop_predictions.shape == (3, 2, 6, 2)
    torch.testing.assert_close(states[-1].tokens, x0.expand(2, 6, 2))
    # the noise level falls step by step: the distance to x0 shrinks
    gaps = [float((s.tokens - x0).norm()) for s in states]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))


def test_ddim_step_follows_the_formula_and_is_deterministic():
    x0 = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(3))
    calls = []
    config = DiffusionSamplerConfig(steps=2, cfg_scale=0.0)
    first = next(diffusion_decode(_oracle(x0, calls), torch.tensor([0]), shape=(6, 2), null_label=10, config=config,
                                  generator=torch.Generator().manual_seed(0)))
    x1, _, t1 = calls[0]
    assert float(t1) == 1.0
    (a1, s1, _), (ah, sh, _) = noise_schedule(torch.tensor(1.0)), noise_schedule(torch.tensor(0.5))
    eps = (x1 - a1 * x0) / s1
    torch.testing.assert_close(first.tokens, ah * x0 + sh * eps)
    again = next(diffusion_decode(_oracle(x0), torch.tensor([0]), shape=(6, 2), null_label=10, config=config,
                                  generator=torch.Generator().manual_seed(0)))
    assert torch.equal(first.tokens, again.tokens)


def test_ddpm_draws_fresh_noise_and_guidance_doubles_the_batch():
    x0 = torch.zeros(1, 6, 2)
    runs = []
    for seed in (0, 0, 1):
        config = DiffusionSamplerConfig(steps=3, cfg_scale=0.0, method="ddpm")
        runs.append([s.tokens for s in diffusion_decode(_oracle(x0), torch.tensor([0]), shape=(6, 2), null_label=10,
                                                        config=config, generator=torch.Generator().manual_seed(seed))])
    assert torch.equal(runs[0][1], runs[1][1]) and not torch.equal(runs[0][1], runs[2][1])
    calls = []
    config = DiffusionSamplerConfig(steps=1, cfg_scale=3.0)
    list(diffusion_decode(_oracle(x0, calls), torch.tensor([4, 7]), shape=(6, 2), null_label=10, config=config))
    x, labels, t = calls[0]
    assert x.shape[0] == 4 and labels.tolist() == [4, 7, 10, 10] and t.shape == (4,)
    assert torch.equal(x[:2], x[2:])


def test_sampler_config_rejects_bad_values():
    for kwargs, message in [({"steps": 0}, "steps must be >= 1"), ({"cfg_scale": -1}, "cfg_scale must be >= 0"),
                            ({"method": "euler"}, "method must be one of")]:
        with pytest.raises(ValueError, match=message):
            DiffusionSamplerConfig(**kwargs)


# -- trained tiny checkpoints: trainer, pipeline, CLIs ------------------------------------------------------
def test_trainer_runs_all_three_modes(tiny_dit_checkpoints):
    for name in ("tiny-dit-elt", "tiny-dit-vanilla", "tiny-dit-dense"):
        loaded = ckpt.load(tiny_dit_checkpoints[name])
        assert isinstance(loaded.module, LoopedDiT) and loaded.experiment.family == "diffusion"
        log = [json.loads(line) for line in (tiny_dit_checkpoints[name] / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
        if name == "tiny-dit-elt":
            assert {"teacher_mse", "student_mse", "distill", "lambda", "student_loops"} <= set(log[0])
    assert ckpt.load(tiny_dit_checkpoints["tiny-dit-dense"]).module.config.num_layers == 6


def test_training_data_is_the_tokenizers_continuous_latent(tiny_dit_checkpoints):
    from core.data import get_dataset
    from core.train import TokenCache

    tokenizer = ckpt.load(tiny_dit_checkpoints["tiny-tokenizer"]).module
    family = family_of(TINY_DIT)
    dataset = get_dataset("shapes", "train", image_size=16)
    cache = TokenCache(lambda px: family.encode(tokenizer, px), dataset, family.data_shape(TINY_DIT),
                       family.data_dtype, torch.device("cpu"))
    latents, labels = cache.get(torch.tensor([3, 5, 3]))
    pixels, expected = dataset.batch([3, 5, 3])
    torch.testing.assert_close(latents, tokenizer.encode_latent(torch.from_numpy(pixels)))
    assert latents.shape == (3, 64, 2) and latents.abs().max() <= 1 and labels.tolist() == expected.tolist()


def test_pipeline_streams_each_loops_x0_and_is_reproducible(tiny_dit_checkpoints):
    pipeline = Pipeline.load(tiny_dit_checkpoints["tiny-dit-elt"], Runtime.create("cpu", "fp32"))
    with pytest.raises(UsageError, match="MaskGIT options"):  # adaptive exit stays MaskGIT's
        next(pipeline.stream([0], 2, pipeline.sampler(steps=2), 0, exit=ExitCriterion("agree", 0.9)))
    sampler = pipeline.sampler()
    assert sampler == DiffusionSamplerConfig(steps=3, cfg_scale=2.0)
    results = list(pipeline.stream([1, 2], 2, sampler, seed=5, all_loops=True, timed=True))
    assert len(results) == 3 and results[0].state.loop_predictions.shape == (2, 2, 64, 2)
    assert len(results[0].loop_ms) == 2
    pixels = pipeline.decode(results[-1].state.tokens)
    assert pixels.shape == (2, 16, 16, 3) and pixels.dtype.name == "uint8"
    assert (pipeline.generate([1, 2], 2, sampler, seed=5) == pixels).all()
    assert pipeline.gflops_per_sample(2, sampler) == pytest.approx(6 * pipeline.generator.module.flops(2) / 1e9)
    assert pipeline.sampler(overrides=["method=ddpm"]).method == "ddpm"


def _cli(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    import importlib

    module = importlib.import_module(f"core.{name}")
    with pytest.raises(SystemExit) as info:
        run(module.main, argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_sample_and_evaluate_a_dit_checkpoint(tiny_dit_checkpoints, tmp_path, capsys):
    path = str(tiny_dit_checkpoints["tiny-dit-elt"])
    code, out, _ = _cli("sample", ["--checkpoint", path, "--label", "star", "--loops", "2", "--num-samples", "2",
                                   "--sampler", "method=ddpm", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 0 and (tmp_path / "s.png").exists()
    from PIL import Image

    settings = json.loads(Image.open(tmp_path / "s.png").text["elt-studio"])
    assert settings["method"] == "ddpm" and settings["loops"] == 2
    code, out, _ = _cli("evaluate", ["--checkpoint", path, "--loops", "1", "3", "--samples", "6",
                                     "--json", str(tmp_path / "m.json"), "--grid", str(tmp_path / "g.png")], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "m.json").read_text())
    assert [r["loops"] for r in report["rows"]] == [1, 3] and report["sampler"]["method"] == "ddim"
    assert all(0 <= r["accuracy"] <= 1 and r["fd"] >= 0 for r in report["rows"])
    assert report["rows"][1]["gflops"] > report["rows"][0]["gflops"] and (tmp_path / "g.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps must be"),
    (["--label", "dragon"], "unknown class 'dragon'"),
    (["--sampler", "choice_temperature=3"], "unknown setting 'choice_temperature=3' for DiffusionSamplerConfig"),
    (["--sampler", "method=euler"], "method must be one of"),
    (["--adaptive", "agree:0.9"], "adaptive exit and loop schedules (--adaptive, --loops-schedule) are MaskGIT"),
    (["--loops-schedule", "1..3"], "a diffusion (DiT) checkpoint runs a fixed loop count"),
])
def test_dit_bad_input_exits_2_and_writes_nothing(argv, message, tiny_dit_checkpoints, tmp_path, capsys):
    out = tmp_path / "x.png"
    args = ["--checkpoint", str(tiny_dit_checkpoints["tiny-dit-elt"]), "--out", str(out)]
    args += argv if "--label" in argv else ["--label", "0", *argv]
    code, _, err = _cli("sample", args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and not out.exists()


def test_maskgit_option_rejected_and_mismatched_dit_tensors_exit_2(tiny_checkpoints, tiny_dit_checkpoints, tmp_path,
                                                                    capsys):
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--label", "0",
                                   "--sampler", "method=ddpm", "--out", str(tmp_path / "m.png")], capsys)
    assert code == 2 and "for SamplerConfig" in err and not (tmp_path / "m.png").exists()
    import shutil

    broken = tmp_path / "broken-dit"
    shutil.copytree(tiny_dit_checkpoints["tiny-dit-elt"], broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["experiment"]["model"]["width"] = 64
    (broken / "config.json").write_text(json.dumps(meta))
    metrics = broken / "metrics.json"
    for cli, extra in (("sample", ["--label", "0", "--out", str(tmp_path / "b.png")]),
                       ("evaluate", ["--samples", "4", "--write-metrics"])):
        code, _, err = _cli(cli, ["--checkpoint", str(broken), *extra], capsys)
        assert code == 2 and "tensors do not match config.json" in err and err.count("\n") == 1
    assert not (tmp_path / "b.png").exists() and not metrics.exists()


# -- the app's service: Generate, sweep, Compare, Checkpoints, spot check --------------------------------
def test_studio_streams_sweeps_compares_and_inspects_a_dit(tiny_checkpoints, tiny_dit_checkpoints, tmp_path):
    import shutil

    from app.service import Final, Progress, Step as AppStep, Studio, StudioError, Tile
    from app.ui import inspect_summary
    from core.evaluate import evaluate, load_classifier

    for name in ("tiny-tokenizer", "tiny-classifier", "tiny-elt"):
        shutil.copytree(tiny_checkpoints[name], tmp_path / name, ignore=shutil.ignore_patterns("train_state.*"))
    shutil.copytree(tiny_dit_checkpoints["tiny-dit-elt"], tmp_path / "tiny-dit-elt")
    # the copy names its tokenizer relative to where it was trained; the sibling copy is found instead
    pipeline = Pipeline.load(tmp_path / "tiny-dit-elt", Runtime.create("cpu", "fp32"))
    report = evaluate(pipeline, [1, 3], samples=4, seed=0, sampler=pipeline.sampler(overrides=["method=ddpm"]),
                      classifier=load_classifier(pipeline), reference_count=20)
    ckpt.write_json(tmp_path / "tiny-dit-elt" / "metrics.json", report)

    studio = Studio([tmp_path], precision="fp32", device="cpu")
    studio.engine.preview_interval = 0.0
    try:
        assert studio.listing()["tiny-dit-elt"]["default_sampler"] == {"steps": 3, "cfg_scale": 2.0, "passes": 6,
                                                                        "guide_loop": 0}
        assert studio.listing()["tiny-elt"]["default_sampler"]["guide_loop"] is None  # MaskGIT: not offered
        events = list(studio.generate("tiny-dit-elt", "star", 2, 3, 2.0, 7, 2))
        steps, final = [e for e in events if isinstance(e, AppStep)], events[-1]
        assert len(steps) == 3 and isinstance(final, Final)
        assert steps[0].strip is not None and steps[0].preview is not None  # each loop's x0 in the strip
        star = studio.checkpoints.entry("tiny-dit-elt").meta["class_names"].index("star")
        expected = pipeline.generate([star] * 2, 2, pipeline.sampler(3, 2.0), 7)
        assert (final.pixels == expected).all()  # the app's pixels are core.sample's
        assert len(final.latency["loop_ms"]) == 3 and len(final.latency["loop_ms"][0]) == 2

        tiles = [t for t in studio.sweep("tiny-dit-elt", "star", 2, 2.0, 1, 2) if isinstance(t, Tile)]
        assert [t.loops for t in tiles] == [1, 2, 3, 4, 5]
        compared = [t for t in studio.compare(["tiny-elt", "tiny-dit-elt"], "star", 2, 2.0, 1) if isinstance(t, Tile)]
        assert sorted({t.checkpoint for t in compared}) == ["tiny-dit-elt", "tiny-elt"]

        info = studio.inspect("tiny-dit-elt")
        assert info["max_loops"] == 3 and info["gflops_per_sample"][2] == pytest.approx(6 * dit_flops(TINY_DIT, 2) / 1e9)
        assert info["latent"] == {"shape": [*TINY_DIT.latent_grid, TINY_DIT.latent_channels], "patch": TINY_DIT.patch_size}
        assert "continuous latent" in inspect_summary(info) and "continuous latent" not in inspect_summary(
            studio.inspect("tiny-elt"))
        progress = []
        spot = studio.spot_check("tiny-dit-elt", 2, progress=lambda *a: progress.append(a))
        assert spot["spot"]["sampler"]["method"] == "ddpm" and [r["loops"] for r in spot["spot"]["rows"]] == [1, 3]
        # loop guidance: the app's pixels are core.sample's with --sampler guide_loop=1, from one pass per step
        *_, guided = studio.generate("tiny-dit-elt", "star", 2, 3, 2.0, 7, 1, 1)
        assert (guided.pixels == pipeline.generate([star], 2, pipeline.sampler(3, 2.0, ["guide_loop=1"]), 7)).all()
        assert (guided.pixels != pipeline.generate([star], 2, pipeline.sampler(3, 2.0), 7)).any()
        assert guided.settings["guide_loop"] == 1 and guided.settings["method"] == "ddim"
        assert not guided.latency["guidance"] and guided.latency["guide_loop"] == 1
        assert guided.gflops == pytest.approx(final.gflops / 2)
        with pytest.raises(StudioError, match="loop guidance from loop 2 needs more loops than that; got 2 loops"):
            studio.generate("tiny-dit-elt", "star", 2, 3, 2.0, 7, 1, 2)
        with pytest.raises(StudioError, match="guide loop must be"):
            studio.generate("tiny-dit-elt", "star", 2, 3, 2.0, 7, 1, -1)
        with pytest.raises(StudioError, match="tiny-elt is a MaskGIT checkpoint"):
            studio.generate("tiny-elt", "star", 2, 3, 2.0, 7, 1, 1)
        with pytest.raises(StudioError, match="steps must be"):
            studio.generate("tiny-dit-elt", "star", 2, 0, 2.0, 7)
        with pytest.raises(StudioError, match="unknown class"):
            studio.generate("tiny-dit-elt", "dragon", 2, 3, 2.0, 7)
        assert not any(isinstance(e, Progress) for e in events)
    finally:
        studio.close()


def test_bench_times_the_dit_ilsd_step_against_vanilla(monkeypatch):
    from core import bench

    def no_compiler(self):  # the compiled timing is core.bench's own test; this one stays fast
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here")
        self.layers[0].forward = fail
        return self

    monkeypatch.setattr(LoopedDiT, "compile_layers", no_compiler)
    r = bench.train_step_ratio(TINY_DIT, Runtime.create("cpu", "fp32"), 4)
    assert r["compiled_error"] == "RuntimeError: no compiler here"
    assert r["ilsd_s"] > 0 and r["vanilla_s"] > 0 and r["ratio"] == pytest.approx(r["ilsd_s"] / r["vanilla_s"])
    text = bench.train_step_section(TINY_DIT, 4, r, 1e12, "fp32")
    assert "diffusion" in text and "ILSD / vanilla" in text


def test_results_table_describes_the_diffusion_sampler_and_checks_the_claims(tmp_path, monkeypatch):
    from conftest import load_script

    table = load_script("results_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    base = {"fd_name": "FD-shapesnet", "samples": 10, "seed": 0, "precision": "bf16", "device": "cpu",
            "reference": {"count": 10, "accuracy": 1.0}, "max_loops": 4, "num_params": 1000, "trained_steps": 100,
            "min_loops": 2, "sampler": vars(DiffusionSamplerConfig(steps=24))}
    rows = lambda accs: [{"loops": L, "gflops": L, "ms_per_sample": 1.0, "accuracy": a, "fd": 5.0}  # noqa: E731
                         for L, a in enumerate(accs, 1)]
    ckpt.write_json(tmp_path / "checkpoints" / "x-elt" / "metrics.json", {**base, "rows": rows([0.3, 0.75, 0.8, 0.9])})
    ckpt.write_json(tmp_path / "checkpoints" / "x-vanilla" / "metrics.json",
                    {**base, "rows": rows([0.1, 0.2, 0.5, 0.87])})
    for name in ("x-elt", "x-vanilla"):
        ckpt.write_json(tmp_path / "checkpoints" / name / "config.json", {"trained_steps": 100})
    assert "24 DDIM steps, guidance 2.0" in table.generator_table(["x-elt", "x-vanilla"])
    claims = table.any_time_claims("x", min_loops=2)
    assert "✓ accuracy at L_min = 2 is 0.750, 0.83×" in claims
    assert "✓ ILSD within 0.03 of vanilla at L = 4, or ahead (0.900 vs 0.870)" in claims
    assert "✓ ILSD's FD-shapesnet within 1.5× vanilla's at L = 4 (5.00 vs 5.00: 1.0×)" in claims
    assert "✓ vanilla collapses at L_min = 2" in claims and "L=3: 0.500)" in claims
    ckpt.write_json(tmp_path / "checkpoints" / "x-vanilla" / "metrics.json",
                    {**base, "rows": [{**r, "fd": 2.0} for r in rows([0.1, 0.8, 0.8, 0.95])]})
    claims = table.any_time_claims("x", min_loops=2)
    assert "✗ ILSD within 0.03 of vanilla at L = 4, or ahead (0.900 vs 0.950)" in claims
    assert "✗ ILSD's FD-shapesnet within 1.5× vanilla's at L = 4 (5.00 vs 2.00: 2.5×)" in claims
    assert "✗ vanilla collapses at L_min = 2" in claims and "L=3: 0.800 not collapsed" in claims


def test_jax_runtime_matches_torch_on_a_dit(tiny_dit_checkpoints, tmp_path, capsys):
    pytest.importorskip("jax")
    import numpy as np

    from core.runtime import jax_backend as jb

    model = _trained_like(TINY_DIT)
    x, t, labels = _inputs(TINY_DIT)
    jax_model = jb.JaxDiT.from_module(model)
    with torch.no_grad():
        expected = model(x, t, labels, loops=5, return_loops="all").loop_x0
    every = np.asarray(jax_model.forward(x.numpy(), t.numpy(), labels.numpy(), 5, return_all_loops=True))
    np.testing.assert_allclose(every, expected.numpy(), atol=1e-4, rtol=1e-4)  # L = 5 > max_loops: extrapolation
    np.testing.assert_allclose(np.asarray(jax_model.forward(x.numpy(), t.numpy(), labels.numpy(), 2)),
                               expected[1].numpy(), atol=1e-4, rtol=1e-4)

    path = tiny_dit_checkpoints["tiny-dit-elt"]
    runtime = Runtime.create("cpu", "fp32")
    for sampler in (DiffusionSamplerConfig(steps=3, cfg_scale=2.0), DiffusionSamplerConfig(steps=3, guide_loop=1)):
        pixels = {backend: Pipeline.load(path, runtime, backend=backend, precision="fp32").generate([1, 4], 2,
                                                                                                  sampler, 9)
                  for backend in ("torch", "jax")}
        assert np.abs(pixels["jax"].astype(int) - pixels["torch"].astype(int)).max() <= 1, sampler
    code, _, _ = _cli("sample", ["--checkpoint", str(path), "--label", "star", "--backend", "jax",
                                 "--out", str(tmp_path / "j.png")], capsys)
    assert code == 0 and (tmp_path / "j.png").exists()


def test_compute_chart_puts_looped_and_dense_on_one_flops_axis(tiny_dit_checkpoints, tmp_path, monkeypatch, capsys):
    import shutil

    from conftest import load_script

    chart = load_script("compute_chart")
    monkeypatch.setattr(chart, "ROOT", tmp_path)
    for name in ("tiny-dit-elt", "tiny-dit-dense"):
        shutil.copytree(tiny_dit_checkpoints[name], tmp_path / "checkpoints" / name)
    xs_elt, ys_elt = chart.curve(tmp_path / "checkpoints" / "tiny-dit-elt", 2)
    xs_dense, _ = chart.curve(tmp_path / "checkpoints" / "tiny-dit-dense", 2)
    assert xs_elt == pytest.approx(xs_dense)  # equal FLOPs per step: the same compute axis
    log = [json.loads(line) for line in (tmp_path / "checkpoints" / "tiny-dit-elt" / "train_log.jsonl").open()]
    assert ys_elt[1] == pytest.approx((log[0]["teacher_mse"] + log[1]["teacher_mse"]) / 2)
    assert chart.main(["tiny-dit-elt", "tiny-dit-dense", "--out", "docs/c.html"]) == 0
    assert (tmp_path / "docs" / "c.html").stat().st_size > 1000 and "| tiny-dit-dense |" in capsys.readouterr().out
    assert chart.main(["missing"]) == 2


def test_guidance_probe_reproduces_guided_sampling_and_splits_the_fd(tiny_dit_checkpoints, tiny_checkpoints, capsys):
    from conftest import load_script
    from core.evaluate import evaluate, load_classifier

    probe = load_script("probe_guidance")
    path = str(tiny_dit_checkpoints["tiny-dit-elt"])
    pipeline = Pipeline.load(path, Runtime.create("cpu", "fp32"))
    guides = [probe.parse_guide(f"{path}@2,{path}@2/u,2"),  # classifier-free guidance at 2, term by term
              probe.parse_guide(f"{path}@2,{path}@2/u,2,0.01")]  # every step at t > 0.01: no guidance at all
    rows = list(probe.probe(guides, "unused", samples=8, seed=3))
    for row, scale in zip(rows, (2.0, 0.0)):
        report = evaluate(pipeline, [2], samples=8, seed=3, sampler=pipeline.sampler(cfg_scale=scale),
                          classifier=load_classifier(pipeline))
        assert row["accuracy"] == pytest.approx(report["rows"][0]["accuracy"])
        assert row["fd"] == pytest.approx(report["rows"][0]["fd"], rel=1e-2, abs=1e-2)
        assert row["fd_mean"] > 0 and row["fd_cov"] > 0 and row["fd_mean"] + row["fd_cov"] == row["fd"]
    assert rows[0]["guide"] == f"{path}@2,{path}@2/u,2".replace(path, "tiny-dit-elt")
    by_class = rows[0]["fd_mean_by_class"]  # the mean term split by class, plus the class mix
    assert list(by_class) == [*pipeline.class_names, "class mix"]
    assert sum(by_class.values()) == pytest.approx(rows[0]["fd_mean"], rel=1e-6)
    assert probe.main(["--samples", "4", "--by-class", f"{path}@2,{path}@1,2"]) == 0
    table = capsys.readouterr().out.split("by class")[1]
    assert "| class mix |" in table and table.count("tiny-dit-elt@2,tiny-dit-elt@1,2") == 1

    for text, message in [("a@2,b@1", "is not STRONG,WEAK,SCALE"), ("a@0,b@1,2", "is not NAME@L"),
                          ("a@2,b@1/x,2", "is not NAME@L"), ("a@2,b@1,-1", "SCALE must be >= 0"),
                          ("a@2,b@1,2,1.5", "T_MAX in (0, 1]"), ("a@2,b@1,two", "must be numbers")]:
        with pytest.raises(SystemExit) as exit:
            run(probe.main, [text])
        assert exit.value.code == 2 and message in capsys.readouterr().err
    maskgit = str(tiny_checkpoints["tiny-elt"])
    with pytest.raises(SystemExit):
        run(probe.main, ["--samples", "4", f"{maskgit}@2,{maskgit}@1,2"])
    assert "is a MaskGIT checkpoint" in capsys.readouterr().err


def test_loop_guidance_guides_the_last_loop_away_from_an_earlier_one_in_one_pass(tiny_dit_checkpoints, capsys):
    pipeline = Pipeline.load(tiny_dit_checkpoints["tiny-dit-elt"], Runtime.create("cpu", "fp32"))
    sampler = pipeline.sampler(overrides=["guide_loop=1"])
    assert sampler.passes == sampler.steps == 3  # the conditional pass only

    def latents(sampler):
        return list(pipeline.stream([1, 4], 3, sampler, 5))[-1].state.tokens

    strong, weak = pipeline.logits_fn(3), pipeline.logits_fn(1)  # two separate runs, at 3 loops and at 1

    def x0(x, labels, t):
        return weak(x, labels, t) + sampler.cfg_scale * (strong(x, labels, t) - weak(x, labels, t))

    c = pipeline.config
    *_, last = diffusion_decode(x0, torch.tensor([1, 4]), shape=pipeline.family.data_shape(c), null_label=c.null_class,
                                config=replace(sampler, guide_loop=0, cfg_scale=0.0), shift=c.schedule_shift,
                                generator=pipeline.runtime.generator(5))
    guided = latents(sampler)
    torch.testing.assert_close(guided, last.tokens, atol=1e-5, rtol=1e-5)
    assert (guided - latents(pipeline.sampler())).abs().max() > 1e-4  # not classifier-free guidance

    with pytest.raises(UsageError, match="loop guidance from loop 1 needs more loops than that; got 1 loops"):
        pipeline.generate([1], 1, sampler, 0)
    code, _, err = _cli("sample", ["--checkpoint", str(tiny_dit_checkpoints["tiny-dit-elt"]), "--label", "star",
                                   "--loops", "2", "--sampler", "guide_loop=-1", "--out", "x.png"], capsys)
    assert code == 2 and "guide_loop must be >= 0" in err
