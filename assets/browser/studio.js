// ELT Studio in the visitor's browser: the page wiring of a looped generator that runs in the page, loop by loop.
//
// The server only serves files: onnxruntime-web (assets/vendor/onnxruntime-web), these modules, and a
// checkpoint's export (core/export.py: the embedding, ONE loop of the block, the head, the tokenizer's decoder,
// and export.json).  Per sampling step the page runs the embedding, the block L times (the same weights for
// any L, extrapolation included), the head after every loop for the in-step strip, and the family's sampler,
// the module export.json names (maskgit.js or diffusion.js, each mirroring its half of core/sampling.py, with
// sampling.js for what they share); loops.js holds the loop range, loop previews and class lookup.  This
// module holds no sampling rule: it loads the graphs, runs them for the sampler, draws, and checks input.
// The server does no model work.
//
//   window.eltStudio.generate({checkpoint, label, loops, steps, seed, cfgScale, guideLoop})
//     -> Promise of {width, height, rgba, ms, ...}: the final image's RGBA pixels and its wall time in the page
//        (loops, steps, cfgScale, guideLoop (DiT) default to the checkpoint's L_max and sampler; seed to 0).  A
//        seed gives the draws torch's generator gives on the server.  Bad input rejects with one message naming
//        what is accepted.  Every result (and every decoded step preview or loop-strip tile) also carries
//        {frames: [RGBA Uint8ClampedArray per frame], numFrames, fps}: an image is one frame with fps null; a
//        video checkpoint's clip (export.json's `clip`) has all its frames, `rgba` being the first, and loops at
//        `fps`, the rate of the server's MP4.  clip.js draws one (drawClip) and downloads it with its settings
//        (clipDownload: an animated PNG).
//   window.eltStudio.checkpoints() -> Promise of the catalog (classes, loop range, defaults, server_only)
//   window.eltStudio.runtime() -> {backend: "wasm" | "webgpu" | null, threads, crossOriginIsolated, fallback}
//     (fallback: why the page runs on WASM although WebGPU was tried, else null)
//   window.eltStudio.forward({checkpoint, loops, seed, backend}) -> Promise of {backend, loops, outputs, msPerLoop}:
//     the head's output after each loop on a fixed seeded input (the WebGPU / WASM parity check)

import { checkGuideLoop } from "./diffusion.js";
import { checkLoops, loopPreview, loopRange, resolveClass } from "./loops.js";
import { TorchGenerator } from "./sampling.js";

const GRAPHS = ["embed", "block", "head", "decoder"];
const state = { server: null, vendorUrl: null, catalog: null, ort: null, backend: null, bundle: null, fallback: null,
                threads: 1, models: new Map(),
                views: new Set(), options: { threads: null, webgpu: true } };

export class Cancelled extends Error {}

// -- loading ---------------------------------------------------------------------------------------------------
function absolute(path) {
  return new URL(path, document.baseURI).href;
}

export function catalog() {
  if (!state.catalog) {
    if (!state.server) return Promise.reject(new Error("ELT Studio's browser runtime is not installed on this page"));
    state.catalog = state.server.browser_catalog().catch((error) => {
      state.catalog = null;
      throw error;
    });
  }
  return state.catalog;
}

function loadOrt(info) {
  if (!state.ort) {
    state.ort = (async () => {
      let gpu = null;
      if (state.options.webgpu && info.runtime.webgpu && "gpu" in navigator) {
        gpu = await navigator.gpu.requestAdapter().catch((error) => {
          state.fallback = `WebGPU adapter request failed (${error.message}): running on WASM`;
          return null;
        });
        if (!gpu && !state.fallback) state.fallback = "this browser offers no WebGPU adapter: running on WASM";
      }
      const ort = await import(state.vendorUrl + (gpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
      const cores = navigator.hardwareConcurrency || 1;
      // threads need SharedArrayBuffer, i.e. a cross-origin isolated page (python app.py --cross-origin-isolation)
      state.threads = self.crossOriginIsolated ? (state.options.threads || Math.min(4, cores)) : 1;
      ort.env.wasm.wasmPaths = state.vendorUrl;
      ort.env.wasm.numThreads = state.threads;
      ort.env.wasm.proxy = false;
      ort.env.logLevel = "error";
      state.backend = state.bundle = gpu ? "webgpu" : "wasm"; // the WebGPU bundle runs WASM sessions too
      return ort;
    })();
    state.ort.catch(() => { state.ort = null; });
  }
  return state.ort;
}

async function sha256(bytes) {
  if (!self.crypto?.subtle) return null; // not a secure context (plain http to another machine): the server checked
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function checkGraph(session, spec, graph, name) {
  // refuse a graph whose inputs / outputs are not the ones export.json describes for this checkpoint
  for (const [side, names, metadata] of [["inputs", session.inputNames, session.inputMetadata],
                                         ["outputs", session.outputNames, session.outputMetadata]]) {
    const want = Object.keys(spec[side]);
    if (JSON.stringify([...names]) !== JSON.stringify(want)) {
      throw new Error(`${name}: ${graph}.onnx has ${side} ${names.join(", ")}, export.json says ${want.join(", ")}: refused`);
    }
    for (const meta of metadata || []) {
      const shape = meta.shape?.map((d) => (typeof d === "number" ? d : "batch"));
      if (shape && JSON.stringify(shape) !== JSON.stringify(spec[side][meta.name].shape)) {
        throw new Error(`${name}: ${graph}.onnx ${meta.name} has shape [${shape}], export.json says `
                        + `[${spec[side][meta.name].shape}]: refused`);
      }
    }
  }
}

/** A checkpoint's sessions on the runtime's backend, or on `backend` ("webgpu" | "wasm", for forward) with no
 *  fallback: a forced backend that fails rejects. */
export function loadModel(name, backend = null) {
  const key = backend ? `${name}@${backend}` : name;
  if (!state.models.has(key)) {
    const promise = (async () => {
      const started = performance.now();
      const info = await catalog();
      const found = await state.server.browser_export(name);
      // why a load failed, so that the page can say why it runs on the server instead
      if (found.error) throw Object.assign(new Error(found.error), { reason: "no export for this checkpoint" });
      const ort = await loadOrt(info).catch((error) => {
        throw Object.assign(error, { reason: "runtime could not load" });
      });
      const manifest = found.manifest;
      const sessions = {};
      for (const graph of GRAPHS) {
        const response = await fetch(absolute(found.files[graph]));
        if (!response.ok) throw new Error(`${name}: could not load ${graph}.onnx (HTTP ${response.status})`);
        const bytes = new Uint8Array(await response.arrayBuffer());
        const digest = await sha256(bytes);
        if (digest !== null && digest !== manifest.files[graph].sha256) {
          throw new Error(`${name}: ${graph}.onnx does not match export.json (sha256 ${digest.slice(0, 12)}… ≠ `
                          + `${manifest.files[graph].sha256.slice(0, 12)}…): refused`);
        }
        const options = { executionProviders: [backend ?? state.backend], graphOptimizationLevel: "all" };
        sessions[graph] = await ort.InferenceSession.create(bytes, options).catch((error) => {
          if (backend || state.backend !== "webgpu") throw error;
          state.backend = "wasm"; // a WebGPU adapter that cannot run the graph: the same bundle's WASM backend
          state.fallback = `WebGPU could not run ${name}'s ${graph}.onnx (${error.message}): running on WASM`;
          return ort.InferenceSession.create(bytes, { ...options, executionProviders: ["wasm"] });
        });
        checkGraph(sessions[graph], manifest.graphs[graph], graph, name);
      }
      return { name, manifest, sessions, ort, loadMs: performance.now() - started };
    })();
    state.models.set(key, promise);
    promise.catch(() => state.models.delete(key));
  }
  return state.models.get(key);
}

/** One forward on a fixed seeded input (two rows: class 0 and the null class, as guidance runs them; MaskGIT
 *  tokens with masks among them, DiT latents ~ N(0, 1) at t = 0.5): the head's output after each of `loops`
 *  loops and the ms per loop, on `backend` (default: the runtime's).  The same input on either backend of the
 *  WebGPU bundle is what tests/test_browser_webgpu.py compares. */
async function forward(request) {
  if (request === null || typeof request !== "object") {
    throw new Error("forward takes one object: {checkpoint, loops, seed, backend}");
  }
  const info = await runnableEntry(request.checkpoint);
  await loadOrt(info);
  const backends = state.bundle === "webgpu" ? ["webgpu", "wasm"] : ["wasm"];
  const forced = request.backend ?? null; // none: the runtime's backend, with its fallback to WASM
  if (forced !== null && !backends.includes(forced)) {
    throw new Error(`backend must be one of ${backends.join(", ")} on this page${state.fallback ? ` (${state.fallback})` : ""}`
                    + `, got ${JSON.stringify(forced)}`);
  }
  const model = await loadModel(request.checkpoint, forced);
  const m = model.manifest;
  const loops = checkLoops(request.loops ?? m.max_loops, m, m.checkpoint);
  const generator = new TorchGenerator(integerIn("seed", request.seed ?? 0, 0, info.limits.max_seed));
  const inputs = {}, rows = 2;
  for (const [name, spec] of Object.entries(m.graphs.embed.inputs)) {
    const size = rows * spec.shape.slice(1).reduce((a, b) => a * b, 1);
    if (name === "labels") continue;
    if (name === "t") inputs.t = new Float32Array(size).fill(0.5);
    else if (spec.dtype === "int32") inputs[name] = Int32Array.from(generator.rand(size), (u) => Math.floor(u * (m.vocab_size + 1)));
    else inputs[name] = generator.randn(size);
  }
  const loopMs = [];
  const outputs = await modelFunction(model, loops, loopMs, () => true)(inputs, [0, m.null_class], true);
  return { backend: forced ?? state.backend, loops, outputs: outputs.map((o) => Array.from(o)), msPerLoop: mean(loopMs),
           loopMs };
}

// -- input checks (one message naming what is accepted) ---------------------------------------------------------
function integerIn(name, value, low, high) {
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (!Number.isInteger(number) || number < low || number > high) {
    throw new Error(`${name} must be an integer in ${low}..${high}, got ${JSON.stringify(value)}`);
  }
  return number;
}

/** The catalog entry of a checkpoint the page can run (else one message naming those it can). */
async function runnableEntry(checkpoint) {
  const info = await catalog();
  const runnable = Object.keys(info.checkpoints).filter((n) => !info.checkpoints[n].server_only);
  const entry = info.checkpoints[checkpoint];
  if (!entry) {
    throw new Error(`unknown checkpoint ${JSON.stringify(checkpoint)}; accepted: ${runnable.join(", ") || "none"}`);
  }
  if (entry.server_only) throw new Error(`${entry.server_only}; in the browser: ${runnable.join(", ") || "none"}`);
  return info;
}

/** A request checked against the checkpoint's export.json (classes, loop range, sampler) and the app's limits. */
export function settingsOf(request, manifest, limits) {
  const name = manifest.checkpoint, defaults = manifest.sampler;
  const label = resolveClass(manifest.classes, request.label, name);
  const loops = checkLoops(request.loops ?? manifest.max_loops, manifest, name);
  const s = request.cfgScale ?? request.cfg_scale ?? defaults.cfg_scale;
  const cfgScale = typeof s === "string" && s.trim() !== "" ? Number(s) : s;
  if (typeof cfgScale !== "number" || !(cfgScale >= 0 && cfgScale <= limits.max_cfg_scale)) {
    throw new Error(`guidance scale must be a number in 0..${limits.max_cfg_scale}, got ${JSON.stringify(s)}`);
  }
  const given = request.guideLoop ?? request.guide_loop;
  if (manifest.family !== "diffusion" && given) {
    throw new Error(`loop guidance (guide loop) is a DiT option; ${name} is a ${manifest.family} generator`);
  }
  const guideLoop = manifest.family === "diffusion" ? integerIn("guide loop", given ?? defaults.guide_loop, 0, loops) : 0;
  checkGuideLoop(guideLoop, loops);
  return {
    checkpoint: name, label, className: manifest.classes[label], loops, cfgScale, guideLoop,
    steps: integerIn("steps", request.steps ?? defaults.steps, 1, limits.max_steps),
    seed: integerIn("seed", request.seed ?? 0, 0, limits.max_seed),
  };
}

/** Check a request (the export loaded on first use): {model, settings}. */
async function prepare(request) {
  if (request === null || typeof request !== "object") {
    throw new Error("generate takes one object: {checkpoint, label, loops, steps, seed, cfgScale, guideLoop}");
  }
  const info = await runnableEntry(request.checkpoint);
  const model = await loadModel(request.checkpoint);
  return { model, settings: settingsOf(request, model.manifest, info.limits) };
}

// -- running the graphs ------------------------------------------------------------------------------------------
function tensor(ort, spec, data, rows) {
  const dims = [rows, ...spec.shape.slice(1)];
  const Type = spec.dtype === "int32" ? Int32Array : Float32Array;
  return new ort.Tensor(spec.dtype, data instanceof Type ? data : Type.from(data), dims);
}

/** The model function the samplers call: embed, the block `loops` times, the head after every loop when
 *  `all` (the in-step strip, loop guidance) or after the last; each head output split into one typed array.
 *  The graphs' inputs are looked up by name in export.json, so one function serves every family. */
function modelFunction(model, loops, loopMs, isCurrent) {
  const { manifest: m, sessions, ort } = model, graphs = m.graphs;
  const run = async (name, state) => {
    if (!isCurrent()) throw new Cancelled();
    const feeds = Object.fromEntries(Object.keys(graphs[name].inputs).map((input) => [input, state[input]]));
    return sessions[name].run(feeds);
  };
  return async (inputs, labels, all) => {
    const rows = labels.length;
    const feeds = { labels: tensor(ort, graphs.embed.inputs.labels, labels, rows) };
    for (const [name, data] of Object.entries(inputs)) feeds[name] = tensor(ort, graphs.embed.inputs[name], data, rows);
    const embedStarted = performance.now();
    const state = { ...(await run("embed", feeds)) }; // hidden, and what else every loop reads (a DiT's cond)
    loopMs.embedMs?.push(performance.now() - embedStarted); // the latency chart's fixed costs
    let headMs = 0;
    const [output] = Object.keys(graphs.head.outputs);
    const outputs = [];
    for (let i = 1; i <= loops; i++) {
      const started = performance.now();
      state.hidden = (await run("block", state)).hidden_out;
      loopMs.push(performance.now() - started);
      const headStarted = performance.now();
      if (all || i === loops) outputs.push(Float32Array.from((await run("head", state))[output].data));
      headMs += performance.now() - headStarted;
    }
    loopMs.headMs?.push(headMs);
    return outputs;
  };
}

const samplers = new Map(); // sampler module name (export.json's sampler_module) -> the module

function samplerOf(manifest) {
  if (!samplers.has(manifest.sampler_module)) {
    samplers.set(manifest.sampler_module, import(new URL(`./${manifest.sampler_module}`, import.meta.url).href));
  }
  return samplers.get(manifest.sampler_module);
}

/** Run one sample with the family's sampler (export.json's sampler_module); onStep(state, previews) after
 *  every step (may be async; previews: each loop's data for the strip when `strip`).  isCurrent() false: stop
 *  at the next model call (Cancelled). */
export async function sample(model, settings, { strip = false, onStep = null, isCurrent = () => true } = {}) {
  const m = model.manifest, loopMs = Object.assign([], { embedMs: [], headMs: [] });
  const { decode: decodeSteps } = await samplerOf(m);
  const config = { ...m.sampler, steps: settings.steps, cfg_scale: settings.cfgScale, guide_loop: settings.guideLoop };
  const fn = modelFunction(model, settings.loops, loopMs, isCurrent);
  let last = null;
  for await (const state of decodeSteps(fn, settings.label, { manifest: m, config, all: strip,
                                                              generator: new TorchGenerator(settings.seed) })) {
    last = state;
    const previews = strip ? loopPreview(m.family, state.loopPredictions, state.before, m.mask_id) : null;
    if (onStep) await onStep(state, previews);
  }
  return { tokens: last.tokens, loopMs, embedMs: loopMs.embedMs, headMs: loopMs.headMs };
}

/** Pixels of sampled rows (token ids or latents, one typed array each) through the decoder graph: per row
 *  {width, height, rgba: the first frame, frames: every frame's RGBA, numFrames, fps} (an image: one frame,
 *  fps null; a clip: export.json's clip). */
export async function decode(model, rows) {
  const { manifest: m, sessions, ort } = model;
  const [[input, spec]] = Object.entries(m.graphs.decoder.inputs);
  const size = rows[0].length, data = new (spec.dtype === "int32" ? Int32Array : Float32Array)(rows.length * size);
  rows.forEach((row, i) => data.set(row, i * size));
  const { pixels } = await sessions.decoder.run({ [input]: tensor(ort, spec, data, rows.length) });
  const [H, W] = m.image, numFrames = m.clip?.frames ?? 1; // pixels: (rows, [frames,] H, W, 3)
  return rows.map((_, i) => {
    const frames = Array.from({ length: numFrames }, (__, f) => {
      const rgba = new Uint8ClampedArray(H * W * 4);
      for (let p = 0, q = (i * numFrames + f) * H * W * 3; p < H * W; p++, q += 3) {
        rgba[4 * p] = pixels.data[q];
        rgba[4 * p + 1] = pixels.data[q + 1];
        rgba[4 * p + 2] = pixels.data[q + 2];
        rgba[4 * p + 3] = 255;
      }
      return rgba;
    });
    return { width: W, height: H, rgba: frames[0], frames, numFrames, fps: m.clip?.fps ?? null };
  });
}

export function mean(values) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0;
}

async function generate(request) {
  try {
    const { model, settings } = await prepare(request);
    const started = performance.now();
    const { tokens, loopMs } = await sample(model, settings);
    const [image] = await decode(model, [tokens]);
    const ms = performance.now() - started;
    return { ...image, ms, msPerLoop: mean(loopMs), backend: state.backend, threads: state.threads,
             checkpoint: settings.checkpoint, label: settings.label, class: settings.className, loops: settings.loops,
             steps: settings.steps, seed: settings.seed, cfgScale: settings.cfgScale, guideLoop: settings.guideLoop,
             family: model.manifest.family, tokens: Array.from(tokens) };
  } catch (error) {
    for (const view of state.views) view.show(error.message, true);
    throw error;
  }
}

/** Install window.eltStudio on this page (once): server = the gr.HTML server functions, vendorUrl = the
 *  folder of onnxruntime-web's files. */
export function install({ server, vendorUrl }) {
  state.server = server;
  state.vendorUrl = absolute(vendorUrl).replace(/\/?$/, "/");
  window.eltStudio = {
    generate, checkpoints: catalog,
    forward,
    runtime: () => ({ backend: state.backend, threads: state.threads, crossOriginIsolated: !!self.crossOriginIsolated,
                      fallback: state.fallback }),
    configure: (options) => Object.assign(state.options, options), // before the first model loads
  };
  return window.eltStudio;
}

// -- drawing (the Generate tab's page runtime, generate.js) -----------------------------------------------------
export function draw(canvas, images, labels, size) {
  const gap = 4, caption = labels ? 16 : 0;
  canvas.width = images.length * size + (images.length - 1) * gap;
  canvas.height = size + caption;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = false;
  images.forEach((image, i) => {
    const tile = new OffscreenCanvas(image.width, image.height);
    tile.getContext("2d").putImageData(new ImageData(image.rgba, image.width, image.height), 0, 0);
    context.drawImage(tile, i * (size + gap), caption, size, size);
    if (labels) {
      context.fillStyle = getComputedStyle(canvas).color || "#444";
      context.font = "12px ui-sans-serif, system-ui, sans-serif";
      context.fillText(labels[i], i * (size + gap) + 2, 12);
    }
  });
}
