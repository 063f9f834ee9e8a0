"""Latency budgets: a latency model fitted on this machine, and the choice of (L, steps, schedule) that
gives the best measured quality within a budget in ms (or the fastest run reaching an accuracy).

The model is linear in what a run does: ms ≈ fixed + per_step · steps + per_loop · Σ loops (one
sample, guidance as the checkpoint samples).  Predictions are multiplied by a margin with two parts:
a *scale*, the median measured / fitted of the last runs served (`observe`) — a server answering
requests runs slower than the same calls timed in isolation, and a shared machine drifts — and the
*noise* around it, a high percentile of measured / (fitted · scale), so that most requests meet
their budget rather than half of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

# The margin covers this percentile of measured / fitted time.  Aimed above the 90 % of requests a budget
# should meet, because the served time drifts between the runs the margin is taken from: at p95 one of
# three budgets met 86-88 % in two of three benchmark runs (docs/EXPERIMENTS.md, "Latency budget").
PERCENTILE = 98
MIN_MARGIN = 1.1  # the least noise allowance
HISTORY = 50  # observed runs the margin keeps
SCALE_WINDOW = 9  # the scale is the median ratio of this many latest observed runs


class BudgetError(ValueError):
    """A budget or target no run can meet; the message says what can."""


@dataclass
class LatencyModel:
    fixed_ms: float
    per_step_ms: float
    per_loop_ms: float
    fitted_at: str
    runs: int
    ratios: list[float] = field(default_factory=list)  # measured / fitted, fitting runs then observed ones

    @property
    def scale(self) -> float:
        """How much slower runs are served now than the fit predicts: the median measured / fitted of the
        latest observed runs (1 before any), so a systematic change moves predictions at once."""
        recent = self.ratios[self.runs:][-SCALE_WINDOW:]
        return float(np.median(recent)) if recent else 1.0

    @property
    def margin(self) -> float:
        """The scale times the noise allowance: PERCENTILE of measured / (fitted · scale) over the fitting
        runs (scale 1) and the observed ones, at least MIN_MARGIN."""
        scale = self.scale
        relative = self.ratios[:self.runs] + [r / scale for r in self.ratios[self.runs:]]
        noise = float(np.percentile(relative, PERCENTILE)) if relative else 1.0
        return scale * max(MIN_MARGIN, noise)

    def fitted(self, steps: int, step_loops: Sequence[int]) -> float:
        return self.fixed_ms + self.per_step_ms * steps + self.per_loop_ms * float(sum(step_loops))

    def predict(self, steps: int, step_loops: Sequence[int]) -> float:
        """Budgeted ms of a run: the fitted time times the margin."""
        return self.fitted(steps, step_loops) * self.margin

    def observe(self, steps: int, step_loops: Sequence[int], measured_ms: float) -> None:
        """Feed back a real run, so the margin follows the machine's current load."""
        fitting = self.ratios[:self.runs]
        observed = self.ratios[self.runs:] + [measured_ms / max(self.fitted(steps, step_loops), 1e-6)]
        self.ratios = fitting + observed[-HISTORY:]

    def describe(self) -> dict[str, Any]:
        return {"fixed_ms": round(self.fixed_ms, 2), "per_step_ms": round(self.per_step_ms, 3),
                "per_loop_ms": round(self.per_loop_ms, 3), "scale": round(self.scale, 3),
                "margin": round(self.margin, 3),
                "percentile": PERCENTILE, "fitted_at": self.fitted_at, "fitting_runs": self.runs,
                "observed_runs": len(self.ratios) - self.runs}


def fit(measure: Callable[[int, int], float], max_loops: int, steps: Sequence[int] = (2, 8),
        repeats: int = 3) -> LatencyModel:
    """Fit from measure(loops, steps) -> ms over L in {1, max_loops} × steps, `repeats` times each
    (after one untimed warm-up run of each)."""
    configs = [(L, s) for L in sorted({1, max_loops}) for s in sorted(set(steps))]
    for loops, s in configs:
        measure(loops, s)
    plan = configs * repeats
    X, y = [], []
    for loops, s in plan:
        X.append([1.0, s, loops * s])
        y.append(measure(loops, s))
    coef, *_ = np.linalg.lstsq(np.asarray(X), np.asarray(y), rcond=None)
    coef = np.maximum(coef, [0.0, 0.0, 1e-3])  # no negative costs from noise
    model = LatencyModel(*map(float, coef), datetime.now(timezone.utc).isoformat(timespec="seconds"), len(plan))
    model.ratios = [m / max(model.fitted(s, [L] * s), 1e-6) for (L, s), m in zip(plan, y)]
    return model


def timer(run: Callable[[int, int], Any]) -> Callable[[int, int], float]:
    """measure(loops, steps) -> ms of run(loops, steps)."""
    def measure(loops: int, steps: int) -> float:
        t0 = time.perf_counter()
        run(loops, steps)
        return 1000 * (time.perf_counter() - t0)
    return measure


@dataclass(frozen=True)
class Plan:
    loops: int  # the fixed L, or the largest L of the schedule
    steps: int
    schedule: tuple[int, ...] | None
    predicted_ms: float  # with the margin
    accuracy: float | None  # measured in metrics.json; None when not measured at these steps
    reason: str

    @property
    def step_loops(self) -> list[int]:
        return list(self.schedule) if self.schedule else [self.loops] * self.steps

    @property
    def label(self) -> str:
        what = f"schedule {','.join(map(str, self.schedule))}" if self.schedule else f"L={self.loops}"
        return f"{what}, {self.steps} steps"


def rows_at(metrics: dict[str, Any], steps: int) -> list[dict[str, Any]]:
    """metrics.json's fixed-L rows measured at `steps` sampling steps: `rows` at its sampler's steps,
    `rows_at_steps` (`core.evaluate --steps S --write-metrics`) at others; [] where none were measured."""
    if steps == metrics.get("sampler", {}).get("steps"):
        return metrics.get("rows", [])
    return metrics.get("rows_at_steps", {}).get(str(steps), [])


def candidates(metrics: dict[str, Any], max_loops: int) -> list[tuple[int, int, tuple[int, ...] | None, float]]:
    """(L, steps, schedule, accuracy) measured in metrics.json: trained loop counts (no extrapolation) at
    every step count measured (`rows_at`), and fixed schedules (adaptive exit has no fixed cost, so it is
    not budgeted)."""
    measured_steps = [metrics["sampler"]["steps"], *map(int, metrics.get("rows_at_steps", {}))]
    out = [(r["loops"], s, None, r["accuracy"]) for s in measured_steps for r in rows_at(metrics, s)
           if r["loops"] <= max_loops]
    out += [(max(r["schedule"]), len(r["schedule"]), tuple(r["schedule"]), r["accuracy"])
            for r in metrics.get("adaptive_rows", []) if "schedule" in r and "adaptive" not in r]
    return out


def choose(model: LatencyModel, metrics: dict[str, Any], max_loops: int, *, budget_ms: float | None = None,
           target_accuracy: float | None = None) -> Plan:
    """Best measured accuracy within budget_ms, or the fastest run reaching target_accuracy.

    Runs measured in metrics.json (at its steps, and at those of rows_at_steps) come first; when none
    fits the budget, fewer steps are tried (largest first, the best-measured L that fits).  BudgetError
    when nothing can."""
    if (budget_ms is None) == (target_accuracy is None):
        raise BudgetError("give either a budget in ms or a target accuracy")
    if "rows" not in metrics:
        raise BudgetError("this checkpoint has no metrics.json to plan from (run python -m core.evaluate "
                          "--write-metrics)")
    steps = metrics["sampler"]["steps"]
    measured = [Plan(L, s, sched, model.predict(s, list(sched) if sched else [L] * s), acc,
                     "best measured accuracy within the budget" if budget_ms is not None else
                     "fastest measured run reaching the target")
                for L, s, sched, acc in candidates(metrics, max_loops)]
    if target_accuracy is not None:
        reach = [p for p in measured if p.accuracy >= target_accuracy]
        if not reach:
            best = max(measured, key=lambda p: p.accuracy)
            raise BudgetError(f"no measured setting reaches accuracy {target_accuracy:g}; the best is "
                              f"{best.accuracy:.3f} ({best.label})")
        return min(reach, key=lambda p: (p.predicted_ms, -p.accuracy))
    fastest = model.predict(1, [1])
    if budget_ms < fastest:
        raise BudgetError(f"a budget of {budget_ms:g} ms is below the fastest possible run on this machine: "
                          f"L=1 with 1 sampling step takes ≈ {fastest:.0f} ms (latency model incl. margin)")
    fits = [p for p in measured if p.predicted_ms <= budget_ms]
    if fits:
        return max(fits, key=lambda p: (p.accuracy, -p.predicted_ms))
    by_accuracy = sorted({(acc, L) for L, s, sched, acc in candidates(metrics, max_loops)
                          if sched is None and s == steps}, reverse=True)
    for s in range(steps - 1, 0, -1):
        for acc, L in by_accuracy:
            ms = model.predict(s, [L] * s)
            if ms <= budget_ms:
                return Plan(L, s, None, ms, None, f"no run at {steps} steps fits: fewer steps, the best-measured L "
                                                  "that fits (quality not measured at these steps)")
    return Plan(1, 1, None, fastest, None, "only the fastest run fits")
