// The Generate tab's page runtime: when the page can run the chosen checkpoint (runtime loaded, export present),
// the Generate, Sweep and "Generate within budget" buttons run it here (studio.js) instead of on the server;
// otherwise the click goes on to the server's handler as before.  The visitor can choose either ("Run on: this device / server"), and one line
// always says where the work ran and, after a fallback, why.
//
// The settings are read from the tab's own controls, so a fallback to the server loses none.  The page draws
// its step previews and the in-step loop strip itself; the finished sample goes to the server's `page_result`
// event with the page's timings, which fills the same outputs as a server run (final image, summary with
// GFLOPs, the PNG with its settings, the latency-per-loop chart) without any model work.  A clip loops in the
// page and reaches the server as all its frames, which the server writes as its MP4 with the settings.  A time
// budget picks L from this device's own timings (budget.js; `page_budget`).  The sweep runs in the page too, for
// images and clips.  A run started later (another click, or a moved loop slider mid-run) cancels the one
// before: only the newest run reports.

import { chooseLoops, MIN_MARGIN } from "./budget.js";
import { drawClip } from "./clip.js";
import { loopRange } from "./loops.js";
import { Cancelled, catalog, decode, draw, loadModel, mean, sample, settingsOf } from "./studio.js";

const PREVIEW_MS = 50; // the step image and strip are redrawn at most this often (and after the last step)
const STRIP_TILE = 96;

/** A decoded sample as Studio.page_result reads it: {width, height, rgb} with the RGB bytes base64, and for a clip
 *  `frames` with every frame's bytes in turn. */
function pagePixels(image) {
  const frames = image.frames ?? [image.rgba], size = image.width * image.height;
  const rgb = new Uint8Array(frames.length * size * 3);
  let q = 0;
  for (const rgba of frames) {
    for (let p = 0; p < rgba.length; p += 4, q += 3) {
      rgb[q] = rgba[p];
      rgb[q + 1] = rgba[p + 1];
      rgb[q + 2] = rgba[p + 2];
    }
  }
  const sample = { width: image.width, height: image.height, rgb: base64(rgb) };
  return frames.length > 1 ? { ...sample, frames: frames.length } : sample;
}

function base64(rgb) {
  let text = "";
  for (let i = 0; i < rgb.length; i += 0x8000) text += String.fromCharCode(...rgb.subarray(i, i + 0x8000));
  return btoa(text);
}

/** window.eltStudio, once app/ui.py's browser_api has installed it (its own component, loaded beside this one). */
function installed(timeoutMs = 60_000) {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (window.eltStudio) resolve(window.eltStudio);
      else if (performance.now() - started > timeoutMs) reject(new Error("the page runtime was not installed"));
      else setTimeout(check, 50);
    };
    check();
  });
}

/** The tab's controls as a generate request (values as the page shows them; settingsOf checks them). */
function readControls() {
  const value = (id, selector = "input") => document.querySelector(`#${id} ${selector}`)?.value;
  const number = (id) => value(id, "input[type=number]");
  return {
    checkpoint: value("checkpoint"), label: value("class-name"), loops: number("loops"), steps: number("steps"),
    cfgScale: number("cfg-scale"), guideLoop: number("guide-loop"), seed: value("seed"),
    randomize: !!document.querySelector("#randomize input[type=checkbox]")?.checked,
    samples: Number(number("num-samples") ?? 1),
  };
}

/** Wire the runner (`element`, laid out by app/ui.py) to the Generate tab; trigger(events.result, payload) hands a
 *  finished sample to the server. */
export function mountGenerate(element, { trigger, events }) {
  const $ = (role) => element.querySelector(`[data-role="${role}"]`);
  let currentSweep = 0;
  let current = 0; // the newest page run; an older one stops at its next model call and reports nothing
  let running = false;
  let passing = false; // a click forwarded to the server's handler
  let failed = null; // why the page cannot run (a runtime that did not load): the server runs until switched back

  const onDevice = () => $("on-device").checked;
  const where = (text, error = false) => {
    $("where").textContent = text;
    $("where").classList.toggle("elt-error", error);
  };
  const showPage = (shown) => {
    $("output").hidden = !shown;
    document.body.classList.toggle("elt-on-device", shown); // hides the server's step image and strip
  };

  function forward(why, button = "#generate-btn") {
    if (why) failed = failed ?? (why === "runtime could not load" ? why : null);
    where(`on the server${why ? ` · ${why}` : ""}`);
    if (button === "#generate-btn") showPage(false);
    button = document.querySelector(button);
    passing = true;
    try {
      button?.click();
    } finally {
      passing = false;
    }
  }

  const measured = new Map(); // checkpoint -> this device's latency model, from the page's latest run of it
  const passes = (settings) => (settings.cfgScale > 0 ? 2 : 1); // rows per model call (guidance batches two)

  /** The checks and the model load every page run starts with: {info, entry, model}, or null when the click went
   *  to the server (saying why) or a newer run took over. */
  async function prepareRun(request, isCurrent, button) {
    const toServer = (why) => {
      if (isCurrent()) forward(why, button);
      return null;
    };
    await installed();
    const info = await catalog();
    const entry = info.checkpoints[request.checkpoint];
    if (!entry) throw new Error(`unknown checkpoint ${JSON.stringify(request.checkpoint)}; accepted: `
                                + Object.keys(info.checkpoints).join(", "));
    if (entry.server_only) return toServer(entry.server_only);
    if (button === "#generate-btn" && request.samples > 1) return toServer("several samples are made in one batch there");
    where(`loading ${request.checkpoint} into this page…`);
    let model;
    try {
      model = await loadModel(request.checkpoint);
    } catch (error) {
      console.error("ELT Studio page runtime:", error);
      return toServer(error.reason ?? "runtime could not load");
    }
    if (request.randomize) request.seed = Math.floor(Math.random() * (info.limits.max_seed + 1));
    if (model.manifest.family !== "diffusion" && !Number(request.guideLoop)) delete request.guideLoop;
    return isCurrent() ? { info, entry, model } : null;
  }

  /** One sample in the page with its step previews and loop strip: {image, backend, line, timings}, or null when a
   *  newer run took over.  Its timings become this device's latency model for the checkpoint (`measured`). */
  async function runSample(model, settings, isCurrent) {
    showPage(true);
    where(`running on this device · ${(window.eltStudio.runtime().backend ?? "").toUpperCase()}…`);
    let lastDrawn = -Infinity;
    const started = performance.now();
    const { tokens, loopMs, embedMs, headMs } = await sample(model, settings, {
      strip: true, isCurrent,
      onStep: async ({ step, steps, predicted }, previews) => {
        if (step < steps && performance.now() - lastDrawn < PREVIEW_MS) return;
        lastDrawn = performance.now();
        const [image, ...loops] = await decode(model, [predicted, ...previews]);
        if (!isCurrent()) return;
        $("image")._eltStopClip?.(); // a clip from the run before stops looping
        draw($("image"), [image], null, 256); // a clip's step image is its first frame
        draw($("strip"), loops, loops.map((_, i) => `loop ${i + 1}`), STRIP_TILE);
        $("step").textContent = `step ${step}/${steps}`;
      },
    });
    const sampled = performance.now();
    const [image] = await decode(model, [tokens]); // the final sample, its decode timed on its own
    const decodeMs = performance.now() - sampled;
    if (!isCurrent()) return null;
    if (model.manifest.clip) drawClip($("image"), image, { size: 256 }); // the finished clip loops, as the MP4
    const looped = loopMs.reduce((a, b) => a + b, 0);
    measured.set(settings.checkpoint, {
      msPerLoop: mean(loopMs), fixedMsPerStep: Math.max(0, (sampled - started - looped) / settings.steps),
      fixedMs: decodeMs, measuredPasses: passes(settings),
    });
    const { backend = "wasm", fallback } = window.eltStudio.runtime();
    const why = fallback ? ` · ${fallback.replace(/: running on WASM$/, "")}` : ""; // WebGPU was tried, and why not
    const line = `on this device · ${backend.toUpperCase()} · ${mean(loopMs).toFixed(1)} ms per loop${why}`;
    where(line);
    $("where").dataset.backend = backend;
    return { image, backend, line, timings: { loop_ms: loopMs, embed_ms: embedMs, head_ms: headMs,
                                              decode_ms: decodeMs, measured_ms: sampled - started + decodeMs } };
  }

  /** A page run's failure: a cancelled one says nothing; one that failed in the page (a lost WebGPU device, out
   *  of memory) goes to the server, which makes it instead. */
  function failedRun(error, isCurrent, button) {
    if (error instanceof Cancelled || !isCurrent()) return;
    console.error("ELT Studio page runtime:", error);
    forward(error.reason ?? `the page's run failed (${error.message})`, button);
  }

  async function runHere() {
    const id = ++current;
    const isCurrent = () => id === current;
    const request = readControls();
    running = true;
    try {
      const ready = await prepareRun(request, isCurrent, "#generate-btn");
      if (!ready) return;
      let settings;
      try {
        settings = settingsOf(request, ready.model.manifest, ready.info.limits);
      } catch (error) {
        return isCurrent() && where(error.message, true); // bad input: one message naming what is accepted
      }
      const done = await runSample(ready.model, settings, isCurrent);
      if (!done) return;
      $("where").dataset.run = String(id);
      trigger(events.result, {
        run: id, where: done.line, checkpoint: settings.checkpoint, class_name: settings.className,
        loops: settings.loops, steps: settings.steps, cfg_scale: settings.cfgScale, seed: settings.seed,
        guide_loop: settings.guideLoop, backend: done.backend, image: pagePixels(done.image), timings: done.timings,
      });
    } catch (error) {
      failedRun(error, isCurrent, "#generate-btn");
    } finally {
      if (isCurrent()) running = false;
    }
  }

  /** A latency budget on this device (budget.js): the deepest trained L whose predicted time fits, from the page's
   *  own timings of this checkpoint (a first run at L_max measures them when there are none yet), at the
   *  checkpoint's sampler defaults as the server's budget mode; the server shows the pick on its quality chart. */
  async function budgetHere() {
    const id = ++current;
    const isCurrent = () => id === current;
    const request = readControls();
    const budgetMs = document.querySelector("#budget-ms input")?.value;
    running = true;
    try {
      const ready = await prepareRun(request, isCurrent, "#budget-btn");
      if (!ready) return;
      const { model, info, entry } = ready, m = model.manifest;
      let base, choice;
      try {
        base = settingsOf({ ...request, loops: m.max_loops, steps: m.sampler.steps, cfgScale: m.sampler.cfg_scale,
                            guideLoop: undefined }, m, info.limits);
        if (!(Number(budgetMs) > 0)) throw new Error(`budget must be a number of ms > 0, got ${JSON.stringify(budgetMs)}`);
      } catch (error) {
        return isCurrent() && where(error.message, true);
      }
      if (!measured.has(m.checkpoint) && !(await runSample(model, base, isCurrent))) return; // the first run measures
      const timing = measured.get(m.checkpoint);
      try {
        choice = chooseLoops(entry, timing, { steps: base.steps, passes: passes(base), budgetMs: Number(budgetMs) });
      } catch (error) {
        return isCurrent() && where(error.message, true); // below the fastest run here: says how long that takes
      }
      const done = await runSample(model, { ...base, loops: choice.loops }, isCurrent);
      if (!done) return;
      const scale = passes(base) / timing.measuredPasses;
      $("where").dataset.budget = String(id);
      trigger(events.budget, {
        checkpoint: base.checkpoint, class_name: base.className, seed: base.seed, budget_ms: Number(budgetMs),
        loops: choice.loops, predicted_ms: choice.predictedMs, backend: done.backend, image: pagePixels(done.image),
        timings: done.timings, page_model: { fixed_ms: timing.fixedMs, per_step_ms: timing.fixedMsPerStep * scale,
                                             per_loop_ms: timing.msPerLoop * scale, margin: MIN_MARGIN },
      });
    } catch (error) {
      failedRun(error, isCurrent, "#budget-btn");
    } finally {
      if (isCurrent()) running = false;
    }
  }

  /** The any-time sweep in the page: full runs at L = 1 … L_max + extra for the tab's class and seed (classifier-
   *  free guidance, as the server's sweep), each tile handed to the server's `page_tile` event as it is made. */
  async function sweepHere() {
    const id = ++currentSweep;
    const isCurrent = () => id === currentSweep;
    const request = readControls();
    try {
      await installed();
      const info = await catalog();
      const entry = info.checkpoints[request.checkpoint];
      if (!entry || entry.server_only) return forward(entry?.server_only, "#sweep-btn");
      let model;
      try {
        model = await loadModel(request.checkpoint);
      } catch (error) {
        return isCurrent() && forward(error.reason ?? "runtime could not load", "#sweep-btn");
      }
      const extra = Number(document.querySelector("#sweep-extra input[type=number]")?.value ?? 2);
      const [low, high] = loopRange(entry);
      const last = Math.min(entry.max_loops + (Number.isInteger(extra) && extra >= 0 ? extra : 2), high);
      const runs = [];
      try {
        for (let loops = low; loops <= last; loops++) {
          runs.push(settingsOf({ ...request, loops, guideLoop: 0 }, model.manifest, info.limits));
        }
      } catch (error) {
        return isCurrent() && where(error.message, true);
      }
      for (const settings of runs) {
        where(`sweep on this device · L = ${settings.loops} of ${last}…`);
        const started = performance.now();
        const { tokens } = await sample(model, settings, { isCurrent });
        const [image] = await decode(model, [tokens]);
        if (!isCurrent()) return;
        trigger(events.tile, {
          sweep: id, first: settings.loops === low, last: settings.loops === last, checkpoint: settings.checkpoint,
          class_name: settings.className, loops: settings.loops, steps: settings.steps, cfg_scale: settings.cfgScale,
          seed: settings.seed, ms: performance.now() - started,
          image: pagePixels(image),
        });
      }
      const backend = window.eltStudio.runtime().backend ?? "wasm";
      where(`sweep on this device · ${backend.toUpperCase()} · L = ${low} … ${last}`);
      $("where").dataset.sweep = String(id);
    } catch (error) {
      if (error instanceof Cancelled || !isCurrent()) return;
      console.error("ELT Studio page runtime:", error);
      forward(error.reason ?? `the page's sweep failed (${error.message})`, "#sweep-btn");
    }
  }

  // Capture phase: this sees a click before Gradio's own handler on the button, and stops it when the page runs.
  document.addEventListener("click", (event) => {
    const button = event.target.closest?.("#generate-btn, #sweep-btn, #budget-btn");
    if (passing || !button) return;
    const byAccuracy = button.id === "budget-btn"  // "fastest reaching accuracy" plans on the server's metrics
      && !document.querySelector("#budget-mode input:checked")?.value?.startsWith("budget");
    if (!onDevice() || failed || byAccuracy) {
      where(`on the server${failed ? ` · ${failed}` : ""}`);
      if (button.id === "generate-btn") showPage(false);
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
    if (button.id === "generate-btn") runHere();
    else if (button.id === "budget-btn") budgetHere();
    else sweepHere();
  }, true);
  // a moved loop slider while the page runs: the newer run replaces the older at once
  const onLoops = (event) => {
    if (running && onDevice() && event.target.closest?.("#loops")) setTimeout(runHere, 0);
  };
  document.addEventListener("change", onLoops, true);
  $("on-device").addEventListener("change", () => { failed = null; where("runs on this device when it can"); });
  $("on-server").addEventListener("change", () => { where("runs on the server"); showPage(false); });
  installed().then(catalog).then(() => where("runs on this device when it can")).catch(() => {
    failed = "runtime could not load";
    where(`runs on the server · ${failed}`);
  });
}
