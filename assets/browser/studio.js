// ELT Studio in the visitor's browser: a looped generator runs in the page, loop by loop.
//
// The server only serves files: onnxruntime-web (assets/vendor/onnxruntime-web), this module and maskgit.js,
// and a checkpoint's export (core/export.py: the embedding, ONE loop of the block, the head, the tokenizer's
// decoder, and export.json).  Per sampling step the page runs the embedding, the block L times (the same
// weights for any L, extrapolation included), the head after every loop for the in-step strip, and the
// sampler (maskgit.js, mirroring core/sampling.py); the server does no model work.
//
//   window.eltStudio.generate({checkpoint, label, loops, steps, seed, cfgScale})
//     -> Promise of {width, height, rgba, ms, ...}: the final image's RGBA pixels and its wall time in the page
//        (loops, steps, cfgScale default to the checkpoint's L_max and sampler; seed to 0).  A seed gives the
//        draws torch's generator gives on the server.  Bad input rejects with one message naming what is accepted.
//   window.eltStudio.checkpoints() -> Promise of the catalog (classes, loop range, defaults, server_only)
//   window.eltStudio.runtime() -> {backend: "wasm" | "webgpu" | null, threads, crossOriginIsolated}

import { TorchGenerator, combineGuidance, drawsFor, maskgitInit, maskgitStep } from "./maskgit.js";

const GRAPHS = ["embed", "block", "head", "decoder"];
const PREVIEW_MS = 50; // the image and strip are redrawn at most this often (and after the last step)
const state = { server: null, vendorUrl: null, catalog: null, ort: null, backend: null, threads: 1, models: new Map(),
                views: new Set(), options: { threads: null, webgpu: true } };

class Cancelled extends Error {}

// -- loading ---------------------------------------------------------------------------------------------------
function absolute(path) {
  return new URL(path, document.baseURI).href;
}

function catalog() {
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
      const gpu = state.options.webgpu && info.runtime.webgpu && "gpu" in navigator
        && await navigator.gpu.requestAdapter().catch(() => null);
      const ort = await import(state.vendorUrl + (gpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
      const cores = navigator.hardwareConcurrency || 1;
      // threads need SharedArrayBuffer, i.e. a cross-origin isolated page (python app.py --cross-origin-isolation)
      state.threads = self.crossOriginIsolated ? (state.options.threads || Math.min(4, cores)) : 1;
      ort.env.wasm.wasmPaths = state.vendorUrl;
      ort.env.wasm.numThreads = state.threads;
      ort.env.wasm.proxy = false;
      ort.env.logLevel = "error";
      state.backend = gpu ? "webgpu" : "wasm";
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

function loadModel(name) {
  if (!state.models.has(name)) {
    const promise = (async () => {
      const started = performance.now();
      const info = await catalog();
      const found = await state.server.browser_export(name);
      if (found.error) throw new Error(found.error);
      const ort = await loadOrt(info);
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
        const options = { executionProviders: [state.backend], graphOptimizationLevel: "all" };
        sessions[graph] = await ort.InferenceSession.create(bytes, options).catch((error) => {
          if (state.backend !== "webgpu") throw error;
          state.backend = "wasm"; // a WebGPU adapter that cannot run the graph: the same bundle's WASM backend
          return ort.InferenceSession.create(bytes, { ...options, executionProviders: ["wasm"] });
        });
        checkGraph(sessions[graph], manifest.graphs[graph], graph, name);
      }
      return { name, manifest, sessions, ort, loadMs: performance.now() - started };
    })();
    state.models.set(name, promise);
    promise.catch(() => state.models.delete(name));
  }
  return state.models.get(name);
}

// -- input checks (one message naming what is accepted) ---------------------------------------------------------
function integerIn(name, value, low, high, hint = "") {
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (!Number.isInteger(number) || number < low || number > high) {
    throw new Error(`${name} must be an integer in ${low}..${high}${hint}, got ${JSON.stringify(value)}`);
  }
  return number;
}

async function settingsOf(request) {
  if (request === null || typeof request !== "object") {
    throw new Error("generate takes one object: {checkpoint, label, loops, steps, seed}");
  }
  const info = await catalog();
  const { checkpoint, label } = request;
  const runnable = Object.keys(info.checkpoints).filter((n) => !info.checkpoints[n].server_only);
  const entry = info.checkpoints[checkpoint];
  if (!entry) {
    throw new Error(`unknown checkpoint ${JSON.stringify(checkpoint)}; accepted: ${runnable.join(", ") || "none"}`);
  }
  if (entry.server_only) throw new Error(`${entry.server_only}; in the browser: ${runnable.join(", ") || "none"}`);
  const classes = entry.classes;
  let index = typeof label === "string" ? classes.findIndex((c) => c.toLowerCase() === label.trim().toLowerCase())
    : (Number.isInteger(label) && label >= 0 && label < classes.length ? label : -1);
  if (index < 0 && typeof label === "string" && /^\d+$/.test(label.trim())) index = Number(label) < classes.length ? Number(label) : -1;
  if (index < 0) {
    throw new Error(`unknown class ${JSON.stringify(label)} for ${checkpoint}; accepted: ${classes.join(", ")} `
                    + `(or an index 0..${classes.length - 1})`);
  }
  const maxLoops = entry.max_loops, sampler = entry.default_sampler;
  return {
    checkpoint, label: index, className: classes[index],
    loops: integerIn("loops", request.loops ?? maxLoops, 1, 2 * maxLoops,
                     ` for ${checkpoint} (L_max = ${maxLoops}; above it is extrapolation)`),
    steps: integerIn("steps", request.steps ?? sampler.steps, 1, info.limits.max_steps),
    seed: integerIn("seed", request.seed ?? 0, 0, info.limits.max_seed),
    cfgScale: (() => {
      const s = request.cfgScale ?? request.cfg_scale ?? sampler.cfg_scale;
      const n = typeof s === "string" && s.trim() !== "" ? Number(s) : s;
      if (typeof n !== "number" || !(n >= 0 && n <= info.limits.max_cfg_scale)) {
        throw new Error(`guidance scale must be a number in 0..${info.limits.max_cfg_scale}, got ${JSON.stringify(s)}`);
      }
      return n;
    })(),
  };
}

// -- sampling ----------------------------------------------------------------------------------------------------
function argmax(logits, numTokens, vocab) {
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

/** Run one sample; onStep({step, steps, predicted, before, loopPredictions}) after every step (may be async).
 *  isCurrent() false: stop at the next model call (Cancelled). */
async function sample(model, settings, { strip = false, onStep = null, isCurrent = () => true } = {}) {
  const { manifest: m, sessions, ort } = model;
  const T = m.num_tokens, V = m.vocab_size, L = settings.loops, guided = settings.cfgScale > 0;
  const config = { ...m.sampler, steps: settings.steps, cfg_scale: settings.cfgScale };
  let row = maskgitInit({ numTokens: T, maskId: m.mask_id, config });
  const generator = new TorchGenerator(settings.seed);
  const labels = guided ? Int32Array.of(settings.label, m.null_class) : Int32Array.of(settings.label);
  const B = labels.length;
  const loopMs = [];
  const run = async (session, feeds) => {
    if (!isCurrent()) throw new Cancelled();
    return session.run(feeds);
  };
  for (let k = 0; k < settings.steps; k++) {
    const tokens = new Int32Array(B * T);
    for (let b = 0; b < B; b++) tokens.set(row.tokens, b * T);
    let { hidden } = await run(sessions.embed, { tokens: new ort.Tensor("int32", tokens, [B, T]),
                                                 labels: new ort.Tensor("int32", labels, [B]) });
    const loopPredictions = [];
    let logits = null;
    for (let i = 1; i <= L; i++) {
      const started = performance.now();
      hidden = (await run(sessions.block, { hidden })).hidden_out;
      loopMs.push(performance.now() - started);
      if (strip || i === L) { // the shared head reads any loop's hidden state
        const out = (await run(sessions.head, { hidden })).logits.data; // (B, T, V)
        const own = guided ? combineGuidance(out, T, V, settings.cfgScale) : out;
        if (strip) loopPredictions.push(argmax(own, T, V));
        if (i === L) logits = own;
      }
    }
    const before = row.tokens;
    const result = maskgitStep(row, logits, V, drawsFor(generator, T));
    row = result.row;
    if (onStep) await onStep({ step: k + 1, steps: settings.steps, predicted: result.sampled, before, loopPredictions });
  }
  return { tokens: row.tokens, loopMs };
}

async function decode(model, tokenRows) {
  const { manifest: m, sessions, ort } = model;
  const T = m.num_tokens, ids = new Int32Array(tokenRows.length * T);
  tokenRows.forEach((tokens, i) => ids.set(tokens, i * T));
  const { pixels } = await sessions.decoder.run({ tokens: new ort.Tensor("int32", ids, [tokenRows.length, T]) });
  const [H, W] = m.image;
  return tokenRows.map((_, i) => {
    const rgba = new Uint8ClampedArray(H * W * 4);
    for (let p = 0, q = i * H * W * 3; p < H * W; p++, q += 3) {
      rgba[4 * p] = pixels.data[q];
      rgba[4 * p + 1] = pixels.data[q + 1];
      rgba[4 * p + 2] = pixels.data[q + 2];
      rgba[4 * p + 3] = 255;
    }
    return { width: W, height: H, rgba };
  });
}

function mean(values) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0;
}

async function generate(request) {
  try {
    const settings = await settingsOf(request);
    const model = await loadModel(settings.checkpoint);
    const started = performance.now();
    const { tokens, loopMs } = await sample(model, settings);
    const [image] = await decode(model, [tokens]);
    const ms = performance.now() - started;
    return { ...image, ms, msPerLoop: mean(loopMs), backend: state.backend, threads: state.threads,
             checkpoint: settings.checkpoint, label: settings.label, class: settings.className, loops: settings.loops,
             steps: settings.steps, seed: settings.seed, cfgScale: settings.cfgScale, tokens: Array.from(tokens) };
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
    runtime: () => ({ backend: state.backend, threads: state.threads, crossOriginIsolated: !!self.crossOriginIsolated }),
    configure: (options) => Object.assign(state.options, options), // before the first model loads
  };
  return window.eltStudio;
}

// -- the tab ---------------------------------------------------------------------------------------------------------
function draw(canvas, images, labels, size) {
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

/** Lay out the "Run in my browser" tab's controls in `element` and wire them (all in the page). */
export function mount(element) {
  const $ = (role) => element.querySelector(`[data-role="${role}"]`);
  const view = {
    show(text, error = false) {
      $("message").textContent = text;
      $("message").classList.toggle("elt-error", error);
    },
  };
  state.views.add(view);
  let current = 0; // the run shown; a newer one (a moved loop slider) cancels it

  const values = () => ({ checkpoint: $("checkpoint").value, label: $("class").value, loops: $("loops").value,
                          steps: $("steps").value, cfgScale: $("cfg").value, seed: $("seed").value });
  const showValues = () => {
    $("loops-value").textContent = $("loops").value;
    $("steps-value").textContent = $("steps").value;
    $("cfg-value").textContent = Number($("cfg").value).toFixed(2);
  };

  async function chooseCheckpoint(info) {
    const entry = info.checkpoints[$("checkpoint").value];
    $("server").hidden = !entry?.server_only;
    $("run").disabled = !!entry?.server_only;
    if (!entry) return;
    const keep = $("class").value;
    $("class").replaceChildren(...entry.classes.map((c) => new Option(c, c)));
    if (entry.classes.includes(keep)) $("class").value = keep;
    $("loops").max = String(2 * entry.max_loops);
    $("loops").value = String(Math.min(Number($("loops").value) || entry.max_loops, 2 * entry.max_loops));
    $("steps").value = String(entry.default_sampler.steps);
    $("cfg").value = String(entry.default_sampler.cfg_scale);
    $("loops-label").textContent = `Loops L (trained ${entry.trained_loops.join("–")}; above ${entry.max_loops} = extrapolation)`;
    showValues();
    view.show(entry.server_only ? `${entry.server_only}: use the Generate tab.`
      : "Nothing is computed on the server: the page runs the model (ONNX Runtime Web) loop by loop.");
  }

  async function run() {
    const id = ++current;
    const started = performance.now();
    try {
      const settings = await settingsOf(values());
      view.show(`loading ${settings.checkpoint} into the page…`);
      const model = await loadModel(settings.checkpoint);
      if (id !== current) return;
      let lastDrawn = -Infinity;
      const t0 = performance.now();
      const { loopMs } = await sample(model, settings, {
        strip: true, isCurrent: () => id === current,
        onStep: async ({ step, steps, predicted, before, loopPredictions }) => {
          if (step < steps && performance.now() - lastDrawn < PREVIEW_MS) return;
          lastDrawn = performance.now();
          const shown = loopPredictions.map((p) => p.map((token, t) => (before[t] === model.manifest.mask_id ? token : before[t])));
          const [image, ...loops] = await decode(model, [predicted, ...shown]);
          if (id !== current) return;
          draw($("image"), [image], null, 256);
          draw($("strip"), loops, loops.map((_, i) => `loop ${i + 1}`), 96);
          $("step").textContent = `step ${step}/${steps}`;
        },
      });
      const ms = performance.now() - t0;
      const threads = state.threads > 1 ? `${state.threads} threads` : "1 thread";
      $("speed").textContent = `${mean(loopMs).toFixed(2)} ms per loop in this browser (${settings.cfgScale > 0 ? "2 rows: guidance" : "1 row"}) · `
        + `backend ${state.backend} (${threads}) · ${ms.toFixed(0)} ms for ${settings.steps} steps at L = ${settings.loops}`
        + ` · ${(model.manifest.flops_per_loop / 1e6).toFixed(1)} MFLOPs per loop`;
      $("speed").dataset.msPerLoop = mean(loopMs).toFixed(3);
      $("speed").dataset.backend = state.backend;
      view.show(`${settings.className} · seed ${settings.seed} · L = ${settings.loops}${settings.loops > model.manifest.max_loops ? " (extrapolation)" : ""}`
        + ` · ${settings.steps} steps · guidance ${settings.cfgScale} — computed in this page `
        + `(${(performance.now() - started).toFixed(0)} ms with loading)`);
    } catch (error) {
      if (!(error instanceof Cancelled) && id === current) view.show(error.message, true);
    }
  }

  catalog().then(async (info) => {
    const names = Object.keys(info.checkpoints);
    $("checkpoint").replaceChildren(...names.map((n) => new Option(info.checkpoints[n].server_only ? `${n} (server only)` : n, n)));
    const runnable = (n) => info.checkpoints[n] && !info.checkpoints[n].server_only;
    const first = runnable(info.default) ? info.default : names.find(runnable);
    if (first) $("checkpoint").value = first;
    await chooseCheckpoint(info);
    $("checkpoint").addEventListener("change", () => chooseCheckpoint(info));
  }).catch((error) => view.show(error.message, true));
  for (const role of ["loops", "steps", "cfg"]) $(role).addEventListener("input", showValues);
  $("loops").addEventListener("input", () => { if ($("image").dataset.ran) run(); }); // re-runs at once
  $("run").addEventListener("click", () => { $("image").dataset.ran = "1"; run(); });
  $("server").addEventListener("click", () => {
    const tab = [...document.querySelectorAll("button[role=tab]")].find((b) => b.textContent.trim() === "Generate");
    tab?.click();
  });
}
