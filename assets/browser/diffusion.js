// The diffusion (DiT) sampler of the page: one row (one sample), mirroring the diffusion half of
// core/sampling.py step for step (its shared head, the generator and guidance, is sampling.js).
//
//   noiseSchedule   <- core.sampling.noise_schedule (shifted cosine, logSNR clipped to ±15)
//   diffusionInit   <- core.sampling.diffusion_init (pure noise at t = 1: torch.randn of the row's generator)
//   diffusionStep   <- core.sampling.diffusion_step (DDIM, or DDPM's ancestral step; the last step returns x̂0)
//   loopGuided      <- core.sampling.loop_guided (x̂_k + s·(x̂_L − x̂_k): the model's own loop k guides loop L)
//   checkGuideLoop  <- core.config.DiffusionSamplerConfig.check_loops
//   diffusionDecode <- core.sampling.diffusion_decode (a thin loop over them, either guidance included)
//
// Arithmetic is rounded to float32 where torch computes in float32 (Math.fround); the schedule is computed in
// double and rounded, as torch does.  tests/test_browser_sampler.py feeds this module and the Python sampler
// the same model outputs and noise and compares the latents at every step.  No DOM, no globals.

import { guided } from "./sampling.js";

const f32 = Math.fround;
const LOGSNR_LIMIT = 15;

/** t in [0, 1] -> {alpha, sigma, logsnr} of the shifted cosine schedule (variance preserving). */
export function noiseSchedule(t, shift = 1) {
  const angle = (Math.min(Math.max(t, 0), 1) * Math.PI) / 2;
  const log = (v) => Math.log(Math.max(v, 1e-12));
  let logsnr = f32(2 * (log(Math.cos(angle)) - log(Math.sin(angle))) - 2 * Math.log(shift));
  logsnr = Math.min(Math.max(logsnr, -LOGSNR_LIMIT), LOGSNR_LIMIT);
  const sigmoid = (x) => f32(1 / (1 + Math.exp(-x)));
  return { alpha: f32(Math.sqrt(sigmoid(logsnr))), sigma: f32(Math.sqrt(sigmoid(-logsnr))), logsnr };
}

/** The row's current time: uniform steps of t from 1 to 0 (DiffusionRows.t). */
export function rowTime(row) {
  return f32(1 - f32(row.step / row.steps));
}

/** Does the row's next step draw noise?  DDPM, except on its last step (DiffusionRows.needs_noise). */
export function needsNoise(row) {
  return row.ddpm && row.step < row.steps - 1;
}

/** A row of pure noise at t = 1; config: a DiffusionSamplerConfig as export.json's "sampler" ({steps, cfg_scale,
 *  method, guide_loop}); shape [T, C]; noise: the T·C starting values, else drawn from generator. */
export function diffusionInit({ shape, config, generator = null, noise = null }) {
  const n = shape[0] * shape[1];
  const x = noise ? Float32Array.from(noise) : generator.randn(n);
  if (x.length !== n) throw new Error(`the starting noise must have ${n} values, got ${x.length}`);
  if (!["ddim", "ddpm"].includes(config.method)) throw new Error(`method must be ddim or ddpm, got ${JSON.stringify(config.method)}`);
  return { x, step: 0, steps: config.steps, ddpm: config.method === "ddpm", cfgScale: f32(config.cfg_scale),
           guideLoop: config.guide_loop || 0 };
}

/** Refuse loop guidance without a loop below the loop count to guide from (one line, as the server's). */
export function checkGuideLoop(guideLoop, loops) {
  if (guideLoop && guideLoop >= loops) {
    throw new Error(`loop guidance from loop ${guideLoop} needs more loops than that; got ${loops} loops`);
  }
}

/** loopX0: each loop's x̂0 of the row (Float32Array each) -> the prediction at `loops` guided away from loop
 *  `guideLoop` by scale s; guideLoop 0 or s = 0 takes loop `loops` unguided. */
export function loopGuided(loopX0, guideLoop, scale, loops = loopX0.length) {
  const s = f32(scale), strong = loopX0[loops - 1];
  if (!(guideLoop > 0) || s === 0) return strong;
  if (guideLoop >= loops) throw new Error("loop guidance needs a guide loop below the loop count of every row it guides");
  const weak = loopX0[guideLoop - 1];
  const out = new Float32Array(strong.length);
  for (let i = 0; i < out.length; i++) out[i] = f32(weak[i] + f32(s * f32(strong[i] - weak[i])));
  return out;
}

/** One solver step of the row from t to s = t − 1/steps given x̂0 (guidance applied) and, for a DDPM row
 *  (needsNoise), standard normal noise; returns the row after it. */
export function diffusionStep(row, x0, noise = null, shift = 1) {
  if (row.step >= row.steps) throw new Error("diffusionStep on a row that has finished all its steps");
  if (x0.length !== row.x.length) throw new Error(`x0 must have ${row.x.length} values, got ${x0.length}`);
  const next = { ...row, step: row.step + 1 };
  if (row.step === row.steps - 1) return { ...next, x: Float32Array.from(x0) };
  const { alpha: at, sigma: st } = noiseSchedule(rowTime(row), shift);
  const { alpha: as, sigma: ss } = noiseSchedule(f32(1 - f32((row.step + 1) / row.steps)), shift);
  const x = new Float32Array(x0.length);
  if (!row.ddpm) {
    for (let i = 0; i < x.length; i++) {
      x[i] = f32(f32(as * x0[i]) + f32(f32(ss * f32(row.x[i] - f32(at * x0[i]))) / st));
    }
    return { ...next, x };
  }
  if (!noise || noise.length !== x.length) throw new Error(`a DDPM step needs ${x.length} noise values`);
  const ats = f32(at / as), ss2 = f32(ss * ss), st2 = f32(st * st);
  const variance = Math.max(f32(st2 - f32(f32(ats * ats) * ss2)), 0);
  const cx = f32(f32(ats * ss2) / st2), c0 = f32(f32(as * variance) / st2);
  const spread = f32(Math.sqrt(f32(f32(variance * ss2) / st2)));
  for (let i = 0; i < x.length; i++) {
    x[i] = f32(f32(f32(cx * row.x[i]) + f32(c0 * x0[i])) + f32(spread * noise[i]));
  }
  return { ...next, x };
}

/** One sample from the model: yields the state after every step, {step, steps, tokens (the latent x_s),
 *  predicted (this step's guided x̂0), loopPredictions (each loop's x̂0 when the model gave every loop), t}.
 *  fn({latents, t}, labels, all) -> [each loop's x̂0] when all, else [the last loop's], (rows, T, C) each;
 *  manifest: export.json (latent_shape, null_class, schedule_shift); config: a DiffusionSamplerConfig;
 *  noise: optional starting latent (else drawn from generator). */
export async function* diffusionDecode(fn, label, { manifest, config, generator, all = false, noise = null }) {
  let row = diffusionInit({ shape: manifest.latent_shape, config, generator, noise });
  const byLoop = row.guideLoop > 0; // loop guidance: the conditional pass only, every loop's x̂0 from it
  const model = (inputs, labels) => fn(inputs, labels, all || byLoop);
  for (let k = 0; k < config.steps; k++) {
    const out = await guided(model, { latents: row.x, t: Float32Array.of(rowTime(row)) }, label, manifest.null_class,
                             byLoop ? 0 : row.cfgScale);
    const x0 = byLoop ? loopGuided(out, row.guideLoop, row.cfgScale) : out[out.length - 1];
    const noiseNow = needsNoise(row) ? generator.randn(row.x.length) : null;
    row = diffusionStep(row, x0, noiseNow, manifest.schedule_shift);
    yield { step: k + 1, steps: config.steps, tokens: row.x, predicted: x0, t: rowTime(row),
            loopPredictions: all || byLoop ? out : null };
  }
}

// the entry studio.js calls for every family (export.json's sampler_module names this module)
export { diffusionDecode as decode };
