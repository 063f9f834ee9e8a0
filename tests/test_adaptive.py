"""Adaptive loops (issue 21): exit criteria, per-sample early exit, loop schedules, their CLIs, the JAX
while_loop, the latency-budget planner and app endpoint, and the per-token settle view."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import budget
from core.cli import run
from core.config import ModelConfig
from core.model import LoopedTransformer
from core.pipeline import Pipeline
from core.sampling import (ExitCriterion, LoopSetting, SamplerConfig, exit_until, maskgit_decode, parse_exit,
                           parse_schedule, settled_loop)

SMALL = ModelConfig(vocab_size=32, num_classes=10, token_grid=(1, 4, 4), width=32, num_heads=2, num_layers=2,
                    max_loops=3)


def _model(seed: int = 0) -> LoopedTransformer:
    torch.manual_seed(seed)
    return LoopedTransformer(SMALL).eval()


def _inputs(batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SMALL.vocab_size, (batch, SMALL.num_tokens), generator=g)
    tokens[:, ::2] = SMALL.mask_id
    return tokens, torch.randint(0, SMALL.num_classes, (batch,), generator=g)


# -- criteria ----------------------------------------------------------------------------------------
def _onehot(argmax: list[list[int]], V: int = 3, scale: float = 10.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(torch.tensor(argmax), V).float()


def test_agreement_counts_only_still_masked_tokens():
    previous = _onehot([[0, 0, 0, 0], [0, 1, 2, 0]])
    current = _onehot([[0, 0, 1, 1], [0, 1, 2, 0]])
    masked = torch.tensor([[True, True, True, True], [False, False, False, False]])
    assert ExitCriterion("agree", 0.5).converged(previous, current, masked).tolist() == [True, True]
    assert ExitCriterion("agree", 0.51).converged(previous, current, masked).tolist() == [False, True]  # nothing masked
    only_first_two = torch.tensor([[True, True, False, False]] * 2)
    assert ExitCriterion("agree", 1.0).converged(previous, current, only_first_two).tolist() == [True, True]


def test_kl_criterion_is_the_mean_kl_over_masked_tokens():
    previous = torch.zeros(1, 2, 3)
    current = torch.tensor([[[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    p = torch.tensor([0.5, 0.25, 0.25])
    kl = float((p * (p / (1 / 3)).log()).sum())
    masked = torch.tensor([[True, True]])
    assert ExitCriterion("kl", kl / 2 + 1e-6).converged(previous, current, masked).item()
    assert not ExitCriterion("kl", kl / 2 - 1e-6).converged(previous, current, masked).item()


@pytest.mark.parametrize("text,message", [("agree:0", "0 < τ <= 1"), ("agree:1.5", "0 < τ <= 1"),
                                          ("kl:0", "ε > 0"), ("kl:-1", "ε > 0"), ("agree", "agree:TAU"),
                                          ("mean:0.5", "unknown exit criterion")])
def test_bad_criteria_are_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_exit(text)


def test_parse_exit():
    assert parse_exit(" Agree:0.95 ", 2) == ExitCriterion("agree", 0.95, 2)
    assert parse_exit("kl:0.01").name == "kl:0.01"


# -- per-sample masking ------------------------------------------------------------------------------
@torch.no_grad()
def test_each_sample_stops_on_its_own_exactly_as_if_run_alone():
    model = _model()
    tokens, labels = _inputs()
    stop_at = torch.tensor([1, 3, 2, 5])  # sample 3 never stops before the cap (4)
    calls = []

    def until(i, logits):
        calls.append(i)
        return stop_at == i

    out = model(tokens, labels, loops=4, until=until)
    assert out.loops_used.tolist() == [1, 3, 2, 4]
    assert calls == [1, 2, 3]  # nobody left after loop 3 but sample 3, which runs to the cap without a call
    for b in range(4):
        alone = model(tokens[b:b + 1], labels[b:b + 1], loops=int(out.loops_used[b])).logits
        torch.testing.assert_close(out.logits[b:b + 1], alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_exit_criterion_per_sample_equals_each_sample_alone(cfg_scale):
    model = _model(1)
    tokens, labels = _inputs(6, seed=3)
    criterion = ExitCriterion("agree", 0.9, min_loops=2)
    if cfg_scale:
        tokens = torch.cat([tokens, tokens])
        labels = torch.cat([labels, torch.full_like(labels, SMALL.null_class)])
    batch = model(tokens, labels, loops=6, until=exit_until(criterion, tokens == SMALL.mask_id, cfg_scale))
    used = batch.loops_used
    assert ((used >= 2) & (used <= 6)).all()
    rows = len(tokens) // 2 if cfg_scale else len(tokens)
    for b in range(rows):
        pick = [b, b + rows] if cfg_scale else [b]
        alone = model(tokens[pick], labels[pick], loops=6,
                      until=exit_until(criterion, tokens[pick] == SMALL.mask_id, cfg_scale))
        assert alone.loops_used.tolist() == used[pick].tolist()
        torch.testing.assert_close(batch.logits[pick], alone.logits, rtol=1e-5, atol=1e-5)
    if cfg_scale:
        assert used[:rows].tolist() == used[rows:].tolist()  # a sample's two guidance rows stop together


def test_until_cannot_be_combined_with_per_loop_outputs():
    model = _model()
    tokens, labels = _inputs()
    with pytest.raises(ValueError, match="until"):
        model(tokens, labels, loops=2, return_loops="all", until=lambda i, logits: torch.ones(4, dtype=torch.bool))


# -- schedules ---------------------------------------------------------------------------------------
def test_parse_schedule():
    assert parse_schedule("1,2,3", 3) == (1, 2, 3)
    assert parse_schedule("2..4", 5) == (2, 2, 3, 4, 4)  # round half to even at 2.5 and 3.5
    assert parse_schedule("4..1", 4) == (4, 3, 2, 1)
    assert parse_schedule("3..3", 1) == (3,)
    for text, steps, message in [("1,2", 3, "2 entries for 3"), ("1,0,2", 3, ">= 1"), ("0..4", 4, ">= 1"),
                                 ("1,x", 2, "comma-separated"), ("", 1, "comma-separated")]:
        with pytest.raises(ValueError, match=message):
            parse_schedule(text, steps)


def test_maskgit_decode_calls_one_logits_fn_per_step():
    calls = []

    def fake(L):
        def fn(tokens, labels):
            calls.append(L)
            return torch.zeros(len(tokens), 4, 5)
        return fn

    labels = torch.zeros(2, dtype=torch.long)
    states = list(maskgit_decode([fake(1), fake(2), fake(3)], labels, num_tokens=4, mask_id=5, null_label=9,
                                 config=SamplerConfig(steps=3, cfg_scale=0)))
    assert calls == [1, 2, 3] and len(states) == 3
    with pytest.raises(ValueError, match="2 logits functions for 3"):
        list(maskgit_decode([fake(1), fake(2)], labels, num_tokens=4, mask_id=5, null_label=9,
                            config=SamplerConfig(steps=3, cfg_scale=0)))


def test_schedule_and_adaptive_runs_in_the_pipeline(tiny_checkpoints):
    pipeline = Pipeline.load(tiny_checkpoints["tiny-elt"])
    sampler = SamplerConfig(steps=4, cfg_scale=2.0)
    labels = [0, 3, 5]
    fixed = pipeline.generate(labels, 3, sampler, seed=1)
    used = []
    same = pipeline.generate(labels, LoopSetting(9, (3, 3, 3, 3)), sampler, seed=1, loops_used=used)
    assert np.array_equal(fixed, same) and used == [[3, 3, 3]] * 4
    used = []
    pipeline.generate(labels, LoopSetting(3, (1, 2, 3, 2)), sampler, seed=1, loops_used=used)
    assert used == [[1] * 3, [2] * 3, [3] * 3, [2] * 3]
    # a criterion that never holds runs every sample to the cap: the same samples as fixed L
    never, used = LoopSetting(3, None, ExitCriterion("kl", 1e-30, 1)), []
    assert np.array_equal(pipeline.generate(labels, never, sampler, seed=1, loops_used=used), fixed)
    assert used == [[3] * 3] * 4
    # one that always holds stops every sample at loop 2 (loop 1 has nothing to compare with)
    used = []
    pipeline.generate(labels, LoopSetting(3, None, ExitCriterion("agree", 1e-9, 1)), sampler, seed=1, loops_used=used)
    assert used == [[2] * 3] * 4


# -- CLIs: bad input exits 2 and writes nothing --------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--adaptive", "agree:1.5"], "0 < τ <= 1"), (["--adaptive", "kl:0"], "ε > 0"),
    (["--loops-schedule", "1,2,3"], "3 entries for 4"), (["--loops-schedule", "0..3"], ">= 1"),
    (["--adaptive", "agree:0.9", "--exit-cap", "0"], "exit-cap")])
def test_sample_cli_bad_loop_settings(tiny_checkpoints, tmp_path, capsys, flags, message):
    from core.sample import main

    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--label", "0", "--steps", "4",
                   "--out", str(out), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_sample_cli_adaptive_and_schedule(tiny_checkpoints, tmp_path, capsys):
    import json

    from PIL import Image

    from core.sample import main

    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--label", "0", "--steps", "4",
                   "--loops-schedule", "1..3", "--adaptive", "agree:0.9", "--exit-min-loops", "2", "--out", str(out)])
    assert exit_info.value.code == 0
    settings = json.loads(Image.open(out).text["elt-studio"])
    assert settings["loops_schedule"] == [1, 2, 2, 3] and settings["adaptive"] == "agree:0.9"
    used = settings["loops_used"][0]
    assert used[0] == 1 and all(u <= cap for u, cap in zip(used, [1, 2, 2, 3]))


def test_evaluate_reports_loop_applications_and_rejects_bad_settings(tiny_checkpoints, tmp_path, capsys):
    import json

    from core.evaluate import main

    base = ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--samples", "4", "--steps", "3", "--loops", "1", "3"]
    out = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exit_info:
        run(main, [*base, "--loops-schedule", "1,2", "--json", str(out)])
    assert exit_info.value.code == 2 and not out.exists()
    assert "2 entries for 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(main, [*base, "--loops-schedule", "1..3", "--adaptive", "agree:0.9", "--adaptive", "kl:1e-30",
                   "--json", str(out)])
    assert exit_info.value.code == 0
    report = json.loads(out.read_text())
    assert [r["loop_applications"] for r in report["rows"]] == [3, 9]
    schedule, agree, never = report["adaptive_rows"]
    assert schedule["schedule"] == [1, 2, 3] and schedule["loop_applications"] == 6
    assert 3 * 2 <= agree["loop_applications"] <= 9 and agree["exit_cap"] == 3
    assert never["loop_applications"] == 9
    assert never["accuracy"] == report["rows"][1]["accuracy"]  # same samples and seed as fixed L_max
    assert "loop applications/sample" in capsys.readouterr().out


def test_evaluate_adds_rows_at_fewer_steps_to_metrics(tiny_checkpoints, tmp_path, capsys):
    import json

    from core.evaluate import main

    from conftest import copy_tiny

    ckpt_dir = copy_tiny(tiny_checkpoints, tmp_path) / "tiny-elt"
    metrics = ckpt_dir / "metrics.json"
    metrics.unlink(missing_ok=True)
    own = json.loads((ckpt_dir / "config.json").read_text())["experiment"]["sampler"]["steps"]
    fewer = ["--checkpoint", str(ckpt_dir), "--samples", "4", "--loops", "1", "3", "--steps", str(own - 1),
             "--write-metrics"]
    with pytest.raises(SystemExit) as exit_info:  # nothing to add to yet
        run(main, fewer)
    assert exit_info.value.code == 2 and "evaluate at its own steps first" in capsys.readouterr().err
    assert not metrics.exists()
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--checkpoint", str(ckpt_dir), "--samples", "4", "--loops", "1", "3", "--write-metrics"])
    assert exit_info.value.code == 0
    before = json.loads(metrics.read_text())
    for extra in (["--cfg-scale", "0"], ["--loops-schedule", f"1..{own - 1}"]):  # other settings: refused
        with pytest.raises(SystemExit) as exit_info:
            run(main, [*fewer, *extra])
        assert exit_info.value.code == 2
    assert json.loads(metrics.read_text()) == before
    with pytest.raises(SystemExit) as exit_info:
        run(main, fewer)
    assert exit_info.value.code == 0
    after = json.loads(metrics.read_text())
    assert after["rows"] == before["rows"] and after["sampler"]["steps"] == own
    assert [r["loops"] for r in after["rows_at_steps"][str(own - 1)]] == [1, 3]


# -- JAX while_loop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion,cfg_scale", [("agree:0.9", 0.0), ("kl:0.05", 2.0), ("agree:1", 2.0)])
def test_jax_adaptive_exit_matches_torch(criterion, cfg_scale):
    jb = pytest.importorskip("core.runtime.jax_backend")
    pytest.importorskip("jax")
    model = _model(2)
    tokens, labels = _inputs(5, seed=4)
    if cfg_scale:
        tokens = torch.cat([tokens, tokens])
        labels = torch.cat([labels, torch.full_like(labels, SMALL.null_class)])
    exit = parse_exit(criterion, 2)
    with torch.no_grad():
        ref = model(tokens, labels, loops=6, until=exit_until(exit, tokens == SMALL.mask_id, cfg_scale))
    params = jb.params_from_state(model.state_dict())
    logits, used = jb.forward_until(params, SMALL, tokens.numpy(), labels.numpy(), (tokens == SMALL.mask_id).numpy(),
                                    6, exit, cfg_scale)
    assert np.asarray(used).tolist() == ref.loops_used.tolist()
    np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), rtol=1e-4, atol=1e-4)


def test_jax_pipeline_adaptive_gives_torch_tokens(tiny_checkpoints):
    pytest.importorskip("jax")
    from core.runtime import Runtime

    setting = LoopSetting(3, (3, 2, 3), ExitCriterion("agree", 0.9, 2))
    sampler = SamplerConfig(steps=3, cfg_scale=2.0)
    torch_p = Pipeline.load(tiny_checkpoints["tiny-elt"], Runtime.create("cpu", "fp32"))
    jax_p = Pipeline.load(tiny_checkpoints["tiny-elt"], Runtime.create("cpu", "fp32"), backend="jax", precision="fp32")
    used_t, used_j = [], []
    a = torch_p.generate([1, 2], setting, sampler, seed=3, loops_used=used_t)
    b = jax_p.generate([1, 2], setting, sampler, seed=3, loops_used=used_j)
    assert used_t == used_j and np.array_equal(a, b)


# -- settle view -------------------------------------------------------------------------------------
def test_settled_loop():
    predictions = torch.tensor([[[1, 1, 2, 5]], [[1, 2, 2, 6]], [[1, 2, 3, 7]]])  # (L=3, B=1, T=4)
    assert settled_loop(predictions).tolist() == [[1, 2, 3, 3]]
    flip_back = torch.tensor([[[4]], [[5]], [[4]]])  # equal to the last at loop 1, but changed in between
    assert settled_loop(flip_back).tolist() == [[3]]


def test_generate_reports_the_settle_map_and_charts_it(tiny_checkpoints):
    from app import charts
    from app.service import Final, Studio

    studio = Studio([tiny_checkpoints["tiny-elt"].parent])
    try:
        final = [e for e in studio.generate("tiny-elt", "0", 3, 4, 2.0, 0) if isinstance(e, Final)][0]
    finally:
        studio.close()
    settle = final.settle
    assert settle.shape == (4, 64)
    assert np.isnan(settle[0]).sum() == 0  # everything masked at the first step
    known = ~np.isnan(settle)
    assert known.sum(1).tolist() == sorted(known.sum(1).tolist(), reverse=True)  # fewer masked tokens each step
    assert set(np.unique(settle[known])) <= {1.0, 2.0, 3.0}
    fig = charts.settle_figure(settle, final.token_grid, 3)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 4 and np.asarray(heatmaps[0].z).shape == (8, 8)


# -- latency budget ----------------------------------------------------------------------------------
METRICS = {"sampler": {"steps": 4}, "rows": [
    {"loops": 1, "accuracy": 0.5}, {"loops": 2, "accuracy": 0.8}, {"loops": 3, "accuracy": 0.9},
    {"loops": 4, "accuracy": 0.95}],  # loops 4 > max_loops 3: extrapolation, never chosen
    "adaptive_rows": [{"schedule": [1, 2, 3, 3], "accuracy": 0.88}, {"adaptive": "agree:0.9", "accuracy": 0.99}]}


def _latency() -> budget.LatencyModel:
    return budget.LatencyModel(fixed_ms=10, per_step_ms=1, per_loop_ms=2, fitted_at="now", runs=1, ratios=[1.0])


def test_budget_choice():
    model = _latency()  # margin 1.1: L=3 at 4 steps = (10 + 4 + 24) * 1.1 = 41.8 ms
    plan = budget.choose(model, METRICS, 3, budget_ms=42)
    assert (plan.loops, plan.steps, plan.schedule, plan.accuracy) == (3, 4, None, 0.9)
    plan = budget.choose(model, METRICS, 3, budget_ms=38)  # schedule: (10 + 4 + 18) * 1.1 = 35.2
    assert plan.schedule == (1, 2, 3, 3) and plan.predicted_ms <= 38
    plan = budget.choose(model, METRICS, 3, budget_ms=20)  # nothing at 4 steps: fewer steps, best L that fits
    assert plan.steps < 4 and plan.accuracy is None and plan.predicted_ms <= 20
    assert budget.choose(model, METRICS, 3, target_accuracy=0.85).schedule == (1, 2, 3, 3)
    with pytest.raises(budget.BudgetError, match="fastest possible run.*L=1 with 1 sampling step takes ≈ 14 ms"):
        budget.choose(model, METRICS, 3, budget_ms=5)
    with pytest.raises(budget.BudgetError, match="best is 0.900"):
        budget.choose(model, METRICS, 3, target_accuracy=0.97)


def test_budget_choice_uses_runs_measured_at_fewer_steps():
    model = _latency()
    metrics = {**METRICS, "rows_at_steps": {"2": [{"loops": 1, "accuracy": 0.3}, {"loops": 3, "accuracy": 0.85},
                                                  {"loops": 4, "accuracy": 0.99}]}}  # L=4: extrapolation
    plan = budget.choose(model, metrics, 3, budget_ms=30)  # L=3 at 2 steps: (10 + 2 + 12) * 1.1 = 26.4 ms
    assert (plan.loops, plan.steps, plan.schedule, plan.accuracy) == (3, 2, None, 0.85)
    assert plan.step_loops == [3, 3]
    assert budget.choose(_latency(), METRICS, 3, budget_ms=30).accuracy == 0.5  # without them: L=1 at 4 steps
    assert budget.choose(model, metrics, 3, target_accuracy=0.8).steps == 2  # the fastest reaching it


def test_latency_model_fit_and_margin():
    truth = lambda loops, steps: 5 + 2 * steps + 3 * loops * steps  # noqa: E731
    model = budget.fit(truth, max_loops=4, repeats=1)
    assert model.fixed_ms == pytest.approx(5, abs=1e-6) and model.per_loop_ms == pytest.approx(3)
    assert model.margin == budget.MIN_MARGIN
    model.observe(4, [2] * 4, 2 * model.fitted(4, [2] * 4))  # served twice as slow as fitted
    assert model.scale == pytest.approx(2.0) and model.margin == pytest.approx(2 * budget.MIN_MARGIN)
    for i in range(20):  # noisy around 2×: the margin covers a high percentile of the noise
        model.observe(4, [2] * 4, (2.0 + (0.6 if i % 10 == 0 else 0.0)) * model.fitted(4, [2] * 4))
    noise = np.percentile([1.0] * 23 + [1.3] * 2, budget.PERCENTILE)  # 4 fitting runs, 19 observed at 2×, 2 at 2.6×
    assert model.scale == pytest.approx(2.0) and model.margin == pytest.approx(2.0 * noise) and noise > 1.2
    assert model.describe()["scale"] == 2.0 and model.describe()["observed_runs"] == 21


@pytest.fixture(scope="module")
def budget_root(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny checkpoints with a small metrics.json for tiny-elt (a schedule row included)."""
    from core import checkpoint as ckpt
    from core.evaluate import evaluate, load_classifier

    root = tmp_path_factory.mktemp("budget")
    for name in ("tiny-elt", "tiny-tokenizer", "tiny-classifier"):
        shutil.copytree(tiny_checkpoints[name], root / name, ignore=shutil.ignore_patterns("train_state.*"))
    pipeline = Pipeline.load(root / "tiny-elt")
    report = evaluate(pipeline, [1, 2, 3], samples=4, seed=0, sampler=SamplerConfig(steps=3),
                      classifier=load_classifier(pipeline), reference_count=20,
                      settings=[LoopSetting(3, (1, 2, 3))])
    ckpt.write_json(root / "tiny-elt" / "metrics.json", report)
    return root


def test_budget_endpoint_through_the_api(budget_root):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from conftest import launched_app, load_script

    with launched_app([budget_root]) as app:
        client = Client(app["url"], verbose=False)
        results, summary, files, figure, details, seed = client.predict(
            "tiny-elt", "star", "budget (ms)", 60_000, None, 3, False, api_name="/generate_budget")
        assert details["met"] is True and details["achieved_ms"] <= 60_000
        chosen = details["chosen"]
        assert chosen["steps"] == 3 and chosen["measured_accuracy"] is not None
        assert "ms achieved" in summary and "latency model" in summary and "fitted" in summary
        assert details["latency_model"]["fitting_runs"] > 0 and len(results) == 1 and files
        assert "chosen" in str(figure)
        _, summary, _, _, details, _ = client.predict(
            "tiny-elt", "star", "fastest reaching accuracy", None, 0.0, 3, False, api_name="/generate_budget")
        assert details["chosen"]["loops"] == 1 and details["chosen"]["schedule"] is None  # the fastest measured run
        assert details["met"] is None and "reaching accuracy" in summary
        bench = load_script("bench_budget")  # the benchmark script's request loop, two requests
        rows = bench.bench(app["url"], "tiny-elt", [60_000], 2, log=lambda msg: None)
        assert rows[0]["met"] == 1.0 and sum(rows[0]["chosen"].values()) == 2
        assert "| 60000 | 100 % |" in bench.markdown("tiny-elt", rows, None)
        with pytest.raises(AppError, match="below the fastest possible run"):
            client.predict("tiny-elt", "star", "budget (ms)", 0.001, None, 3, False, api_name="/generate_budget")
        with pytest.raises(AppError, match="latency budget"):
            client.predict("tiny-elt", "star", "budget (ms)", -5, None, 3, False, api_name="/generate_budget")


# -- study and bench -----------------------------------------------------------------------------------
def test_adaptive_study_writes_table_chart_and_json(tiny_checkpoints, tmp_path):
    import json

    from conftest import load_script

    study = load_script("adaptive_study")
    with pytest.raises(SystemExit) as exit_info:
        run(study.main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--samples", "4", "--batch-size", "4",
                         "--schedules", "1..3", "--criteria", "agree:0.9", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "adaptive.json").read_text())
    assert [r["loops"] for r in report["rows"]] == [1, 2, 3] and len(report["adaptive_rows"]) == 2
    best = report["best"]
    assert (best["selection_seed"], best["seed"], report["selection"]["seed"], report["seed"]) == (1, 0, 1, 0)
    chosen = {study.name_of(r): r for r in report["rows"] + report["adaptive_rows"]}
    assert best["accuracy"] == chosen[best["setting"]]["accuracy"]  # judged on the report seed
    assert best["l_max_loop_applications"] == 3 * report["sampler"]["steps"]
    assert best["saving"] == pytest.approx(1 - best["loop_applications"] / best["l_max_loop_applications"], abs=1e-3)
    table = (tmp_path / "ADAPTIVE.md").read_text()
    assert "| schedule |" in table and "| adaptive |" in table and "Best setting" in table
    assert "ms / sample" not in table and "chosen on seed 1" in table
    assert (tmp_path / "adaptive-loops.png").read_bytes()[:4] == b"\x89PNG"
    written = (tmp_path / "adaptive.json").stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:  # a bad criterion: exit 2, nothing rewritten
        run(study.main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--criteria", "agree:2",
                         "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and (tmp_path / "adaptive.json").stat().st_mtime_ns == written
    with pytest.raises(SystemExit) as exit_info:  # choosing and judging on one seed: refused
        run(study.main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--seed", "3", "--select-seed", "3",
                         "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and (tmp_path / "adaptive.json").stat().st_mtime_ns == written


def test_bench_adaptive_timing(tiny_checkpoints):
    from core.bench import adaptive_timing

    pipeline = Pipeline.load(tiny_checkpoints["tiny-elt"])
    r = adaptive_timing(pipeline, LoopSetting(3, (1, 2, 3)), SamplerConfig(steps=3), batch=2, rounds=1)
    assert r["fixed_loops"] == 9 and r["setting_loops"] == 6
    assert r["ratio"] == pytest.approx(r["setting_ms"] / r["fixed_ms"]) and r["ratio"] > 0


def test_budget_point_marks_the_run_at_its_own_steps():
    from app.service import budget_point

    def row(loops: int, gflops: float, acc: float) -> dict:
        return {"loops": loops, "gflops": gflops, "ms_per_sample": 1.0, "accuracy": acc}

    info = {"metrics": {"sampler": {"steps": 4}, "rows": [row(2, 4.0, 0.8)],
                        "rows_at_steps": {"2": [row(2, 2.0, 0.6)]}}}
    at = lambda steps, acc: budget_point(info, {"plan": budget.Plan(2, steps, None, 1.0, acc, "")})  # noqa: E731
    assert (at(4, 0.8)["gflops"], at(2, 0.6)["gflops"], at(2, 0.6)["accuracy"]) == (4.0, 2.0, 0.6)
    assert at(3, None) is None  # fewer steps, not measured
