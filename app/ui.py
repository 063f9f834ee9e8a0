"""ELT Studio's Gradio 6 layout and event wiring — no tensors: every action goes through `app.service`.

Each tab is one function that lays out its components and wires its events; `build_demo` stacks them.
Admin fine-tuning is not a tab here: it is a separate Gradio app (app/admin.py) mounted at /admin behind
its own login, so the public Blocks registers none of its handlers (a hidden tab would not be access
control, since `gradio_client` and plain HTTP reach every registered handler).

Gradio practices used throughout: streaming generator handlers that yield once per
sampling step (images throttled by the service, `gr.skip()` otherwise); one concurrency group for
model work; a bounded queue (set by app.py); `.release` on the loop slider; a per-session stop flag
plus `cancels`; raw inputs (`preprocess=False`) validated by the service, whose errors become gr.Error.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app import charts, static
from app.service import (EXTRA_SWEEP_LOOPS, MAX_CFG_SCALE, MAX_SAMPLES, MAX_SEED, MAX_SPOT_SAMPLES, MAX_STEPS,
                         NO_GENERATOR, Final, GeneratorView, Overview, Progress, Step, Stopped, StopRequested, Studio,
                         StudioError, Tile, Waiting, metrics_rows, metrics_series)

COMPUTE = "compute"  # the one concurrency group of model work
COMPUTE_LIMIT = 1  # one model job at a time; the other core serves streaming and encoding, or an admin run
CSS_FILE = Path(__file__).resolve().parent.parent / "assets" / "studio.css"
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                          font_mono=["ui-monospace", "monospace"])
SKIP = gr.skip
SKIPPED = SKIP()  # what gr.skip() returns
FINISHED = gr.components._Keywords.FINISHED_ITERATING
GUIDANCE_INFO = "0 = off (one pass per step instead of two); each checkpoint sets its own default"
GUIDE_LOOP_INFO = ("0 = classifier-free guidance (conditional against unconditional, two passes per step). "
                   "k ≥ 1 = loop guidance: the prediction at L loops pushed away from the same pass's prediction "
                   "at loop k < L, one pass per step (half the GFLOPs). Generate only; the sweep uses the default")
BUDGET_MODES = ("budget (ms)", "fastest reaching accuracy")
NO_RESET: list = []  # a slider's ↺ would return to the first checkpoint's value, not the chosen one's default


class Blocks(gr.Blocks):
    """gr.Blocks whose skipped outputs cost the server nothing.

    Gradio 6.31 treats `gr.skip()` (``{"__type__": "update"}``) as a property update: for every skipped
    output of every streamed update it builds a new component and its API schema (pydantic), 1-11 ms each
    and ≈ 34 ms for one Generate step that skips 8 of its 10 outputs (measured while training held both
    cores), all on the one event-loop thread that serves every visitor: under 24 visitors that thread was
    busy 85 % of the time, 28 % of it in this path (py-spy; docs/EXPERIMENTS.md).  An empty update changes
    no property, so here it bypasses that path and reaches the page as the same ``{"__type__": "update"}``,
    which the page ignores.
    """

    async def postprocess_data(self, block_fn, predictions, state):
        outputs, skipped = block_fn.outputs, []
        if isinstance(predictions, (list, tuple)) and len(predictions) == len(outputs):
            skipped = [i for i, value in enumerate(predictions)
                       if isinstance(value, dict) and value == SKIPPED and not outputs[i].stateful]
        if not skipped:
            return await super().postprocess_data(block_fn, predictions, state)
        # FINISHED_ITERATING: Gradio's own "nothing to process" marker for an output (it becomes None) ...
        predictions = [FINISHED if i in skipped else value for i, value in enumerate(predictions)]
        output = await super().postprocess_data(block_fn, predictions, state)
        for i in skipped:  # ... and the page gets the empty update it would have got
            output[i] = SKIP()
        return output


def css() -> str:
    return CSS_FILE.read_text() if CSS_FILE.is_file() else ""


# -- helpers -----------------------------------------------------------------------------------------
def as_gradio_errors(fn: Callable) -> Callable:
    """Turn StudioError (bad input, unusable checkpoint) into gr.Error, for plain and generator handlers."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except StudioError as error:
                raise gr.Error(str(error), title="Invalid request") from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StudioError as error:
            raise gr.Error(str(error), title="Invalid request") from None
    return call


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


def loops_note(view: GeneratorView, loops: Any) -> str:
    kind, text = view.loops_note(loops)
    return f"<span class='{kind}'>{text}</span>"


def quality_for(view: GeneratorView | None, loops: Any = None, chosen: dict[str, Any] | None = None) -> Any:
    if view is None:
        return charts.message_figure("choose a checkpoint")
    current = int(loops) if isinstance(loops, (int, float)) else None
    return charts.quality_figure(view.quality, current_loops=current, chosen=chosen,
                                 title=f"Quality vs compute — {view.name} (from metrics.json)")


def budget_summary(result: dict[str, Any]) -> str:
    plan, model = result["plan"], result["latency_model"]
    if result["budget_ms"] is not None:
        verdict = "✓ within budget" if result["met"] else "✗ over budget"
        head = (f"**{result['achieved_ms']:.0f} ms achieved** · budget **{result['budget_ms']:g} ms** · {verdict}")
    else:
        head = (f"**{result['achieved_ms']:.0f} ms achieved** · fastest run reaching accuracy "
                f"**{result['target_accuracy']:g}**")
    quality = (f"measured accuracy {plan.accuracy:.3f}" if plan.accuracy is not None
               else "quality not measured at these steps")
    chosen = f"chosen **{plan.label}** ({plan.reason}; {quality}; predicted {plan.predicted_ms:.0f} ms)"
    if model.get("page"):  # planned in the visitor's page from its own first run (assets/browser/budget.js)
        return (f"{head}  \n{chosen}  \nlatency model of this device, from this page's first run: "
                f"ms ≈ {model['fixed_ms']:.1f} + {model['per_step_ms']:.2f}·steps + {model['per_loop_ms']:.2f}·Σ loops, "
                f"× margin {model['margin']:.2f}")
    return (f"{head}  \n{chosen}  \n"
            f"latency model of this machine, fitted {model['fitted_at']} from {model['fitting_runs']} runs: "
            f"ms ≈ {model['fixed_ms']:.1f} + {model['per_step_ms']:.2f}·steps + {model['per_loop_ms']:.2f}·Σ loops, "
            f"× margin {model['margin']:.2f} (served {model['scale']:.2f}× the fit, median of the latest runs, "
            f"times the p{model['percentile']} noise; {model['observed_runs']} runs observed since)")


def checkpoint_list(overview: Overview) -> str:
    lines = ["| checkpoint | kind | status |", "|---|---|---|"]
    for name, kind, error in overview.rows:
        status = "✓ ready" if error is None else f"✗ {error}"
        lines.append(f"| `{name}` | {kind} | {status.replace('|', '/')} |")
    if len(lines) == 2:
        lines.append("| — | — | no checkpoint folders found |")
    return "\n".join(lines)


def banner(overview: Overview) -> str:
    bad = overview.unusable
    text = f"{len(overview.generators)} generator checkpoint(s) ready"
    if bad:
        text += f" · **{len(bad)} unusable** ({', '.join(bad)}) — see the Checkpoints tab for why"
    return text


def clip_player(label: str, visible: bool, elem_id: str) -> gr.Video:
    """A looping, autoplaying H.264 MP4 (shown for video checkpoints only)."""
    return gr.Video(label=label, autoplay=True, loop=True, interactive=False, height=300, visible=visible,
                    elem_id=elem_id)


def gallery_columns(columns: int, video: bool) -> int:
    """Clips are shown as wide frame strips: one per gallery row."""
    return 1 if video else columns


def sampler_values(view: GeneratorView) -> tuple[Any, Any]:
    """Steps and guidance sliders set to a checkpoint's own sampling defaults (its config.json `sampler`)."""
    return gr.Slider(value=view.sampler["steps"]), gr.Slider(value=view.sampler["cfg_scale"])


def guide_loop_slider(view: GeneratorView, **kwargs: Any) -> Any:
    """The loop-guidance control: shown for a family that has it (diffusion), up to the deepest loop allowed."""
    guide_loop = view.sampler["guide_loop"]
    return gr.Slider(maximum=view.guide_loop_max, value=guide_loop or 0, visible=guide_loop is not None, **kwargs)


def guidance_text(settings: dict[str, Any]) -> str:
    """How a run was guided, from its settings: `guidance 2` or `loop guidance 2 from loop 2`."""
    if settings.get("guide_loop"):
        return f"loop guidance {settings['cfg_scale']:g} from loop {settings['guide_loop']}"
    return f"guidance {settings['cfg_scale']:g}"


def as_path(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(kw_only=True)
class Outputs:
    """A handler's update by output name, a field per output component in wiring order (unset: gr.skip()), so
    adding an output cannot shift the others: `values()` is what the handler returns, `wire()` the outputs list."""

    def values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def wire(cls, components: dict[str, Any]) -> list:
        return [components[f.name] for f in fields(cls)]


def outputs(name: str, names: str, doc: str) -> type[Outputs]:
    """An Outputs record with these output names (space-separated, in wiring order)."""
    record = make_dataclass(name, [(n, Any, field(default_factory=SKIP)) for n in names.split()], bases=(Outputs,),
                            kw_only=True)
    record.__doc__ = doc
    return record


GenerateOutputs = outputs("GenerateOutputs",
                          "preview strip results summary files latency seed clip details last_result",
                          "/generate's outputs (its API returns them in this order).")
CheckpointOutputs = outputs("CheckpointOutputs",
                            "class_name loops note quality clip sweep_clip results sweep_tiles steps cfg_scale "
                            "guide_loop",
                            "What the Generate tab updates when another checkpoint is chosen.")


# -- Generate tab (+ any-time sweep) -----------------------------------------------------------------
def generate_concurrency(studio: Studio) -> dict[str, Any]:
    """/generate's concurrency: with batching every visitor's handler runs at once (it mostly waits for the
    model worker, which batches them and keeps its own line); without, one model job at a time."""
    slots = studio.concurrent_generations
    if slots <= 1:
        return {"concurrency_id": COMPUTE, "concurrency_limit": COMPUTE_LIMIT}
    return {"concurrency_id": "generate", "concurrency_limit": slots}


def generate_tab(studio: Studio, overview: Overview, compute: list, stops: list) -> dict[str, Any]:
    chosen = studio.view(overview.default_generator)
    view = chosen or NO_GENERATOR
    max_loops, classes, video, sampler = view.max_loops, view.classes, view.video, view.sampler
    with gr.Tab("Generate"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                checkpoint = gr.Dropdown(overview.generators, value=overview.default_generator, label="Checkpoint",
                                         elem_id="checkpoint")
                class_name = gr.Dropdown(classes, value=classes[0] if classes else None, label="Class",
                                         info="type to search", filterable=True, elem_id="class-name")
                loops = gr.Slider(*view.allowed_loops, value=max_loops, step=1, label=view.loops_label,
                                  elem_id="loops")
                note = gr.Markdown(loops_note(view, max_loops), elem_id="loops-note")
                steps = gr.Slider(1, MAX_STEPS, value=sampler["steps"], step=1, label="Sampling steps",
                                  elem_id="steps", buttons=NO_RESET)
                cfg_scale = gr.Slider(0, MAX_CFG_SCALE, value=sampler["cfg_scale"], step=0.25, label="Guidance scale",
                                      info=GUIDANCE_INFO, elem_id="cfg-scale", buttons=NO_RESET)
                guide_loop = guide_loop_slider(view, minimum=0, step=1, label="Guide from loop", info=GUIDE_LOOP_INFO,
                                               elem_id="guide-loop", buttons=NO_RESET)
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", min_width=120,
                                     elem_id="seed")
                    randomize = gr.Checkbox(False, label="Randomize seed", min_width=120, elem_id="randomize")
                num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Number of samples",
                                        elem_id="num-samples")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                with gr.Accordion("Latency budget", open=False, elem_id="budget"):
                    budget_mode = gr.Radio(list(BUDGET_MODES), value=BUDGET_MODES[0], label="Mode", show_label=False,
                                           elem_id="budget-mode")
                    with gr.Row():
                        budget_ms = gr.Number(150, minimum=0, label="Budget (ms)", min_width=120, elem_id="budget-ms")
                        target = gr.Number(0.8, minimum=0, maximum=1, step=0.01, label="Target accuracy",
                                           min_width=120)
                    budget_run = gr.Button("Generate within budget", elem_id="budget-btn")
                    gr.Markdown("Picks L, steps (and a schedule) from the checkpoint's metrics.json and a latency "
                                "model fitted on this machine at first use (a few seconds), then generates one "
                                "sample without previews.", elem_classes="note")
                summary = gr.Markdown("Pick a class and press **Generate**.", label="Summary", elem_id="summary",
                                      min_height=60)
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                gr.Markdown("Raw resolution, as `python -m core.sample` writes them: PNGs (settings in the "
                            "`elt-studio` text chunk) or, for video, MP4s (settings in the `comment` tag) plus a "
                            "lossless PNG strip of every frame.", elem_classes="note")
                with gr.Accordion("Run details (JSON)", open=False):
                    details = gr.JSON(label="Run details", show_label=False)
            with gr.Column(scale=2):
                runner = page_runner(studio)
                with gr.Row():
                    preview = gr.Image(label="Current sampling step", format="png", interactive=False, height=300,
                                       elem_id="preview")
                    clip = clip_player("Final clip (loops)", video, "clip")
                    results = gr.Gallery(label="Final result", format="png", columns=gallery_columns(4, video),
                                         height=300, interactive=False, object_fit="contain", preview=False,
                                         elem_id="results")
                strip = gr.Image(label="In-step loop strip", format="png", interactive=False, height=170,
                                 elem_id="loop-strip")
                gr.Markdown("**In-step previews**: the prediction after loop 1 … L *inside the latest sampling step*, "
                            "all from ONE forward pass — not the image a full run at that L gives (the sweep below "
                            "shows those).", elem_classes="note")
                settle = gr.Plot(label="Per-token view: loop at which each token settled", elem_id="settle")
                latency = gr.Plot(label="Latency per loop", elem_id="latency")
        gr.Markdown("### Any-time sweep\nThe same class and seed as *full runs* at L = 1 … L_max and beyond, "
                    "tile by tile — each labelled with loops, measured ms and GFLOPs.")
        with gr.Row():
            extra = gr.Slider(0, EXTRA_SWEEP_LOOPS, value=EXTRA_SWEEP_LOOPS, step=1, label="Loop counts beyond L_max",
                              scale=2, elem_id="sweep-extra")
            sweep_run = gr.Button("Run sweep", elem_id="sweep-btn", scale=1)
            sweep_stop = gr.Button("Stop", variant="stop", scale=1)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                sweep_tiles = gr.Gallery(label="Any-time strip", format="png", columns=gallery_columns(3, video),
                                         height=420, object_fit="contain", interactive=False, elem_id="sweep")
                sweep_clip = clip_player("Any-time clips (one column per loop count)", video, "sweep-clip")
            quality = gr.Plot(value=quality_for(chosen, max_loops), label="Quality vs compute",
                              scale=4, elem_id="quality")
        with gr.Accordion("Sweep details (JSON)", open=False):
            sweep_details = gr.JSON(label="Sweep details", show_label=False)
        last_result = gr.State(None)  # this session's last completed result, kept server-side (kept on Stop)
        page_sweep = gr.State(None)  # the tiles of the sweep the page is making, and the run folder keeping them

    @as_gradio_errors
    def generate(checkpoint, class_name, loops, steps, cfg_scale, seed, randomize_seed, num_samples, last,
                 guide_loop=0, request: gr.Request = None, progress=gr.Progress()):
        if randomize_seed is True:
            seed = studio.random_seed()
        # the latest streamed images; never re-sent unchanged, since Gradio rewrites its cached copy of an
        # identical image in place and a browser still downloading it would get a truncated file
        shown = {"preview": None, "strip": None, "step": 0}
        with studio.job(session(request)) as stop_flag:
            events = studio.generate(checkpoint, class_name, loops, steps, cfg_scale, seed, num_samples, guide_loop,
                                     stop=stop_flag)
            for event in events:
                if isinstance(event, Waiting):
                    progress(0.0, desc=f"in line for the model: {event.ahead} ahead")
                    yield GenerateOutputs(details={"run": event.run, "queued": event.ahead, "final": False}).values()
                elif isinstance(event, Step):
                    progress((event.step, event.steps), desc=f"sampling step {event.step}/{event.steps}")
                    update = GenerateOutputs(details={"run": event.run, "step": event.step, "steps": event.steps,
                                                      "elapsed_ms": round(event.elapsed_ms, 1), "final": False})
                    if event.preview is not None:
                        shown.update(preview=event.preview, strip=event.strip, step=event.step)
                        update.preview, update.strip = shown["preview"], shown["strip"]
                    if event.step == 1:
                        update.seed = seed
                    yield update.values()
                elif isinstance(event, Stopped):
                    kept = last or {"results": None, "files": None, "latency": None, "clip": None}
                    yield GenerateOutputs(
                        results=kept["results"], files=kept["files"], latency=kept["latency"], seed=seed,
                        clip=kept["clip"], last_result=last,
                        summary=(f"**Stopped** after step {event.step}/{event.steps}; the last completed result "
                                 "is kept."),
                        details={"run": event.run, "step": event.step, "steps": event.steps, "stopped": True,
                                 "final": True}).values()
                elif isinstance(event, Final):
                    result = final_result(event)
                    update = GenerateOutputs(results=result["results"], summary=result["summary"],
                                             files=result["files"], latency=result["latency"], seed=seed,
                                             clip=result["clip"], details=result["details"], last_result=result)
                    if shown["step"] != event.settings["steps"]:  # else the last step's preview is the final image
                        update.preview = event.preview
                    yield update.values()

    def budget_outputs(checkpoint, result: dict[str, Any], by_budget: bool = True):
        """A budget run's outputs (the server's, or one the page planned and made): image, summary, files, the
        quality chart with the pick marked, details, seed."""
        plan, settings = result["plan"], result["settings"]
        details = {**settings, "final": True, "budget_mode": "budget_ms" if by_budget else "target_accuracy",
                   "budget_ms": result["budget_ms"], "target_accuracy": result["target_accuracy"],
                   "achieved_ms": round(result["achieved_ms"], 1), "met": result["met"],
                   "chosen": {"loops": plan.loops, "steps": plan.steps,
                              "schedule": list(plan.schedule) if plan.schedule else None,
                              "predicted_ms": round(plan.predicted_ms, 1), "measured_accuracy": plan.accuracy,
                              "reason": plan.reason},
                   "latency_model": result["latency_model"], "gflops_per_sample": round(result["gflops"], 4),
                   "files": [f.name for f in result["files"]]}
        figure = quality_for(studio.view(checkpoint), None, result["point"])
        return ([(str(result["image"]), f"{plan.label} · {result['achieved_ms']:.0f} ms")], budget_summary(result),
                [str(f) for f in result["files"]], figure, details, settings["seed"])

    @as_gradio_errors
    def generate_budget(checkpoint, class_name, mode, budget, target_accuracy, seed, randomize_seed):
        if randomize_seed is True:
            seed = studio.random_seed()
        by_budget = mode != BUDGET_MODES[1]
        result = studio.generate_budget(checkpoint, class_name, budget if by_budget else None,
                                        None if by_budget else target_accuracy, seed)
        return budget_outputs(checkpoint, result, by_budget)

    @as_gradio_errors
    def page_budget(evt: gr.EventData):
        """A budget run the page planned from its own timings and made (assets/browser/generate.js)."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        result = studio.page_budget(data.get("checkpoint"), data.get("class_name"), data.get("seed"),
                                    data.get("budget_ms"), data.get("loops"), data.get("predicted_ms"),
                                    data.get("page_model"), data.get("image"), data.get("timings"), data.get("backend"))
        return budget_outputs(data.get("checkpoint"), result)

    def final_result(event: Final) -> dict[str, Any]:
        s = event.settings
        extrapolated = " (extrapolation)" if s["loops"] > event.latency["max_loops"] else ""
        clips = f" · clips of {event.frames} frames" if event.frames else ""
        summary = (f"**{s['class']}** · seed **{s['seed']}** · **{s['loops']} loops**{extrapolated} · "
                   f"{s['steps']} steps · {guidance_text(s)} · {s['num_samples']} sample(s){clips}  \n"
                   f"time {event.model_ms:.0f} ms model ({event.wall_ms:.0f} ms with previews) · "
                   f"**{event.gflops:.3f} GFLOPs**/sample · {s['checkpoint']} · {s['precision']}")
        details = {"run": event.run, "final": True, "stopped": False, **s, "model_ms": round(event.model_ms, 1),
                   "wall_ms": round(event.wall_ms, 1), "gflops_per_sample": round(event.gflops, 4),
                   "files": [f.name for f in event.files], "frames": event.frames}
        return {"results": [(str(image), f"#{i + 1} · seed {s['seed']}") for i, image in enumerate(event.image_files)],
                "summary": summary, "files": [str(f) for f in event.files], "clip": as_path(event.video),
                "latency": charts.latency_figure(event.latency), "details": details,
                "settle": None if event.settle is None else charts.settle_figure(event.settle, event.token_grid,
                                                                                    s["loops"])}

    @as_gradio_errors
    def sweep(checkpoint, class_name, loops, steps, cfg_scale, seed, extra_loops, request: gr.Request,
              progress=gr.Progress()):
        tiles: list[Tile] = []

        def shown(figure: Any, final: bool, **more) -> tuple:
            return ([(as_path(t.image_file), t.caption) for t in tiles], figure,
                    as_path(tiles[-1].grid_video) if tiles else None,
                    {"tiles": [tile_record(t) for t in tiles], "final": final, **more})

        with studio.job(session(request)) as stop_flag:
            events = studio.sweep(checkpoint, class_name, steps, cfg_scale, seed, extra_loops, stop=stop_flag)
            figure = quality_for(studio.view(checkpoint), loops)
            yield shown(figure, False)
            for event in events:
                if isinstance(event, Progress):
                    progress((event.done * event.steps + event.step, event.total * event.steps), desc=event.text)
                    yield SKIP(), SKIP(), SKIP(), SKIP()
                else:
                    tiles.append(event)
                    yield shown(SKIP(), False)
            yield shown(figure, True, stopped=stop_flag.is_set())

    @as_gradio_errors
    def page_result(last, evt: gr.EventData):
        """A sample the page made (assets/browser/generate.js) shown as a server run's Final: no model work."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        event = studio.page_result(data.get("checkpoint"), data.get("class_name"), data.get("loops"),
                                   data.get("steps"), data.get("cfg_scale"), data.get("seed"), data.get("guide_loop"),
                                   data.get("image"), data.get("timings"), data.get("backend"))
        result = final_result(event)
        result["details"].update(where=str(data.get("where", ""))[:200], page_run=data.get("run"))
        return GenerateOutputs(preview=event.preview, results=result["results"], summary=result["summary"],
                               files=result["files"], latency=result["latency"], seed=event.settings["seed"],
                               clip=result["clip"], details=result["details"], last_result=result).values()

    @as_gradio_errors
    def page_tile(kept, evt: gr.EventData):
        """A sweep tile the page made, added to the any-time strip (a first tile starts a new strip)."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        if not kept or data.get("first"):
            kept = {"run": None, "tiles": []}
        tile, run = studio.page_tile(data.get("checkpoint"), data.get("class_name"), data.get("loops"),
                                     data.get("steps"), data.get("cfg_scale"), data.get("seed"), data.get("image"),
                                     data.get("ms"), kept["run"], kept["tiles"])
        kept = {"run": run, "tiles": [*kept["tiles"], tile]}
        tiles = kept["tiles"]
        return ([(as_path(t.image_file), t.caption) for t in tiles],
                {"tiles": [tile_record(t) for t in tiles], "final": bool(data.get("last")), "where": "on this device"},
                kept, as_path(tile.grid_video) if tile.grid_video else SKIP())

    def on_checkpoint(checkpoint, class_name, loops):
        view = studio.view(checkpoint)
        if view is None:
            return CheckpointOutputs(quality=charts.message_figure("choose a generator checkpoint")).values()
        classes, video, loops = view.classes, view.video, view.clamp_loops(loops)
        steps, cfg_scale = sampler_values(view)
        return CheckpointOutputs(
            class_name=gr.Dropdown(choices=classes, value=class_name if class_name in classes else classes[0]),
            loops=gr.Slider(*view.allowed_loops, value=loops, label=view.loops_label),
            note=loops_note(view, loops), quality=quality_for(view, loops),
            clip=gr.Video(visible=video), sweep_clip=gr.Video(visible=video),
            results=gr.Gallery(columns=gallery_columns(4, video)),
            sweep_tiles=gr.Gallery(columns=gallery_columns(3, video)),
            steps=steps, cfg_scale=cfg_scale, guide_loop=guide_loop_slider(view)).values()

    def on_loops(checkpoint, loops):
        view = studio.view(checkpoint)
        if view is None:
            return SKIP(), SKIP()
        return loops_note(view, loops), quality_for(view, loops)

    generate_outputs = GenerateOutputs.wire(dict(preview=preview, strip=strip, results=results, summary=summary,
                                                 files=files, latency=latency, seed=seed, clip=clip, details=details,
                                                 last_result=last_result))
    compute.append(run.click(generate, [checkpoint, class_name, loops, steps, cfg_scale, seed, randomize, num_samples,
                                        last_result, guide_loop], generate_outputs,
                             api_name="generate", **generate_concurrency(studio), preprocess=False,
                             show_progress_on=[summary]))
    # in order, one at a time: a newer page run's result is never overwritten by an older one's
    # trigger modes: a result that arrives while one is shown waits and only the newest is shown (always_last);
    # every sweep tile is kept (multiple: Gradio's default "once" drops a tile that arrives while one is handled)
    page_event = runner.page_result(page_result, [last_result], generate_outputs, api_visibility="private",
                                    concurrency_id="page-result", concurrency_limit=1, preprocess=False,
                                    trigger_mode="always_last")
    page_event.then(lambda last: (last or {}).get("settle", SKIP()), [last_result], [settle],
                    api_visibility="private", queue=False)
    runner.page_budget(page_budget, None, [results, summary, files, quality, details, seed], api_visibility="private",
                       concurrency_id="page-result", concurrency_limit=1, preprocess=False, trigger_mode="always_last")
    runner.page_tile(page_tile, [page_sweep], [sweep_tiles, sweep_details, page_sweep, sweep_clip],
                     api_visibility="private",
                     concurrency_id="page-result", concurrency_limit=1, preprocess=False, trigger_mode="multiple")
    # the settle heat-map follows from the kept result, so /generate's API outputs stay as they were
    compute[-1].then(lambda last: (last or {}).get("settle", SKIP()), [last_result], [settle],
                     api_visibility="private", queue=False)
    compute.append(budget_run.click(generate_budget, [checkpoint, class_name, budget_mode, budget_ms, target, seed,
                                                      randomize],
                                    [results, summary, files, quality, details, seed], api_name="generate_budget",
                                    concurrency_id=COMPUTE, concurrency_limit=COMPUTE_LIMIT, preprocess=False,
                                    show_progress_on=[summary]))
    compute.append(sweep_run.click(sweep, [checkpoint, class_name, loops, steps, cfg_scale, seed, extra],
                                   [sweep_tiles, quality, sweep_clip, sweep_details], api_name="sweep",
                                   concurrency_id=COMPUTE, concurrency_limit=COMPUTE_LIMIT, preprocess=False,
                                   show_progress_on=[sweep_tiles]))
    checkpoint_outputs = CheckpointOutputs.wire(dict(
        class_name=class_name, loops=loops, note=note, quality=quality, clip=clip, sweep_clip=sweep_clip,
        results=results, sweep_tiles=sweep_tiles, steps=steps, cfg_scale=cfg_scale, guide_loop=guide_loop))
    checkpoint.change(on_checkpoint, [checkpoint, class_name, loops], checkpoint_outputs, api_visibility="private",
                      queue=False, preprocess=False)
    loops.release(on_loops, [checkpoint, loops], [note, quality], api_visibility="private", queue=False,
                  preprocess=False)
    stops.append((stop, summary))
    stops.append((sweep_stop, summary))
    return {"checkpoint": checkpoint}


def tile_record(tile: Tile) -> dict[str, Any]:
    return {"checkpoint": tile.checkpoint, "loops": tile.loops, "ms": round(tile.ms, 1),
            "gflops": round(tile.gflops, 4), "extrapolated": tile.extrapolated}


# -- Compare tab ---------------------------------------------------------------------------------------
def compare_tab(studio: Studio, overview: Overview, compute: list, stops: list) -> dict[str, Any]:
    chosen = overview.default_compare
    views = [studio.view(name) for name in chosen]
    first = views[0] if views else NO_GENERATOR
    classes, sampler = first.classes, first.sampler
    with gr.Tab("Compare"):
        gr.Markdown("### ILSD vs vanilla looped vs dense — same class, same seed, across loop counts\n"
                    "The ILSD model should stay usable at every L; the vanilla looped model only at L_max; the dense "
                    "model (N·L unique layers, one pass) sits in the column of equal compute.")
        with gr.Row():
            checkpoints = gr.Dropdown(overview.generators, value=chosen, multiselect=True, label="Checkpoints", scale=3,
                                      elem_id="compare-checkpoints")
            class_name = gr.Dropdown(classes, value=classes[0] if classes else None, label="Class", scale=2)
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=1)
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=sampler["steps"], step=1, label="Sampling steps", buttons=NO_RESET)
            cfg_scale = gr.Slider(0, MAX_CFG_SCALE, value=sampler["cfg_scale"], step=0.25, label="Guidance scale",
                                  info=GUIDANCE_INFO + "; set from the first checkpoint", buttons=NO_RESET)
            run = gr.Button("Compare", variant="primary", elem_id="compare-btn")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown(label="Status")
        grid = gr.Plot(label="Comparison grid", elem_id="compare-grid")
        clip = clip_player("Comparison clips (a row per checkpoint, a column per loop count)",
                           any(view.video for view in views), "compare-clip")
        table = gr.Dataframe(label="Models", interactive=False)
        quality = gr.Plot(label="Quality vs compute")
        with gr.Accordion("Compare details (JSON)", open=False):
            details = gr.JSON(label="Compare details", show_label=False)

    def model_rows(names: list[str]) -> list[dict[str, Any]]:
        views = [view for view in map(studio.view, names) if view is not None]
        return [{"checkpoint": view.name, "label": view.compare_label, "max_loops": view.max_loops, "view": view}
                for view in views]

    def model_table(rows: list[dict[str, Any]], tiles: list[Tile]) -> pd.DataFrame:
        out = []
        for row in rows:
            view = row["view"]
            top = [t for t in tiles if t.checkpoint == view.name and t.loops == view.max_loops]
            out.append({"checkpoint": view.name, "objective": view.mode,
                        "unique layers × loops": f"{view.layers} × {view.max_loops}",
                        "parameters": f"{view.num_params:,}", "GFLOPs per loop": round(view.gflops_per_loop, 4),
                        "GFLOPs/sample at L_max": round(top[0].gflops, 3) if top else None,
                        "ms at L_max (live)": round(top[0].ms, 1) if top else None})
        return pd.DataFrame(out)

    @as_gradio_errors
    def compare(checkpoints, class_name, steps, cfg_scale, seed, request: gr.Request, progress=gr.Progress()):
        tiles: list[Tile] = []
        with studio.job(session(request)) as stop_flag:
            events = studio.compare(checkpoints, class_name, steps, cfg_scale, seed, stop=stop_flag)
            rows = model_rows(checkpoints if isinstance(checkpoints, list) else [checkpoints])
            series = {}
            for row in rows:
                series.update(row["view"].quality)
            quality_fig = charts.quality_figure(series, title="Quality vs compute (metrics.json)")
            yield ("", charts.comparison_figure(rows, [], class_name=str(class_name)), model_table(rows, []),
                   quality_fig, None, {"tiles": []})
            for event in events:
                if isinstance(event, Progress):
                    progress((event.done * event.steps + event.step, event.total * event.steps), desc=event.text)
                    yield SKIP(), SKIP(), SKIP(), SKIP(), SKIP(), SKIP()
                else:
                    tiles.append(event)
                    yield (SKIP(), charts.comparison_figure(rows, tiles, class_name=str(class_name)), SKIP(), SKIP(),
                           as_path(event.grid_video), {"tiles": [tile_record(t) for t in tiles], "final": False})
            stopped = stop_flag.is_set()
            yield ("**Stopped**; the tiles finished so far are kept." if stopped else
                   f"Done: {len(tiles)} tiles, seed {seed}.", charts.comparison_figure(rows, tiles, class_name=str(
                       class_name)), model_table(rows, tiles), quality_fig,
                   as_path(tiles[-1].grid_video) if tiles else None,
                   {"tiles": [tile_record(t) for t in tiles], "final": True, "stopped": stopped})

    def on_checkpoints(checkpoints, class_name):
        views = [view for view in map(studio.view, checkpoints or []) if view is not None]
        if not views:
            return SKIP(), SKIP(), SKIP(), SKIP()
        classes = views[0].classes
        return (gr.Dropdown(choices=classes, value=class_name if class_name in classes else classes[0]),
                gr.Video(visible=any(view.video for view in views)), *sampler_values(views[0]))

    compute.append(run.click(compare, [checkpoints, class_name, steps, cfg_scale, seed],
                             [status, grid, table, quality, clip, details], api_name="compare",
                             concurrency_id=COMPUTE, concurrency_limit=COMPUTE_LIMIT, preprocess=False,
                             show_progress_on=[grid]))
    checkpoints.change(on_checkpoints, [checkpoints, class_name], [class_name, clip, steps, cfg_scale],
                       api_visibility="private",
                       queue=False, preprocess=False)
    stops.append((stop, status))
    return {"checkpoints": checkpoints}


# -- Checkpoints tab -----------------------------------------------------------------------------------
def checkpoints_tab(studio: Studio, overview: Overview, compute: list, stops: list) -> dict[str, Any]:
    names = overview.names
    first = overview.default_generator or (names[0] if names else None)
    with gr.Tab("Checkpoints"):
        with gr.Row():
            listing = gr.Markdown(checkpoint_list(overview), elem_id="checkpoint-list")
            refresh = gr.Button("Rescan folders", scale=0, min_width=140)
        with gr.Row():
            checkpoint = gr.Dropdown(names, value=first, label="Checkpoint", scale=3)
            inspect_run = gr.Button("Inspect", scale=1)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                summary = gr.Markdown(label="Summary", elem_id="inspect-summary")
                metrics = gr.Dataframe(label="Stored metrics", interactive=False)
            grid = gr.Image(label="Sample grid", format="png", interactive=False, scale=2)
        gr.Markdown("Stored metrics come from the checkpoint's `metrics.json`; the sample grid (`samples.png`, or "
                    "the animated `samples.gif` of a video checkpoint) has a row per class and a column per loop "
                    "count (* = extrapolated).", elem_classes="note")
        quality = gr.Plot(label="Quality vs compute")
        with gr.Accordion("config.json", open=False):
            config = gr.JSON(label="Config", show_label=False)
        gr.Markdown("### Spot check\nA quick evaluation at the stored metrics' loop counts, seed and sampler, "
                    "with N samples per loop count, compared with the stored numbers.")
        with gr.Row():
            samples = gr.Slider(1, MAX_SPOT_SAMPLES, value=20, step=1, label="Samples per loop count (N)", scale=3)
            spot_run = gr.Button("Run spot check", variant="primary", scale=1)
            spot_stop = gr.Button("Stop", variant="stop", scale=1)
        spot_summary = gr.Markdown(label="Spot check summary")
        # hidden until a spot check has run: an empty Dataframe shows placeholder headers
        spot_table = gr.Dataframe(label="Spot check vs stored", interactive=False, visible=False)
        spot_plot = gr.Plot(label="Spot check chart", visible=False)

    @as_gradio_errors
    def inspect_checkpoint(checkpoint):
        info = studio.inspect(checkpoint)
        if info["task"] == "generator" and not info["error"]:
            table = pd.DataFrame(metrics_rows(info["metrics"]))
            figure = charts.quality_figure(metrics_series(info), title=f"{checkpoint}: stored metrics")
        else:  # a tokenizer or classifier has one summary row (PSNR / accuracy); an unusable folder nothing
            table = pd.DataFrame([info["metrics"]]) if info["metrics"] else pd.DataFrame()
            figure = charts.message_figure(f"{checkpoint}: unusable" if info["error"] else
                                           f"{checkpoint} is a {info['task']}: no quality-vs-compute curve")
        return inspect_summary(info), table, info["samples_grid"], figure, info["config"]

    @as_gradio_errors
    def spot_check(checkpoint, samples, request: gr.Request, progress=gr.Progress()):
        with studio.job(session(request)) as stop_flag:
            try:
                result = studio.spot_check(checkpoint, samples, stop=stop_flag,
                                           progress=lambda done, total, text: progress((done, total), desc=text))
            except StopRequested:
                return "**Stopped**; no spot check result.", None, None
        return spot_outputs(result)

    spot_event = spot_run.click(spot_check, [checkpoint, samples], [spot_summary, spot_table, spot_plot],
                                api_name="spot_check", concurrency_id=COMPUTE, concurrency_limit=COMPUTE_LIMIT,
                                preprocess=False, show_progress_on=[spot_summary])
    # the API returns plain values; the page reveals the table and chart once there is something in them
    spot_event.success(lambda: (gr.update(visible=True),) * 2, None, [spot_table, spot_plot],
                       api_visibility="private", queue=False)
    compute.append(spot_event)
    inspect_outputs = [summary, metrics, grid, quality, config]
    inspect_run.click(inspect_checkpoint, [checkpoint], inspect_outputs, api_name="inspect", preprocess=False)
    checkpoint.change(inspect_checkpoint, [checkpoint], inspect_outputs, api_visibility="private", preprocess=False)
    stops.append((spot_stop, spot_summary))
    return {"checkpoint": checkpoint, "listing": listing, "refresh": refresh, "inspect": (inspect_checkpoint,
                                                                                          inspect_outputs)}


def latent_text(info: dict[str, Any]) -> str:
    """A DiT's continuous latent and patch size, ahead of its token grid ('' for MaskGIT)."""
    latent = info.get("latent")
    return f"continuous latent {' × '.join(map(str, latent['shape']))}, patch {latent['patch']} → " if latent else ""


def inspect_summary(info: dict[str, Any]) -> str:
    head = f"### {info['name']}\n`{info['path']}`\n\n"
    if info.get("error"):
        return head + f"✗ **Unusable:** {info['error']}"
    meta = info["config"]
    lines = [head + f"**{info['task']}** — {meta['experiment'].get('description', '')}\n", "| | |", "|---|---|"]
    if info.get("num_params") is not None:
        lines.append(f"| parameters | {info['num_params']:,} |")
    if info["task"] == "generator":
        sampler = info["default_sampler"]
        passes = sampler["passes"]
        per_sample = ", ".join(f"L={L}: {g:.3f}" for L, g in info["gflops_per_sample"].items())
        lines += [f"| objective | {info['mode']} (supervised loop counts: {info['trained_range']}) |",
                  f"| unique layers × max loops | {info['layers']} × {info['max_loops']} (width {info['width']}) |",
                  f"| output | {'video clips' if info['video'] else 'images'} ({latent_text(info)}"
                  f"token grid {' × '.join(map(str, info['token_grid']))}) |",
                  f"| tokens per sample | {info['num_tokens']} |",
                  f"| classes | {len(info['classes'])} |",
                  f"| GFLOPs per loop (one sequence, one pass) | {info['gflops_per_loop']:.4f} |",
                  f"| GFLOPs of the head (once per pass) | {info['gflops_head']:.4f} |",
                  f"| GFLOPs per sample ({sampler['steps']} steps × {passes // sampler['steps']} with guidance) | "
                  f"{per_sample} |",
                  f"| default sampling (config.json `sampler`) | {sampler['steps']} steps, guidance "
                  f"{sampler['cfg_scale']:g} |"]
    metrics = info.get("metrics") or {}
    if "rows" in metrics:
        ref = metrics.get("reference", {})
        lines.append(f"\nStored metrics: {metrics['samples']} samples per loop count, seed {metrics['seed']}, "
                     f"{metrics.get('precision', '?')} on {metrics.get('device', '?')}; {metrics['fd_name']} against "
                     f"{ref.get('count', '?')} real test images (classifier accuracy on them: "
                     f"{ref.get('accuracy', '?')}).")
    elif info["task"] == "generator":
        lines.append("\nNo metrics.json yet: run a spot check below, or "
                     "`python -m core.evaluate --checkpoint … --write-metrics`.")
    return "\n".join(lines)


def spot_outputs(result: dict[str, Any]):
    spot, stored = result["spot"], result["stored"]
    fd = spot["fd_name"]
    stored_rows = {r["loops"]: r for r in stored.get("rows", [])}
    n, n_stored = spot["samples"], stored.get("samples")
    table, flagged = [], []
    for row in spot["rows"]:
        old = stored_rows.get(row["loops"])
        item = {"loops": row["loops"], "GFLOPs/sample": row["gflops"], "ms/sample": row["ms_per_sample"],
                "accuracy": row["accuracy"], fd: row["fd"]}
        if old:
            p = (row["accuracy"] * n + old["accuracy"] * n_stored) / (n + n_stored)
            noise = 2 * (max(p * (1 - p), 1e-3) * (1 / n + 1 / n_stored)) ** 0.5
            delta = row["accuracy"] - old["accuracy"]
            verdict = "⚠ beyond noise" if abs(delta) > noise else "within noise"
            if abs(delta) > noise:
                flagged.append(row["loops"])
            item.update({"stored accuracy": old["accuracy"], "Δ accuracy": round(delta, 4),
                         "accuracy check": f"{verdict} (±{noise:.3f})", f"stored {fd}": old["fd"],
                         "stored ms/sample": old["ms_per_sample"]})
        table.append(item)
    if not stored_rows:
        verdict = "No stored metrics to compare with."
    elif flagged:
        verdict = f"⚠ Accuracy differs from the stored metrics beyond sampling noise at L = {flagged}."
    else:
        verdict = "✓ Accuracy agrees with the stored metrics within sampling noise (2 standard errors) at every L."
    text = (f"**Spot check of {result['checkpoint']}**: {n} samples per loop count, seed {spot['seed']} "
            f"(stored: {n_stored or '—'} samples). {verdict}  \n"
            f"{fd} from few samples is biased upwards, so compare it across loop counts, not with the stored "
            f"value; ms/sample depends on batch size (stored runs used larger batches).")
    series = {f"spot check (N={n})": {"rows": spot["rows"], "max_loops": spot["max_loops"], "fd_name": fd,
                                      "samples": n}}
    if stored_rows:
        series = {f"stored (N={n_stored})": {"rows": stored["rows"], "max_loops": spot["max_loops"],
                                             "fd_name": fd, "samples": n_stored}, **series}
    return text, pd.DataFrame(table), charts.quality_figure(series, title="Spot check vs stored")


# -- the page runtime ------------------------------------------------------------------------------------
# The page runs the generator itself (assets/browser/studio.js on onnxruntime-web) whenever it can; the server
# serves files, answers two questions (which checkpoints, where an export's files are) and turns a finished page
# sample into the Generate tab's outputs, with no model work.
RUNNER_HTML = """
<div class="elt-run" id="elt-run">
  <div class="elt-run-on" role="radiogroup" aria-label="Run on">Run on:
    <label><input type="radio" name="elt-run-on" value="device" checked data-role="on-device" id="run-on-device">
      this device</label>
    <label><input type="radio" name="elt-run-on" value="server" data-role="on-server" id="run-on-server">
      server</label>
    <span data-role="where" id="run-where" aria-live="polite">loading the page runtime…</span>
  </div>
  <div class="elt-run-output" data-role="output" hidden>
    <figure><canvas data-role="image" id="page-image" width="256" height="256"></canvas>
      <figcaption>Current sampling step <span data-role="step"></span></figcaption></figure>
    <figure><canvas data-role="strip" id="page-strip" width="96" height="112"></canvas>
      <figcaption>In-step loop strip: the prediction after loop 1 … L of the current step</figcaption></figure>
  </div>
</div>
"""


def page_runner(studio: Studio) -> gr.HTML:
    """The Generate tab's "Run on" switch, where-the-work-ran line and the page's own step image and loop strip;
    its `page_result` event carries a sample the page made (assets/browser/generate.js)."""
    mount = ("const events = {result: 'page_result', tile: 'page_tile', budget: 'page_budget'};"
             "import(new URL(props.module_url, document.baseURI).href)"
             ".then((m) => m.mountGenerate(element, {trigger, events}))"
             ".catch((e) => { element.querySelector('[data-role=where]').textContent = 'on the server · ' + e; });")
    return gr.HTML("", html_template=RUNNER_HTML, js_on_load=mount, container=False, padding=False,
                   elem_id="page-runner", module_url=static.site(studio.export_cache).url("page") + "generate.js")


def browser_api(studio: Studio) -> gr.HTML:
    """An empty component outside the tabs whose script installs window.eltStudio on every page (the tabs render
    their content only when opened); its two server functions are the runtime's only calls to the server."""
    site = static.site(studio.export_cache)  # served by app.static's middleware (static.app_kwargs)

    def browser_catalog(_: Any = None) -> dict[str, Any]:  # called without arguments, Gradio passes []
        """The generators the page may run, with what it validates a request against."""
        return {"checkpoints": studio.browser_catalog(), "default": studio.overview().default_generator,
                "limits": {"max_steps": MAX_STEPS, "max_seed": MAX_SEED, "max_cfg_scale": MAX_CFG_SCALE},
                "runtime": {"webgpu": (static.ORT_WEB / "ort.webgpu.min.mjs").is_file()}}

    def browser_export(checkpoint: str) -> dict[str, Any]:
        """A generator's export.json and the URLs of its graphs (exported on first use), or {"error": …}."""
        try:
            folder, manifest = studio.browser_export(checkpoint)
        except StudioError as error:
            return {"error": str(error)}
        return {"manifest": manifest,
                "files": {name: site.file_url("export", folder / entry["path"])
                          for name, entry in manifest["files"].items()}}

    loader = ("import(new URL(props.module_url, document.baseURI).href)"
              ".then((m) => m.install({server, vendorUrl: props.vendor_url}))"
              ".catch((e) => console.error('ELT Studio browser runtime:', e));")
    return gr.HTML("", html_template="<span hidden></span>", js_on_load=loader, container=False, padding=False,
                   server_functions=[browser_catalog, browser_export], elem_id="elt-browser-api",
                   module_url=site.url("page") + "studio.js", vendor_url=site.url("runtime"))


# -- the whole app ---------------------------------------------------------------------------------------
def build_demo(studio: Studio) -> gr.Blocks:
    compute: list = []  # model-work events: one concurrency group, all cancelled by Stop
    stops: list = []  # (stop button, component that says "stopped")
    with Blocks(title="ELT Studio", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# ELT Studio — elastic looped transformers\nOne set of weights, any loop count: "
                    "fewer loops = faster, more loops = better.")
        overview = studio.overview()
        status = gr.Markdown(banner(overview), elem_id="banner")
        with gr.Tabs():
            generate = generate_tab(studio, overview, compute, stops)
            compare = compare_tab(studio, overview, compute, stops)
            checkpoints = checkpoints_tab(studio, overview, compute, stops)
        browser_api(studio)

        def stop_jobs(request: gr.Request):
            asked = studio.stop(session(request))
            return (f"**Stopping** {asked} running job(s) of this session; the last completed result is kept."
                    if asked else "Nothing of yours is running.")

        for index, (button, message) in enumerate(stops):
            button.click(stop_jobs, None, [message], queue=False, cancels=compute,
                         api_name="stop" if index == 0 else None, api_visibility="public" if index == 0 else "private")

        def rescan(current_generator, current_compare, current_checkpoint):
            found = studio.rescan()
            gens, names = found.generators, found.names
            keep = [n for n in (current_compare or []) if n in gens]
            return (banner(found), checkpoint_list(found),
                    gr.Dropdown(choices=gens, value=current_generator if current_generator in gens
                                else found.default_generator),
                    gr.Dropdown(choices=gens, value=keep or found.default_compare),
                    gr.Dropdown(choices=names, value=current_checkpoint if current_checkpoint in names
                                else (names[0] if names else None)))

        refresh_io = dict(inputs=[generate["checkpoint"], compare["checkpoints"], checkpoints["checkpoint"]],
                          outputs=[status, checkpoints["listing"], generate["checkpoint"], compare["checkpoints"],
                                   checkpoints["checkpoint"]], api_visibility="private", preprocess=False)
        checkpoints["refresh"].click(rescan, **refresh_io)
        demo.load(rescan, **refresh_io)
        inspect_fn, inspect_outputs = checkpoints["inspect"]
        demo.load(inspect_fn, [checkpoints["checkpoint"]], inspect_outputs, api_visibility="private",
                  preprocess=False)
        def list_checkpoints() -> dict:
            """Every checkpoint found: generators with their classes and loop range, and the rest."""
            return studio.listing()

        gr.api(list_checkpoints, api_name="checkpoints")
    return demo
