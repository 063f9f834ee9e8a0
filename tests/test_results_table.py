"""scripts/results_table.py: one sampler per table, classes at each model's L_max."""

from __future__ import annotations

import pytest

from core import checkpoint as ckpt
from core.sampling import SamplerConfig

from conftest import load_script


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
