// Loop counts, loop previews and class lookup of the page, each the twin of one Python rule:
//
//   checkLoops   <- core.config.allowed_loops (export.json's "allowed_loops": the page reads the range, it
//                   never computes it) with the message of the app's loop check
//   loopPreview  <- core.family's loop_preview: what the in-step strip decodes for loop i (MaskGIT: loop i's
//                   prediction where the step started masked, the known tokens kept; DiT: loop i's x̂0)
//   resolveClass <- core.cli.resolve_class (a name, case-insensitive, or an index)
//
// tests/test_browser_sampler.py runs each against its twin.  No DOM, no globals.

/** An integer loop count inside entry.allowed_loops (export.json, or the catalog entry: the same field). */
export function checkLoops(value, entry, checkpoint) {
  const [low, high] = entry.allowed_loops;
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (!Number.isInteger(number) || number < low || number > high) {
    throw new Error(`loops must be an integer in ${low}..${high} for ${checkpoint} (L_max = ${entry.max_loops}; above `
                    + `it is extrapolation), got ${JSON.stringify(value)}`);
  }
  return number;
}

/** The loop range [low, high] of an entry, for a slider. */
export function loopRange(entry) {
  return [...entry.allowed_loops];
}

/** Each loop's data for the strip: loopOutputs (one per loop: Int32Array token ids or Float32Array x̂0),
 *  before (MaskGIT: the tokens the step started from). */
export function loopPreview(family, loopOutputs, before, maskId) {
  if (family === "diffusion") return loopOutputs;
  if (family !== "maskgit") throw new Error(`no loop preview for the family ${JSON.stringify(family)}`);
  if (!before) return loopOutputs;
  return loopOutputs.map((tokens) => tokens.map((token, t) => (before[t] === maskId ? token : before[t])));
}

/** Class index from a name (case-insensitive) or an index (a number or its digits); one message naming the
 *  accepted values otherwise. */
export function resolveClass(classes, value, checkpoint) {
  let index = -1;
  if (typeof value === "string") {
    const key = value.trim().toLowerCase();
    index = classes.findIndex((c) => c.toLowerCase() === key);
    const number = /^-?\d+$/.test(key) ? Number(key) : -1;
    if (index < 0 && number >= 0 && number < classes.length) index = number + 0; // "-0" is index 0, as in Python
  } else if (Number.isInteger(value) && value >= 0 && value < classes.length) {
    index = value;
  }
  if (index < 0) {
    throw new Error(`unknown class ${JSON.stringify(value)} for ${checkpoint}; accepted: ${classes.join(", ")} `
                    + `(or an index 0..${classes.length - 1})`);
  }
  return index;
}
