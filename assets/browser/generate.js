// The Generate tab's page runtime: when the page can run the chosen checkpoint (runtime loaded, export present),
// the Generate button runs it here (studio.js) instead of on the server; otherwise the click goes on to the
// server's handler as before.  The visitor can choose either ("Run on: this device / server"), and one line
// always says where the work ran and, after a fallback, why.
//
// The settings are read from the tab's own controls, so a fallback to the server loses none.  The page draws
// its step previews and the in-step loop strip itself; the finished sample goes to the server's `page_result`
// event with the page's timings, which fills the same outputs as a server run (final image, summary with
// GFLOPs, the PNG with its settings, the latency-per-loop chart) without any model work.  A run started later
// (another click, or a moved loop slider mid-run) cancels the one before: only the newest run reports.

import { loopRange } from "./loops.js";
import { Cancelled, catalog, decode, draw, loadModel, mean, sample, settingsOf } from "./studio.js";

const PREVIEW_MS = 50; // the step image and strip are redrawn at most this often (and after the last step)
const STRIP_TILE = 96;

function base64(rgba) {
  // the RGB bytes of an RGBA image, base64 (what Studio.page_result reads)
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
    rgb[q] = rgba[p];
    rgb[q + 1] = rgba[p + 1];
    rgb[q + 2] = rgba[p + 2];
  }
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

  async function runHere() {
    const id = ++current;
    const isCurrent = () => id === current;
    const request = readControls();
    running = true;
    try {
      await installed();
      const info = await catalog();
      const entry = info.checkpoints[request.checkpoint];
      if (!entry) throw new Error(`unknown checkpoint ${JSON.stringify(request.checkpoint)}; accepted: `
                                  + Object.keys(info.checkpoints).join(", "));
      if (entry.server_only) return isCurrent() && forward(entry.server_only);
      if (request.samples > 1) return isCurrent() && forward("several samples are made in one batch there");
      where(`loading ${request.checkpoint} into this page…`);
      let model;
      try {
        model = await loadModel(request.checkpoint);
      } catch (error) {
        console.error("ELT Studio page runtime:", error);
        return isCurrent() && forward(error.reason ?? "runtime could not load");
      }
      if (model.manifest.clip) return isCurrent() && forward("clips are drawn on the server");
      if (request.randomize) request.seed = Math.floor(Math.random() * (info.limits.max_seed + 1));
      if (model.manifest.family !== "diffusion" && !Number(request.guideLoop)) delete request.guideLoop;
      let settings;
      try {
        settings = settingsOf(request, model.manifest, info.limits);
      } catch (error) {
        return isCurrent() && where(error.message, true); // bad input: one message naming what is accepted
      }
      if (!isCurrent()) return;
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
          draw($("image"), [image], null, 256);
          draw($("strip"), loops, loops.map((_, i) => `loop ${i + 1}`), STRIP_TILE);
          $("step").textContent = `step ${step}/${steps}`;
        },
      });
      const sampled = performance.now();
      const [image] = await decode(model, [tokens]); // the final sample, its decode timed on its own
      const decodeMs = performance.now() - sampled;
      if (!isCurrent()) return;
      const backend = window.eltStudio.runtime().backend ?? "wasm";
      const line = `on this device · ${backend.toUpperCase()} · ${mean(loopMs).toFixed(1)} ms per loop`;
      where(line);
      $("where").dataset.backend = backend;
      $("where").dataset.run = String(id);
      trigger(events.result, {
        run: id, where: line, checkpoint: settings.checkpoint, class_name: settings.className,
        loops: settings.loops, steps: settings.steps, cfg_scale: settings.cfgScale, seed: settings.seed,
        guide_loop: settings.guideLoop, backend,
        image: { width: image.width, height: image.height, rgb: base64(image.rgba) },
        timings: { loop_ms: loopMs, embed_ms: embedMs, head_ms: headMs, decode_ms: decodeMs,
                   measured_ms: sampled - started + decodeMs },
      });
    } catch (error) {
      if (error instanceof Cancelled || !isCurrent()) return;
      console.error("ELT Studio page runtime:", error);
      // a run that failed in the page (a lost WebGPU device, out of memory): the server makes it instead
      forward(error.reason ?? `the page's run failed (${error.message})`);
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
      if (model.manifest.clip) return isCurrent() && forward("clips are drawn on the server", "#sweep-btn");
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
          image: { width: image.width, height: image.height, rgb: base64(image.rgba) },
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
    const button = event.target.closest?.("#generate-btn, #sweep-btn");
    if (passing || !button) return;
    if (!onDevice() || failed) {
      where(`on the server${failed ? ` · ${failed}` : ""}`);
      if (button.id === "generate-btn") showPage(false);
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
    if (button.id === "generate-btn") runHere();
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
