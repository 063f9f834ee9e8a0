// The MaskGIT sampler of the page: one row (one sample), mirroring the MaskGIT half of core/sampling.py step
// for step (its shared head, the generator and guidance, is sampling.js).
//
//   maskgitInit     <- core.sampling.maskgit_init
//   maskgitStep     <- core.sampling.maskgit_step (schedule, token temperature, inverse-CDF sampling,
//                      confidence ranking with annealed Gumbel noise; the last step unmasks everything)
//   maskgitDecode   <- core.sampling.maskgit_decode (a thin loop over the two, guidance included)
//   numMaskedAfter  <- core.sampling.num_masked_after / mask_schedule (cosine)
//   drawsFor        <- core.sampling.draws_for (one row's token and choice draws of a step)
//   argmax          <- torch.argmax(-1) of the loop strip (core.sampling.maskgit_decode's loop_predictions)
//
// Arithmetic is rounded to float32 where torch computes in float32 (Math.fround), so the ranking and the
// inverse CDF see the numbers torch sees; tests/test_browser_sampler.py feeds this module and the Python
// sampler the same logits and draws and asserts identical tokens at every step.  No DOM, no globals: Node
// imports it as well as the page.

import { guided } from "./sampling.js";

const f32 = Math.fround;
const TINY = f32(1e-20); // the clamps of maskgit_step
const MIN_TEMPERATURE = f32(1e-6);

/** Tokens left masked after 0-based step `step` of `steps` (0 after the last step). */
export function numMaskedAfter(step, steps, numTokens) {
  return Math.floor(Math.cos(((step + 1) / steps) * Math.PI / 2) * numTokens);
}

/** A row ready for its first step; config: {steps, cfg_scale, choice_temperature, temperature_base,
 *  temperature_bias} (a SamplerConfig as export.json's "sampler"); init: optional Int32Array of starting
 *  tokens, maskId where unknown. */
export function maskgitInit({ numTokens, maskId, config, init = null }) {
  const tokens = init ? Int32Array.from(init) : new Int32Array(numTokens).fill(maskId);
  if (tokens.length !== numTokens) throw new Error(`init must have ${numTokens} tokens, got ${tokens.length}`);
  let toDecode = 0;
  for (const t of tokens) toDecode += t === maskId;
  return {
    tokens, step: 0, steps: config.steps, toDecode, maskId, cfgScale: f32(config.cfg_scale),
    temperatureBase: f32(config.temperature_base), temperatureBias: f32(config.temperature_bias),
    choiceTemperature: f32(config.choice_temperature),
  };
}

/** One step of the row: logits (T, V) Float32Array with guidance applied; draws [tokenDraws, choiceDraws],
 *  each T uniforms in [0, 1).  Returns {row: the row after the step, sampled: this step's full prediction
 *  (Int32Array T), numMasked: tokens left masked}. */
export function maskgitStep(row, logits, vocab, draws) {
  if (row.step >= row.steps) throw new Error("maskgitStep on a row that has finished all its steps");
  const T = row.tokens.length, V = vocab;
  if (logits.length !== T * V) throw new Error(`logits must be ${T}×${V}, got ${logits.length} values`);
  const [tokenDraws, choiceDraws] = draws;
  const progress = f32((row.step + 1) / row.steps);
  const remaining = f32(1 - progress);
  const temperature = Math.max(f32(row.temperatureBase + f32(row.temperatureBias * remaining)), MIN_TEMPERATURE);
  const choiceT = f32(row.choiceTemperature * remaining);

  const sampled = new Int32Array(T);
  const scores = new Float64Array(T);
  const probs = new Float32Array(V), cdf = new Float32Array(V);
  let unknownCount = 0;
  for (let t = 0; t < T; t++) {
    const unknown = row.tokens[t] === row.maskId;
    unknownCount += unknown;
    // softmax(logits / temperature) in float32, its cumulative sum (torch accumulates in double)
    let max = -Infinity;
    for (let v = 0; v < V; v++) {
      probs[v] = f32(logits[t * V + v] / temperature);
      if (probs[v] > max) max = probs[v];
    }
    let sum = 0;
    for (let v = 0; v < V; v++) {
      probs[v] = f32(Math.exp(probs[v] - max));
      sum += probs[v];
    }
    sum = f32(sum);
    let acc = 0;
    for (let v = 0; v < V; v++) {
      probs[v] = f32(probs[v] / sum);
      acc += probs[v];
      cdf[v] = f32(acc);
    }
    // inverse CDF: the first index whose cdf exceeds u·total (torch.searchsorted(..., right=True))
    const target = f32(f32(tokenDraws[t]) * cdf[V - 1]);
    let lo = 0, hi = V;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] <= target) lo = mid + 1; else hi = mid;
    }
    const token = unknown ? Math.min(lo, V - 1) : row.tokens[t];
    sampled[t] = token;
    if (!unknown) {
      scores[t] = Infinity; // known tokens are never re-masked
      continue;
    }
    const confidence = Math.log(Math.max(probs[token], TINY));
    const gumbel = -f32(Math.log(f32(-f32(Math.log(Math.min(Math.max(f32(choiceDraws[t]), TINY), 1))))));
    scores[t] = f32(f32(confidence) + f32(choiceT * f32(gumbel)));
  }

  const last = row.step === row.steps - 1;
  const scheduled = numMaskedAfter(row.step, row.steps, row.toDecode);
  const numMasked = last ? 0 : Math.max(Math.min(scheduled, unknownCount - 1), 0);
  const tokens = Int32Array.from(sampled);
  if (numMasked > 0) { // re-mask the numMasked least confident (ties: the lower position first)
    const order = Array.from({ length: T }, (_, i) => i).sort((a, b) => scores[a] - scores[b] || a - b);
    for (let i = 0; i < numMasked; i++) tokens[order[i]] = row.maskId;
  }
  return { row: { ...row, tokens, step: row.step + 1 }, sampled, numMasked };
}

/** One step's draws of one row: T token draws, then T choice draws (core.sampling.draws_for). */
export function drawsFor(generator, numTokens) {
  const both = generator.rand(2 * numTokens);
  return [both.subarray(0, numTokens), both.subarray(numTokens)];
}

/** (T, V) logits -> (T,) the index of each token's largest logit (the first one on a tie, as torch). */
export function argmax(logits, numTokens, vocab) {
  const out = new Int32Array(numTokens);
  for (let t = 0; t < numTokens; t++) {
    let best = 0, top = -Infinity;
    for (let v = 0; v < vocab; v++) {
      const x = logits[t * vocab + v];
      if (x > top) { top = x; best = v; }
    }
    out[t] = best;
  }
  return out;
}

/** One sample from the model: yields the state after every step, {step, steps, tokens, predicted, before,
 *  loopPredictions, numMasked} (loopPredictions: each loop's argmax when `all`, else null).
 *  fn({tokens}, labels, all) -> [each loop's logits] when all, else [the last loop's], (rows, T, V) each;
 *  manifest: export.json (num_tokens, vocab_size, mask_id, null_class); config: a SamplerConfig. */
export async function* maskgitDecode(fn, label, { manifest, config, generator, all = false, init = null }) {
  const T = manifest.num_tokens, V = manifest.vocab_size;
  let row = maskgitInit({ numTokens: T, maskId: manifest.mask_id, config, init });
  const model = (inputs, labels) => fn(inputs, labels, all);
  for (let k = 0; k < config.steps; k++) {
    const logits = await guided(model, { tokens: row.tokens }, label, manifest.null_class, config.cfg_scale);
    const before = row.tokens;
    const { row: next, sampled, numMasked } = maskgitStep(row, logits[logits.length - 1], V, drawsFor(generator, T));
    row = next;
    yield { step: k + 1, steps: config.steps, tokens: row.tokens, predicted: sampled, before, numMasked,
            loopPredictions: all ? logits.map((l) => argmax(l, T, V)) : null };
  }
}

// the entry studio.js calls for every family (export.json's sampler_module names this module)
export { maskgitDecode as decode };
