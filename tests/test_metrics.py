"""Metrics (core.metrics): per-class accuracy, Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.metrics import frechet_distance, frechet_terms, per_class_accuracy


def test_per_class_accuracy_counts_each_class_and_skips_absent_ones():
    predicted, labels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2])
    assert per_class_accuracy(predicted, labels, 4) == [1.0, 1.0, pytest.approx(1 / 3, abs=1e-4), None]


def test_frechet_distance_is_where_the_sets_sit_plus_how_they_spread():
    a = np.random.default_rng(0).normal(size=(4000, 4))
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    mean_term, cov_term = frechet_terms(a, a + shift)  # same spread, moved
    assert mean_term == pytest.approx(float(shift @ shift)) and cov_term == pytest.approx(0, abs=1e-9)
    mean_term, cov_term = frechet_terms(a - a.mean(0), 2 * (a - a.mean(0)))  # same place, twice the spread
    assert mean_term == pytest.approx(0, abs=1e-12) and cov_term == pytest.approx(4.0, rel=0.05)  # Tr(Σ) for Σ ≈ I
    assert frechet_distance(a, 2 * a + shift) == pytest.approx(sum(frechet_terms(a, 2 * a + shift)))
