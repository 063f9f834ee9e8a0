// What both samplers of the page share, mirroring the head of core/sampling.py (above its MaskGIT and
// diffusion halves, which maskgit.js and diffusion.js mirror):
//
//   TorchGenerator  <- torch.Generator("cpu").manual_seed(seed): the same mt19937 stream, so a seed gives the
//                      server's draws; .rand(n) <- torch.rand (core.sampling.uniforms, one row),
//                      .randn(n) <- torch.randn (core.sampling.gaussians, one row)
//   combineGuidance <- core.sampling.combine_guidance (uncond + s·(cond − uncond); s = 0 takes cond)
//   guided          <- core.sampling.guided (one model call over [conditional; unconditional] rows)
//
// Arithmetic is rounded to float32 where torch computes in float32 (Math.fround).  tests/test_browser_sampler.py
// checks the draws against torch's and the guidance on the same numbers.  No DOM, no globals.

const f32 = Math.fround;

/** torch.Generator("cpu").manual_seed(seed): mt19937, and torch.rand's / torch.randn's float32 draws from it. */
export class TorchGenerator {
  constructor(seed) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`seed must be an integer in 0..${0xffffffff}, got ${seed}`);
    this.state = new Uint32Array(624);
    this.state[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = this.state[i - 1] ^ (this.state[i - 1] >>> 30);
      this.state[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = 624;
  }

  nextUint32() {
    const s = this.state;
    if (this.index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (s[k] & 0x80000000) | (s[(k + 1) % 624] & 0x7fffffff);
        s[k] = s[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = s[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** n uniforms in [0, 1) as torch.rand(n) draws them (24 random bits each). */
  rand(n) {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (this.nextUint32() & 0xffffff) * 2 ** -24;
    return out;
  }

  /** n standard normals as torch.randn(n) draws them on the CPU (n >= 16): n uniforms, then Box–Muller on
   *  each block of 16 (value j with j + 8); when 16 does not divide n, the last 16 are drawn again.  Equal to
   *  torch's within float32 rounding of log / cos / sin (torch's vector kernels round them their own way). */
  randn(n) {
    if (!Number.isInteger(n) || n < 16) throw new Error(`randn mirrors torch for 16 or more values, got ${n}`);
    const out = this.rand(n);
    const boxMuller = (at) => {
      for (let j = 0; j < 8; j++) {
        const u1 = f32(1 - out[at + j]), u2 = out[at + j + 8];
        const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
        const theta = f32(f32(2 * Math.PI) * u2);
        out[at + j] = f32(radius * f32(Math.cos(theta)));
        out[at + j + 8] = f32(radius * f32(Math.sin(theta)));
      }
    };
    for (let i = 0; i + 16 <= n; i += 16) boxMuller(i);
    if (n % 16 !== 0) {
      out.set(this.rand(16), n - 16);
      boxMuller(n - 16);
    }
    return out;
  }
}

/** [conditional; unconditional] halves of one Float32Array -> uncond + s·(cond − uncond) (s = 0: cond). */
export function combineGuidance(both, cfgScale) {
  if (both.length % 2 !== 0) throw new Error(`guidance needs the conditional and unconditional halves, got ${both.length} values`);
  const n = both.length / 2;
  const out = new Float32Array(n);
  const s = f32(cfgScale);
  for (let i = 0; i < n; i++) {
    const cond = both[i], uncond = both[n + i];
    out[i] = s === 0 ? cond : f32(uncond + f32(s * f32(cond - uncond)));
  }
  return out;
}

/** One sample through the model with classifier-free guidance when cfgScale > 0.
 *  fn(inputs, labels) -> every wanted loop's output, each a Float32Array over the rows it was given;
 *  inputs: {name: Float32Array | Int32Array of one row} (repeated for the unconditional row).
 *  Returns each loop's output of the one sample, guided. */
export async function guided(fn, inputs, label, nullLabel, cfgScale) {
  if (!(cfgScale > 0)) return fn(inputs, Int32Array.of(label));
  const twice = Object.fromEntries(Object.entries(inputs).map(([name, row]) => {
    const both = new row.constructor(2 * row.length);
    both.set(row);
    both.set(row, row.length);
    return [name, both];
  }));
  const outputs = await fn(twice, Int32Array.of(label, nullLabel));
  return outputs.map((both) => combineGuidance(both, cfgScale));
}
