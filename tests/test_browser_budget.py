"""The page's latency budget (assets/browser/budget.js) against its Python twin core.budget, in Node: the same
timings, steps, guidance passes and budget give the same L and predicted ms as LatencyModel.predict and choose (on
a metrics table whose accuracy grows with L, so choose's best-measured pick is the deepest trained L that fits),
and bad input gets one message naming the accepted values."""

from __future__ import annotations

import pytest

from core import budget
from core.config import allowed_loops
from test_browser_sampler import NODE, run_node

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

HARNESS = """
const { chooseLoops, MIN_MARGIN } = await import(modules + "budget.js");
const attempt = (f) => { try { return f(); } catch (error) { return { error: error.message }; } };
console.log(JSON.stringify({ margin: MIN_MARGIN,
  cases: input.cases.map(({ entry, timing, run }) => attempt(() => chooseLoops(entry, timing, run))) }));
"""

# (L_max, msPerLoop, fixedMsPerStep, fixedMs, measured passes, steps, passes, budget ms)
CASES = [(4, 7.5, 3.0, 20.0, 1, 16, 1, 1000.0), (4, 7.5, 3.0, 20.0, 1, 16, 2, 1000.0),
         (4, 7.5, 3.0, 20.0, 2, 16, 1, 400.0), (4, 7.5, 3.0, 0.0, 1, 16, 1, 10_000.0),
         (3, 30.0, 12.0, 50.0, 2, 24, 2, 2500.0), (1, 5.0, 1.0, 0.0, 1, 8, 1, 60.0),
         (4, 7.5, 3.0, 20.0, 1, 16, 1, 250.0), (4, 7.5, 3.0, 20.0, 1, 16, 1, 100.0),
         (4, 2.0, 0.5, 0.0, 1, 1, 1, 2.0)]
BAD = [("budgetMs", 0), ("budgetMs", -5), ("budgetMs", "fast"), ("budgetMs", None), ("budgetMs", ""),
       ("msPerLoop", 0), ("fixedMsPerStep", -1), ("steps", 2.5), ("passes", 0)]


def python_plan(max_loops, per_loop, per_step, fixed, measured, steps, passes, budget_ms):
    scale = passes / measured
    model = budget.LatencyModel(fixed, per_step * scale, per_loop * scale, "", 0)
    low, high = allowed_loops(max_loops)
    metrics = {"sampler": {"steps": steps},
               "rows": [{"loops": L, "accuracy": L / 100} for L in range(low, high + 1)]}
    return model, budget.choose(model, metrics, max_loops, budget_ms=budget_ms)


def case(max_loops, per_loop, per_step, fixed, measured, steps, passes, budget_ms):
    return {"entry": {"allowed_loops": list(allowed_loops(max_loops)), "max_loops": max_loops},
            "timing": {"msPerLoop": per_loop, "fixedMsPerStep": per_step, "fixedMs": fixed, "measuredPasses": measured},
            "run": {"steps": steps, "passes": passes, "budgetMs": budget_ms}}


def test_budget_js_matches_core_budget(tmp_path):
    bad = []
    for key, value in BAD:
        c = case(*CASES[0])
        c["timing" if key in ("msPerLoop", "fixedMsPerStep") else "run"][key] = value
        bad.append(c)
    got = run_node(tmp_path, HARNESS, {"cases": [case(*c) for c in CASES] + bad})
    assert got["margin"] == budget.MIN_MARGIN

    deepest = set()
    for c, js in zip(CASES, got["cases"]):
        max_loops, steps = c[0], c[5]
        try:
            model, plan = python_plan(*c)
        except budget.BudgetError as refused:  # the same refusal when nothing can fit (1 step: the fastest run)
            assert js["error"].replace("device", "machine").startswith(str(refused).split(" (")[0]), (c, js)
            continue
        if plan.steps < steps or plan.reason == "only the fastest run fits":  # Python then plans fewer steps
            assert js["error"].startswith(f"a budget of {c[7]:g} ms is below the fastest possible run on this "
                                          f"device: L=1 with {steps} sampling step"), (c, js)
            continue
        assert js["loops"] == plan.loops and js["predictedMs"] == pytest.approx(plan.predicted_ms, rel=1e-12), c
        assert js["predictedMs"] <= c[7] and js["margin"] == model.margin
        for L, ms in js["predicted"].items():  # every trained L priced as core.budget prices it; none beyond L_max
            assert ms == pytest.approx(model.predict(steps, [int(L)] * steps), rel=1e-12)
        assert max(map(int, js["predicted"])) == max_loops
        assert all(ms > c[7] for L, ms in js["predicted"].items() if int(L) > js["loops"])  # the deepest that fits
        deepest.add(js["loops"])
    assert len(deepest) >= 3  # the cases pick different L, shallow to L_max

    messages = [js["error"] for js in got["cases"][len(CASES):]]
    assert messages == ['budget must be a number of ms > 0, got 0', 'budget must be a number of ms > 0, got -5',
                        'budget must be a number of ms > 0, got "fast"', 'budget must be a number of ms > 0, got null',
                        'budget must be a number of ms > 0, got ""', 'ms per loop must be a number of ms > 0, got 0',
                        'fixed ms per step must be a number of ms >= 0, got -1',
                        'steps must be an integer >= 1, got 2.5', 'passes must be an integer >= 1, got 0']
