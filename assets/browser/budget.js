// A latency budget on the visitor's own device: the deepest loop count whose predicted time fits a budget in ms,
// from the page's own timings of its first generation.  The twin of core/budget.py's planning:
//
//   predictMs   <- core.budget.LatencyModel.predict: fixed + per_step · steps + per_loop · Σ loops, times the
//                  margin (MIN_MARGIN before any run is observed: the page has no fitting history)
//   chooseLoops <- core.budget.choose on a budget: among trained loop counts (core.budget.candidates: L ≤ L_max,
//                  no extrapolation) the deepest that fits, and the same message when even the shallowest cannot
//
// Guidance batches its rows (sampling.js's guided), so the per-step and per-loop costs scale with the rows of
// a model call ("passes": 2 with classifier-free guidance, else 1) relative to the passes they were measured at.
// tests/test_browser_budget.py runs it against core.budget in Node.  No DOM, no globals.

export const MIN_MARGIN = 1.1; // core.budget.MIN_MARGIN

function number(name, value, accepted, ok) {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isFinite(n) || !ok(n)) {
    throw new Error(`${name} must be ${accepted}, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** Budgeted ms of a run of `steps` steps at `loops` loops each (core.budget.LatencyModel.predict). */
export function predictMs({ fixedMs = 0, fixedMsPerStep, msPerLoop }, steps, loops, scale = 1) {
  return (fixedMs + scale * (fixedMsPerStep * steps + msPerLoop * loops * steps)) * MIN_MARGIN;
}

/** The deepest L in entry.allowed_loops, up to entry.max_loops, whose predicted ms fits budgetMs.
 *  entry: export.json or the catalog entry ({allowed_loops, max_loops}); timing: the first generation's
 *  {msPerLoop, fixedMsPerStep, fixedMs (once per run, default 0), measuredPasses}; steps and passes: the run
 *  to plan.  Returns {loops, predictedMs, margin, predicted: {L: ms} for every candidate L}.  Bad input, or a
 *  budget below the shallowest run: one message naming what is accepted. */
export function chooseLoops(entry, { msPerLoop, fixedMsPerStep, fixedMs = 0, measuredPasses = 1 },
                            { steps, passes = 1, budgetMs }) {
  const budget = number("budget", budgetMs, "a number of ms > 0", (n) => n > 0);
  const timing = {
    msPerLoop: number("ms per loop", msPerLoop, "a number of ms > 0", (n) => n > 0),
    fixedMsPerStep: number("fixed ms per step", fixedMsPerStep, "a number of ms >= 0", (n) => n >= 0),
    fixedMs: number("fixed ms", fixedMs, "a number of ms >= 0", (n) => n >= 0),
  };
  const integer = (name, value) => number(name, value, "an integer >= 1", (n) => Number.isInteger(n) && n >= 1);
  const runSteps = integer("steps", steps);
  const scale = integer("passes", passes) / integer("measured passes", measuredPasses);
  const [low, high] = entry.allowed_loops;
  const predicted = {};
  for (let L = low; L <= Math.min(high, entry.max_loops); L++) predicted[L] = predictMs(timing, runSteps, L, scale);
  const fits = Object.keys(predicted).map(Number).filter((L) => predicted[L] <= budget);
  if (!fits.length) {
    throw new Error(`a budget of ${budget} ms is below the fastest possible run on this device: L=${low} with `
                    + `${runSteps} sampling step${runSteps === 1 ? "" : "s"} takes ≈ ${Math.round(predicted[low])} ms (this page's timings incl. `
                    + `margin); give more ms or fewer steps`);
  }
  const loops = Math.max(...fits);
  return { loops, predictedMs: predicted[loops], margin: MIN_MARGIN, predicted };
}
