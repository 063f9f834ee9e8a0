"""The one façade the UI calls: generate / sweep / compare / inspect / spot_check.

Plain Python in, plain data out (numpy images, dicts, timings, file paths) — no Gradio here, so the
UI stays a thin shell and a test or a script can drive the same code.  Bad input raises
`StudioError` with a message meant for the user; the UI turns it into `gr.Error`.

Image and video checkpoints take the same code paths: pixels are uint8 (B, [T,] H, W, 3) and only
the display helpers look at the shape — a clip is shown as a frame strip (one still image) plus a
complete H.264 / yuv420p MP4 written into `Studio.outdir`, and downloaded as `python -m core.sample`
writes it (MP4, settings in the comment tag).

The streaming actions are generators that yield once per sampling step (so a stop request is
honoured within one step) and end with their final result.  Stopping is cooperative: each job gets a
`threading.Event` registered under its session (`Studio.job(session)`), and `Studio.stop(session)`
sets only that session's events.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import random
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from core import budget
from app.registry import Checkpoints, StudioError, sampler_summary
from core.batching import BatchRequest, Busy, Engine, Failed, Queued, StepDone
from core.cli import user_errors
from core.config import ConfigError, allowed_loops
from core.media import mp4_bytes, png_bytes, tile
from core.metrics import lowest_classes
from core.pipeline import Pipeline
from core.runtime import Runtime
from core.sampling import LoopSetting, SamplerConfig, settled_loop
from core.usage import resolve_class

MAX_SAMPLES = 8
MAX_STEPS = 32
MAX_CFG_SCALE = 10.0
MAX_SEED = 2**32 - 1
MAX_SPOT_SAMPLES = 500
MAX_BUDGET_MS = 600_000.0
EXTRA_SWEEP_LOOPS = 2  # the any-time sweep runs L = 1 … L_max + this (within core.config.allowed_loops)
MAX_BATCH = 32  # rows per model call of the batching engine (core.batching); docs/SERVING.md measures it
MAX_WAITING = 64  # requests waiting for a place in a full batch; more are told to come back (Busy)
PREVIEW_HZ = 15.0  # the browser cannot repaint faster; intermediate images are decoded at most this often
DISPLAY_SIZE = 256  # px, the longer side of a displayed result (nearest-neighbour upscale of raw pixels)
STRIP_SIZE = 112  # px, in-step loop previews and sweep / compare tiles; each frame of a displayed clip
STRIP_FRAMES = 8  # a displayed frame strip shows at most this many evenly spaced frames of a clip



DEFAULT_SAMPLER = sampler_summary(SamplerConfig())  # with no checkpoint chosen


class StopRequested(Exception):
    """Raised inside a non-streaming job (spot check) when its session asked to stop."""


# -- events the streaming actions yield (built by keyword: a new field cannot shift the others) ----------
@dataclass(kw_only=True)
class Step:
    """generate: one sampling step done; images are None when throttled (display-sized when set)."""

    run: int
    step: int
    steps: int
    preview: np.ndarray | None  # (H, W, 3) this step's full prediction, samples side by side (clips: frame strips)
    strip: np.ndarray | None  # (H, W, 3) labelled in-step predictions after loop 1 … L of the first sample
    #                           (clips: the middle frame of each)
    elapsed_ms: float


@dataclass(kw_only=True)
class Final:
    """generate: the finished result; `pixels` are the raw samples, equal to `python -m core.sample`."""

    run: int
    pixels: np.ndarray  # uint8 (B, [T,] H, W, 3), raw resolution
    images: list[np.ndarray]  # display-sized stills, one per sample (a clip: its frame strip)
    preview: np.ndarray  # display-sized still, the samples side by side (clips: a frame strip per row)
    files: list[Path]  # downloads as `python -m core.sample` writes them (PNG / MP4), settings embedded
    video: Path | None  # clips only: the samples side by side as a display-sized MP4 (H.264, yuv420p)
    settings: dict[str, Any]
    latency: dict[str, Any]  # input of charts.latency_figure
    gflops: float  # per sample
    model_ms: float  # sampling + tokenizer decode of this run
    wall_ms: float  # the whole request, previews included
    image_files: list[Path] = field(default_factory=list)  # `images` as PNGs, written once per run
    settle: np.ndarray | None = None  # (steps, T) first sample: loop at which each token settled (NaN: known)
    token_grid: tuple[int, ...] = ()


    @property
    def frames(self) -> int | None:
        return self.pixels.shape[1] if self.pixels.ndim == 5 else None


@dataclass
class Waiting:
    """generate: in line for a place in the model's batch; `ahead` requests are before this one."""

    run: int
    ahead: int


@dataclass
class Stopped:
    run: int
    step: int
    steps: int


@dataclass
class Progress:
    """sweep / compare: a sampling step of the tile being computed."""

    done: int  # tiles finished
    total: int
    step: int
    steps: int
    text: str


@dataclass
class Tile:
    """sweep / compare: one full run (one sample) at one loop count."""

    checkpoint: str
    loops: int
    max_loops: int
    pixels: np.ndarray  # uint8 ([T,] H, W, 3), raw resolution
    ms: float  # sampling + decode of this tile
    gflops: float  # per sample
    image_file: Path | None = None  # `image` as a PNG, written once (updates re-send every tile as a path)
    grid_video: Path | None = None  # clips only: every tile so far as one MP4 (see `clip_grid`)

    @property
    def image(self) -> np.ndarray:
        """Display-sized still (a clip: its frame strip)."""
        return display_still(self.pixels[None], STRIP_SIZE)

    @property
    def still(self) -> np.ndarray:
        """Raw-resolution still (a clip: its frame strip)."""
        return frame_strips(self.pixels[None], pad=1) if self.pixels.ndim == 4 else self.pixels

    @property
    def extrapolated(self) -> bool:
        return self.loops > self.max_loops

    @property
    def caption(self) -> str:
        mark = " (extrapolated)" if self.extrapolated else ""
        return f"L={self.loops}{mark} · {self.ms:.0f} ms · {self.gflops:.2f} GFLOPs"


@dataclass
class GenerationRequest:
    """A visitor's generation settings, validated (`Studio.request`); the engine gets a BatchRequest of it."""

    checkpoint: str
    pipeline: Pipeline
    label: int
    loops: int
    sampler: SamplerConfig
    seed: int
    num_samples: int

    @property
    def labels(self) -> list[int]:
        return [self.label] * self.num_samples  # as `python -m core.sample` builds them

    @property
    def batch_key(self) -> str:
        """Requests that may share the engine's batch: the same loaded pipeline (a reloaded checkpoint is another)."""
        return f"{self.checkpoint}@{id(self.pipeline)}"

    @property
    def class_name(self) -> str:
        return self.pipeline.class_names[self.label]

    def settings(self) -> dict[str, Any]:
        """The settings `python -m core.sample` writes into its PNG, same keys."""
        p = self.pipeline
        return {"checkpoint": p.generator.path.name, "class": self.class_name, "label": self.label,
                "seed": self.seed, "loops": self.loops, **asdict(self.sampler), "num_samples": self.num_samples,
                "precision": p.runtime.precision, "backend": "torch"}


# -- what the UI renders ---------------------------------------------------------------------------------
def trained_range(trained_loops: Sequence[int]) -> str:
    """The loop counts a checkpoint's objective supervised, as text: `2–4`, or `4 only`."""
    low, high = trained_loops
    return f"{low}–{high}" if low < high else f"{high} only"


@dataclass(frozen=True, kw_only=True)
class GeneratorView:
    """One generator as the app shows it before a run (`Studio.view`): labels, loop range, sampler defaults and
    stored quality, ready to render; the UI lays it out and assembles nothing."""

    name: str
    classes: list[str]
    video: bool
    mode: str  # the training objective: ilsd | vanilla | dense
    layers: int
    max_loops: int
    allowed_loops: tuple[int, int]  # core.config.allowed_loops: the loop counts a run may ask for
    trained_loops: tuple[int, int]  # (lowest, highest) loop count the objective supervised
    sampler: dict[str, Any]  # sampler_summary: steps, cfg_scale, passes, guide_loop (None: no loop guidance)
    num_params: int | None
    gflops_per_loop: float
    quality: dict[str, dict[str, Any]]  # the stored metrics as one charts.quality_figure series ({} without)

    @property
    def trained_range(self) -> str:
        return trained_range(self.trained_loops)

    @property
    def loops_label(self) -> str:
        high = self.allowed_loops[1]
        beyond = f"{self.max_loops + 1}" + (f"–{high}" if high > self.max_loops + 1 else "")
        return f"Loops L (trained {self.trained_range}; {beyond} = extrapolation)"

    def loops_note(self, loops: Any) -> tuple[str, str]:
        """(kind, text): where L sits against what the objective supervised (ILSD L_min…L_max, vanilla L_max);
        kind is "extrapolation" (beyond or below it) or "trained"."""
        if isinstance(loops, (int, float)):
            if loops > self.max_loops:
                return "extrapolation", (f"L={int(loops)} is beyond L_max={self.max_loops}: extrapolation — the "
                                         "model was never trained this deep.")
            if loops < self.trained_loops[0]:
                return "extrapolation", (f"L={int(loops)} is below the trained range ({self.trained_range}): an "
                                         "early exit this model was never taught — expect lower quality.")
        return "trained", f"L={loops} within the trained range ({self.trained_range})."

    def clamp_loops(self, loops: Any) -> int:
        """A loop count kept when switching to this checkpoint: inside its range (L_max when unset)."""
        low, high = self.allowed_loops
        return max(low, min(int(loops or self.max_loops), high))

    @property
    def guide_loop_max(self) -> int:
        """The deepest loop a run may guide from: below the deepest loop count allowed."""
        return self.allowed_loops[1] - 1

    @property
    def compare_label(self) -> str:
        """The row label of the compare grid."""
        params = "" if self.num_params is None else f"<br>{self.num_params / 1e6:.2f}M params"
        return f"{self.name}<br>{self.mode} · {self.layers}N×{self.max_loops}L{params}"


NO_GENERATOR = GeneratorView(name="", classes=[], video=False, mode="", layers=0, max_loops=4,
                             allowed_loops=allowed_loops(4), trained_loops=(1, 4), sampler=DEFAULT_SAMPLER,
                             num_params=None, gflops_per_loop=0.0, quality={})  # before any checkpoint is chosen


@dataclass(frozen=True, kw_only=True)
class Overview:
    """Every checkpoint folder found, as the app lists it (`Studio.overview`)."""

    names: list[str]  # every folder, usable or not
    generators: list[str]  # the usable generators, image and video
    default_generator: str | None
    default_compare: list[str]
    rows: list[tuple[str, str, str | None]]  # (name, kind, why it is unusable or None) per folder

    @property
    def unusable(self) -> list[str]:
        return [name for name, _, error in self.rows if error]


def metrics_series(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stored metrics of an inspected checkpoint as one chart series ({} without)."""
    metrics = info.get("metrics") or {}
    if "rows" not in metrics:
        return {}
    return {info["name"]: {"rows": metrics["rows"], "max_loops": info.get("max_loops", 0),
                           "fd_name": metrics.get("fd_name", "FD"), "samples": metrics.get("samples")}}


def metrics_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored per-loop metrics as table rows; with per-class accuracy stored, each row's three weakest classes."""
    rows = report.get("rows") or []
    fd = report.get("fd_name", "FD")
    table = [{"loops": r["loops"], "GFLOPs/sample": r["gflops"], "ms/sample": r["ms_per_sample"],
              "accuracy": r["accuracy"], fd: r["fd"]} for r in rows]
    if rows and "class_accuracy" in rows[0]:
        for item, row in zip(table, rows):
            item["lowest-accuracy classes"] = lowest_classes(report, row)
    return table


def budget_point(info: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    """Where the budget mode's pick sits on the quality-vs-compute chart: its metrics.json row (at its
    steps, `budget.rows_at`); None when it was not measured."""
    plan = result["plan"]
    metrics = info.get("metrics") or {}
    if plan.schedule:
        rows = [r for r in metrics.get("adaptive_rows", [])
                if r.get("schedule") == list(plan.schedule) and "adaptive" not in r]
    else:
        rows = [r for r in budget.rows_at(metrics, plan.steps) if r["loops"] == plan.loops]
    row = rows[0] if rows else None
    if row is None or plan.accuracy is None:
        return None
    return {"gflops": row["gflops"], "ms_per_sample": row["ms_per_sample"], "accuracy": row["accuracy"],
            "label": plan.label}


# -- input checks ------------------------------------------------------------------------------------
def as_int(name: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """A whole number in [low, high] from an int, an integral float or a numeric string."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise StudioError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)) \
            or not np.isfinite(number) or number != int(number):
        raise StudioError(f"{name} must be a whole number, got {value!r}")
    number = int(number)
    if not low <= number <= high:
        raise StudioError(f"{name} must be between {low} and {high}{hint}, got {number}")
    return number


def as_float(name: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudioError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise StudioError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def enlarge(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale of uint8 (..., H, W, 3) so the longer side is about `size` (never down)."""
    factor = max(1, size // max(images.shape[-3:-1]))
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


def labelled_strip(images: np.ndarray, labels: Sequence[str], max_loops: int, title: str = "") -> np.ndarray:
    """uint8 (N, H, W, 3) -> one strip image, a title above and a label under each tile (one file, not N).

    Tiles beyond `max_loops` get an orange label: they come from extrapolated loops.
    """
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    pad, text_h = 4, 16
    top = text_h if title else 0
    canvas = Image.new("RGB", (n * (w + pad) + pad, top + h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill=(40, 40, 40))
    for i, (image, label) in enumerate(zip(images, labels)):
        x = pad + i * (w + pad)
        canvas.paste(Image.fromarray(image), (x, top + pad))
        draw.text((x + 2, top + h + pad + 2), label, fill=(184, 92, 0) if i >= max_loops else (40, 40, 40))
    return np.asarray(canvas)


def display_tile(pixels: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """uint8 (B, [T,] H, W, 3) -> one display image (or clip): a single sample large, several in rows of four."""
    if len(pixels) == 1:
        return enlarge(pixels[0], size)
    return tile(enlarge(pixels, size // 2), columns=min(len(pixels), 4))


def frame_strips(clips: np.ndarray, max_frames: int | None = STRIP_FRAMES, pad: int = 2) -> np.ndarray:
    """uint8 (B, T, H, W, 3) -> one image: a row of frames per clip (up to max_frames, evenly spaced; None = all)."""
    b, t, h, w, c = clips.shape
    picks = np.unique(np.linspace(0, t - 1, min(t, max_frames or t)).round().astype(int))
    return tile(clips[:, picks].reshape(-1, h, w, c), columns=len(picks), pad=pad)


def display_still(pixels: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """uint8 (B, [T,] H, W, 3) -> one display still: images as `display_tile`, clips as frame strips (rows)."""
    return frame_strips(enlarge(pixels, STRIP_SIZE)) if pixels.ndim == 5 else display_tile(pixels, size)


def middle_frames(pixels: np.ndarray) -> np.ndarray:
    """uint8 (B, [T,] H, W, 3) -> (B, H, W, 3): images as they are, the middle frame of each clip."""
    return pixels[:, pixels.shape[1] // 2] if pixels.ndim == 5 else pixels


def clip_grid(tiles: Sequence[Tile]) -> np.ndarray | None:
    """The tiles' clips as one display clip (T, H, W, 3): a row per checkpoint, a column per loop count.

    None for image tiles, or clips of different shapes.  Blank where a row has no tile at that loop count.
    """
    if tiles[0].pixels.ndim != 4 or len({t.pixels.shape for t in tiles}) > 1:
        return None
    rows = list(dict.fromkeys(t.checkpoint for t in tiles))
    columns = max(t.loops for t in tiles)
    cells = np.full((len(rows) * columns, *tiles[0].pixels.shape), 255, np.uint8)
    for t in tiles:
        cells[rows.index(t.checkpoint) * columns + t.loops - 1] = t.pixels
    return tile(enlarge(cells, STRIP_SIZE), columns=columns)


def loop_range(max_loops: int, extra: int = EXTRA_SWEEP_LOOPS) -> list[int]:
    """1 … L_max (+ extra extrapolated loop counts, never beyond the allowed loop counts)."""
    low, high = allowed_loops(max_loops)
    return list(range(low, min(max_loops + extra, high) + 1))


def page_pixels(image: Any, frames: int | None = None) -> np.ndarray:
    """The page's {width, height, rgb (base64, uint8 H x W x 3)} as uint8 (1, H, W, 3), or for a clip of `frames`
    frames {width, height, frames, rgb (base64, uint8 T x H x W x 3)} as (1, T, H, W, 3); or one clear error."""
    what = "clip" if frames else "image"
    try:
        width, height = int(image["width"]), int(image["height"])
        count = int(image["frames"]) if frames else 1
        data = base64.b64decode(image["rgb"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise StudioError(f"{what} must be {{width, height, {'frames, ' if frames else ''}rgb: base64 of the uint8 "
                          "pixels, row by row}") from None
    if frames and count != frames:
        raise StudioError(f"clip must have this generator's {frames} frames, got {count}")
    if not (0 < width <= 1024 and 0 < height <= 1024) or len(data) != count * width * height * 3:
        raise StudioError(f"{what} must be 1..1024 pixels a side with {'frames x ' if frames else ''}width x height "
                          f"x 3 bytes; got {width} x {height} and {len(data)} bytes")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(1, count, height, width, 3).copy()
    return pixels if frames else pixels[:, 0]


def _timed_ms(start: float) -> float:
    return 1000 * (time.perf_counter() - start)


# -- the façade --------------------------------------------------------------------------------------
def serve_threads(threads: int = 1) -> None:
    """Set the process's CPU threads for serving (`python app.py --threads`).  One by default: a request
    runs in a Gradio worker thread, and there a 2-thread OpenMP pool is slow.  Measured on 2 cores (AMD
    EPYC; shapes-elt, L = 4, 16 steps, one sample; docs/EXPERIMENTS.md, "Latency budget: threads of the
    web app"): 248 ms in a worker thread against 115 ms in the main thread at 2 threads, 137 ms in either
    at 1 thread.  One thread per request also leaves the other core to the server's streaming and encoding,
    and to an admin run."""
    torch.set_num_threads(threads)


class Studio:
    """The actions of the app over its checkpoints (`checkpoints`, app/registry.py): generate (through the batching
    engine), sweep, compare, budget, inspect and spot check, and the views the UI renders (`overview`, `view`)."""

    def __init__(self, roots: Sequence[str | Path], *, precision: str = "auto", device: str | None = None,
                 preview_hz: float = PREVIEW_HZ, keep_runs: int = 64, max_batch: int = MAX_BATCH,
                 max_waiting: int = MAX_WAITING):
        self.checkpoints = Checkpoints(roots, Runtime.create(device, precision))
        # the model worker: generations share each step's model call (max_batch 1: one at a time)
        self.engine = Engine(max(1, max_batch), max_waiting, preview_interval=1.0 / preview_hz)
        self.keep_runs = keep_runs
        self.outdir = Path(tempfile.mkdtemp(prefix="elt-studio-"))
        self._stops: dict[str, set[threading.Event]] = defaultdict(set)
        self._stops_lock = threading.Lock()
        self._runs = itertools.count(1)
        self._latency: dict[Path, budget.LatencyModel] = {}
        self._latency_lock = threading.Lock()

    # -- per-session stop ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def job(self, session: str | None) -> Iterator[threading.Event]:
        """A stop flag for one job of `session`, registered while the job runs."""
        event = threading.Event()
        key = session or ""
        with self._stops_lock:
            self._stops[key].add(event)
        try:
            yield event
        finally:
            with self._stops_lock:
                self._stops[key].discard(event)
                if not self._stops[key]:
                    del self._stops[key]

    def stop(self, session: str | None) -> int:
        """Ask every running job of this session (only) to stop; returns how many were asked."""
        with self._stops_lock:
            events = list(self._stops.get(session or "", ()))
        for event in events:
            event.set()
        return len(events)

    # -- what the UI renders ----------------------------------------------------------------------------
    def overview(self) -> Overview:
        """Every checkpoint folder found (as last scanned), with the defaults the tabs start from."""
        found = self.checkpoints
        rows = []
        for name, e in found.entries.items():
            kind = e.task or "?"
            if e.is_generator:
                model = e.experiment.model
                kind = (f"{'video ' if e.is_video else ''}generator ({e.experiment.train.mode}, "
                        f"{model.num_layers}N×{model.max_loops}L)")
            rows.append((name, kind, e.error))
        return Overview(names=list(found.entries), generators=found.generators,
                        default_generator=found.default_generator, default_compare=found.default_compare, rows=rows)

    def rescan(self) -> Overview:
        """Scan the checkpoint folders again (new, changed or removed checkpoints)."""
        self.checkpoints.rescan()
        return self.overview()

    def view(self, checkpoint: Any) -> GeneratorView | None:
        """A generator as the app shows it before a run; None when `checkpoint` is not a usable generator."""
        if not isinstance(checkpoint, str) or checkpoint not in self.checkpoints.generators:
            return None
        info = self.inspect(checkpoint)
        return GeneratorView(name=checkpoint, classes=info["classes"], video=info["video"], mode=info["mode"],
                             layers=info["layers"], max_loops=info["max_loops"],
                             allowed_loops=tuple(info["allowed_loops"]), trained_loops=tuple(info["trained_loops"]),
                             sampler=info["default_sampler"], num_params=info["num_params"],
                             gflops_per_loop=info["gflops_per_loop"], quality=metrics_series(info))

    @property
    def concurrent_generations(self) -> int:
        """How many visitors' generations may be in flight at once: 1 without batching, else the batch and its
        waiting line (the engine keeps that line itself)."""
        engine = self.engine
        return 1 if engine.max_batch <= 1 else engine.max_batch + engine.max_waiting

    def listing(self) -> dict[str, Any]:
        """Every checkpoint found (the /checkpoints answer), see `Checkpoints.listing`."""
        return self.checkpoints.listing()

    def browser_catalog(self) -> dict[str, Any]:
        """The generators the page may run (`Checkpoints.browser_catalog`)."""
        return self.checkpoints.browser_catalog()

    def browser_export(self, checkpoint: Any) -> tuple[Path, dict[str, Any]]:
        """A generator's browser export, made on first use (`Checkpoints.browser_export`)."""
        return self.checkpoints.browser_export(checkpoint)

    @property
    def export_cache(self) -> Path:
        """Where the browser exports are kept (the UI serves it as static files)."""
        return self.checkpoints.export_cache

    # -- validation ----------------------------------------------------------------------------------
    def request(self, checkpoint: Any, class_name: Any, loops: Any, steps: Any, cfg_scale: Any, seed: Any,
                num_samples: Any = 1, guide_loop: Any = 0) -> GenerationRequest:
        """guide_loop: 0 for classifier-free guidance; k >= 1 (diffusion only, below `loops`) for loop guidance."""
        pipeline = self.checkpoints.pipeline(checkpoint)
        max_loops = pipeline.config.max_loops
        low, high = pipeline.config.allowed_loops
        loops = as_int("loops", loops, low, high,
                       f" (L_max = {max_loops} for {checkpoint}; beyond it is extrapolation, up to {high})")
        steps = as_int("steps", steps, 1, MAX_STEPS)
        cfg_scale = as_float("guidance scale", cfg_scale, 0.0, MAX_CFG_SCALE)
        seed = as_int("seed", seed, 0, MAX_SEED)
        num_samples = as_int("number of samples", num_samples, 1, MAX_SAMPLES)
        guide_loop = as_int("guide loop", guide_loop, 0, high - 1)
        if guide_loop and pipeline.family.discrete:
            raise StudioError(f"loop guidance is a diffusion sampler setting and {checkpoint} is a MaskGIT checkpoint; "
                              "use guide loop 0 (classifier-free guidance)")
        if not isinstance(class_name, (str, int)) or isinstance(class_name, bool):
            raise StudioError(f"class must be a class name, got {class_name!r}")
        try:
            label = resolve_class(pipeline.class_names, class_name)
        except user_errors() as error:
            raise StudioError(str(error)) from None
        sampler = pipeline.sampler(steps, cfg_scale, [f"guide_loop={guide_loop}"] if guide_loop else ())
        if guide_loop:  # the sampler's own rule: a guide loop below the loop count
            try:
                sampler.check_loops(loops)
            except ConfigError as error:
                raise StudioError(f"{error} (choose a guide loop below {loops}, or 0 for classifier-free guidance)"
                                  ) from None
        return GenerationRequest(checkpoint, pipeline, label, loops, sampler, seed, num_samples)

    @staticmethod
    def random_seed() -> int:
        return random.randint(0, MAX_SEED)

    # -- generate ------------------------------------------------------------------------------------
    def generate(self, checkpoint: Any, class_name: Any, loops: Any, steps: Any, cfg_scale: Any, seed: Any,
                 num_samples: Any = 1, guide_loop: Any = 0, *, stop: threading.Event | None = None
                 ) -> Iterator[Step | Final | Stopped]:
        """Stream one generation: a Step per sampling step, then Final (or Stopped).  Checks input now."""
        return self._generate(self.request(checkpoint, class_name, loops, steps, cfg_scale, seed, num_samples,
                                           guide_loop), stop)

    def _generate(self, req: GenerationRequest, stop: threading.Event | None
                  ) -> Iterator[Waiting | Step | Final | Stopped]:
        """The request's run, through the batching engine (core.batching): it shares each step's model call
        with whoever else is generating on this checkpoint, and leaves the batch when stopped or dropped."""
        p, run, start = req.pipeline, next(self._runs), time.perf_counter()
        try:
            ticket = self.engine.submit(BatchRequest(p, req.batch_key, tuple(req.labels), req.loops, req.sampler,
                                                     req.seed))
        except Busy as error:
            raise StudioError(str(error)) from None
        timings = []
        settle = [] if p.family.discrete else None  # the per-token view: token ids only
        try:
            for event in ticket.events():
                if isinstance(event, Queued):
                    if event.ahead:  # only a visitor who really waits hears about the line
                        yield Waiting(run, event.ahead)
                elif isinstance(event, Failed):
                    raise StudioError(event.message)
                elif isinstance(event, StepDone):
                    timings.append(event)
                    if settle is not None:
                        settle.append(settle_row(event.loop_tokens, event.before == p.config.mask_id))
                    preview = strip = None
                    if event.predicted is not None:  # the engine decodes at most preview_hz per request
                        preview = display_still(event.predicted)
                        strip = labelled_strip(enlarge(middle_frames(event.loop_pixels), STRIP_SIZE),
                                               [f"loop {i}" for i in range(1, req.loops + 1)], p.config.max_loops,
                                               f"in-step previews of step {event.step}/{event.steps} (one forward "
                                               f"pass{'; middle frame of each clip' if p.is_video else ''})")
                    if preview is not None or event.stride == 1 or event.step == event.steps:
                        # under load a step without images is not streamed: each update costs the server
                        yield Step(run=run, step=event.step, steps=event.steps, preview=preview, strip=strip,
                                   elapsed_ms=_timed_ms(start))
                    if stop is not None and stop.is_set():
                        yield Stopped(run, event.step, event.steps)
                        return
                else:  # Done
                    break
        finally:
            ticket.cancel()  # stopped, failed or dropped by the visitor: leave the batch at the next step
        pixels, decode_ms = event.pixels, event.decode_ms
        sampling_ms = sum(r.own_ms + r.beyond_ms for r in timings)
        settings = req.settings()
        files, video = self._write_files(run, pixels, settings)
        latency = {
            "loops": req.loops, "max_loops": p.config.max_loops, "steps": req.sampler.steps,
            "batch": req.num_samples, "guidance": req.sampler.passes > req.sampler.steps,
            "guide_loop": settings.get("guide_loop", 0),
            "loop_ms": [r.loop_ms for r in timings], "embed_ms": [r.embed_ms for r in timings],
            "batch_rows": [r.batch_rows for r in timings],
            "head_ms": [r.head_ms for r in timings], "decode_ms": decode_ms,
            "measured_ms": sampling_ms + decode_ms,
        }
        images = [display_still(sample[None]) for sample in pixels]
        # shown from files written once: Gradio rewrites its cached copy of a re-sent identical array in
        # place, which can truncate a download of the same image (the last step's preview) in flight
        image_files = [_write(self._folder(run) / f"shown{i}.png", png_bytes(image)) for i, image in enumerate(images)]
        yield Final(run=run, pixels=pixels, images=images, preview=display_still(pixels), files=files, video=video,
                    settings=settings, latency=latency, gflops=p.gflops_per_sample(req.loops, req.sampler),
                    model_ms=sampling_ms + decode_ms, wall_ms=_timed_ms(start), image_files=image_files,
                    settle=None if settle is None else np.stack(settle), token_grid=tuple(p.config.token_grid))

    # -- a run made in the visitor's page ---------------------------------------------------------------
    def page_result(self, checkpoint: Any, class_name: Any, loops: Any, steps: Any, cfg_scale: Any, seed: Any,
                    guide_loop: Any, image: Any, timings: Any, backend: Any) -> Final:
        """A sample the page made itself (assets/browser/generate.js), as the server's own Final: the same input
        checks, the same PNG with its settings, the latency chart's input from the page's clock.  No model work:
        the page sends its raw pixels {width, height, [frames,] rgb: base64 of uint8 [T x] H x W x 3} and its timings."""
        req = self.request(checkpoint, class_name, loops, steps, cfg_scale, seed, 1, guide_loop)
        p = req.pipeline
        pixels = page_pixels(image, p.tokenizer.experiment.model.num_frames if p.is_video else None)
        if not isinstance(timings, dict):
            raise StudioError("timings must be {loop_ms, embed_ms, head_ms, decode_ms, measured_ms}")
        try:
            loop_ms = np.asarray(timings["loop_ms"], dtype=float).reshape(-1, req.loops)
            embed_ms = [float(v) for v in timings["embed_ms"]]
            head_ms = [float(v) for v in timings["head_ms"]]
            decode_ms, measured_ms = float(timings["decode_ms"]), float(timings["measured_ms"])
        except (KeyError, TypeError, ValueError) as error:
            raise StudioError(f"timings must hold loop_ms (calls x {req.loops} loops), embed_ms, head_ms, decode_ms "
                              f"and measured_ms in ms: {error}") from None
        if not len(loop_ms):
            raise StudioError("timings.loop_ms is empty: the page ran no loop")
        run = next(self._runs)
        settings = {**req.settings(), "precision": "float32", "backend": f"onnxruntime-web ({str(backend)[:16]})"}
        files, video = self._write_files(run, pixels, settings)  # a clip: its MP4 with the settings, as the server's
        shown = display_still(pixels)
        latency = {"loops": req.loops, "max_loops": p.config.max_loops, "steps": req.sampler.steps, "batch": 1,
                   "guidance": req.sampler.passes > req.sampler.steps, "guide_loop": settings.get("guide_loop", 0),
                   "loop_ms": loop_ms.tolist(), "embed_ms": embed_ms, "head_ms": head_ms, "decode_ms": decode_ms,
                   "measured_ms": measured_ms}
        return Final(run=run, pixels=pixels, images=[shown], preview=shown, files=files, video=video, settings=settings,
                     latency=latency, gflops=p.gflops_per_sample(req.loops, req.sampler), model_ms=measured_ms,
                     wall_ms=measured_ms, image_files=[_write(self._folder(run) / "shown0.png", png_bytes(shown))],
                     token_grid=tuple(p.config.token_grid))

    def page_tile(self, checkpoint: Any, class_name: Any, loops: Any, steps: Any, cfg_scale: Any, seed: Any,
                  image: Any, ms: Any, run: int | None = None, earlier: Sequence[Tile] = ()) -> tuple[Tile, int]:
        """One tile of a sweep the page ran itself, as the server's sweep shows it (its PNG, loops, ms, GFLOPs; a
        clip's frame strip, and the MP4 of the `earlier` tiles and this one side by side), and the run whose folder
        keeps the sweep's tiles (None: the sweep's first tile starts one)."""
        req = self.request(checkpoint, class_name, loops, steps, cfg_scale, seed)
        p = req.pipeline
        frames = p.tokenizer.experiment.model.num_frames if p.is_video else None
        tile = Tile(checkpoint=req.checkpoint, loops=req.loops, max_loops=p.config.max_loops,
                    pixels=page_pixels(image, frames)[0], ms=as_float("ms", ms, 0.0, 3_600_000.0),
                    gflops=p.gflops_per_sample(req.loops, req.sampler))
        run = next(self._runs) if run is None else int(run)
        folder = self._folder(run)
        tile.image_file = _write(folder / f"tile{req.loops:03d}.png", png_bytes(tile.image))
        grid = clip_grid([*earlier, tile])
        if grid is not None:
            tile.grid_video = _write(folder / f"grid{req.loops:03d}.mp4", mp4_bytes(grid))
        return tile, run

    def page_budget(self, checkpoint: Any, class_name: Any, seed: Any, budget_ms: Any, loops: Any, predicted_ms: Any,
                    page_model: Any, image: Any, timings: Any, backend: Any) -> dict[str, Any]:
        """A latency-budget run the page planned and made itself (assets/browser/budget.js chose L from the page's
        own timings, at the checkpoint's sampler defaults): generate_budget's result for it, the pick marked on
        the quality chart, with no model work.  page_model: {fixed_ms, per_step_ms, per_loop_ms, margin}."""
        budget_ms = as_float("latency budget (ms)", budget_ms, 0.0, MAX_BUDGET_MS)
        predicted = as_float("predicted ms", predicted_ms, 0.0, 100 * MAX_BUDGET_MS)
        try:
            model = {key: float(page_model[key]) for key in ("fixed_ms", "per_step_ms", "per_loop_ms", "margin")}
        except (KeyError, TypeError, ValueError):
            raise StudioError("page_model must hold fixed_ms, per_step_ms, per_loop_ms and margin") from None
        sampler = self.checkpoints.pipeline(checkpoint).sampler()
        req = self.request(checkpoint, class_name, loops, sampler.steps, sampler.cfg_scale, seed)  # checked first
        max_loops = req.pipeline.config.max_loops
        if req.loops > max_loops:
            raise StudioError(f"a budget picks a trained loop count (up to L_max = {max_loops}), got {req.loops}")
        event = self.page_result(checkpoint, class_name, loops, sampler.steps, sampler.cfg_scale, seed, 0, image,
                                 timings, backend)
        loops, steps = req.loops, req.sampler.steps
        info = self.inspect(checkpoint)
        rows = [r for r in budget.rows_at(info.get("metrics") or {}, steps) if r["loops"] == loops]
        plan = budget.Plan(loops, steps, None, predicted, rows[0]["accuracy"] if rows else None,
                           "the deepest L whose predicted time fits, on this device")
        achieved = event.latency["measured_ms"]
        return {"image": event.image_files[0], "files": event.files, "settings": event.settings, "plan": plan,
                "point": budget_point(info, {"plan": plan}), "achieved_ms": achieved, "budget_ms": budget_ms,
                "met": achieved <= budget_ms, "target_accuracy": None, "latency_model": {**model, "page": True},
                "gflops": event.gflops}

    # -- latency budget ------------------------------------------------------------------------------
    def latency_model(self, checkpoint: Any) -> budget.LatencyModel:
        """This machine's latency model for a checkpoint (one sample, its guidance), fitted at first use."""
        pipeline = self.checkpoints.pipeline(checkpoint)
        with self._latency_lock:
            model = self._latency.get(pipeline.generator.path)
            if model is None:
                def run(loops: int, steps: int) -> None:
                    self._lean_run(pipeline, 0, budget.Plan(loops, steps, None, 0.0, None, ""), 0)

                model = budget.fit(budget.timer(run), pipeline.config.max_loops,  # up to the default steps
                                   steps=(2, 8, pipeline.sampler().steps))
                self._latency[pipeline.generator.path] = model
        return model

    def plan_budget(self, checkpoint: Any, budget_ms: Any = None, target_accuracy: Any = None) -> budget.Plan:
        """(L, steps, schedule) for a budget in ms, or the fastest run reaching an accuracy, from the
        checkpoint's metrics.json and this machine's latency model."""
        given_budget = budget_ms not in (None, "")
        given_target = target_accuracy not in (None, "")
        if given_budget == given_target:
            raise StudioError("give either a latency budget in ms or a target accuracy, not both")
        budget_ms = as_float("latency budget (ms)", budget_ms, 0.0, MAX_BUDGET_MS) if given_budget else None
        target = as_float("target accuracy", target_accuracy, 0.0, 1.0) if given_target else None
        info = self.inspect(checkpoint)
        model = self.latency_model(checkpoint)
        try:
            return budget.choose(model, info["metrics"], info["max_loops"], budget_ms=budget_ms,
                                 target_accuracy=target)
        except budget.BudgetError as error:
            raise StudioError(str(error)) from None

    def generate_budget(self, checkpoint: Any, class_name: Any, budget_ms: Any = None, target_accuracy: Any = None,
                        seed: Any = 0) -> dict[str, Any]:
        """Plan, then generate one sample without previews; returns the image, the plan (and its `point` on the
        quality-vs-compute chart, None when not measured), achieved vs budget."""
        plan = self.plan_budget(checkpoint, budget_ms, target_accuracy)
        pipeline = self.checkpoints.pipeline(checkpoint)
        req = self.request(checkpoint, class_name, plan.loops, plan.steps, pipeline.sampler().cfg_scale, seed)
        model = self.latency_model(checkpoint)
        pixels, achieved = self._lean_run(pipeline, req.label, plan, req.seed)
        model.observe(plan.steps, plan.step_loops, achieved)
        run = next(self._runs)
        settings = {**req.settings(), "loops_schedule": list(plan.schedule) if plan.schedule else None}
        files, _ = self._write_files(run, pixels, settings)
        shown = _write(self._folder(run) / "shown0.png", png_bytes(display_still(pixels)))
        limit = float(budget_ms) if budget_ms not in (None, "") else None
        return {"image": shown, "files": files, "settings": settings, "plan": plan,
                "point": budget_point(self.inspect(checkpoint), {"plan": plan}),
                "achieved_ms": achieved, "budget_ms": limit, "met": None if limit is None else achieved <= limit,
                "target_accuracy": None if target_accuracy in (None, "") else float(target_accuracy),
                "latency_model": model.describe(),
                "gflops": pipeline.gflops_of_run(plan.step_loops, req.sampler)}

    @staticmethod
    def _lean_run(pipeline: Pipeline, label: int, plan: budget.Plan, seed: int) -> tuple[np.ndarray, float]:
        """One sample, no previews or per-loop outputs: (pixels, ms of sampling + decode)."""
        t0 = time.perf_counter()
        pixels = pipeline.generate([label], budget_setting(plan), pipeline.sampler(plan.steps), seed)
        pipeline.runtime.synchronize()
        return pixels, _timed_ms(t0)

    def _folder(self, run: int) -> Path:
        """This run's output folder (older runs beyond `keep_runs` are deleted)."""
        folder = self.outdir / f"run{run:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(self.outdir.glob("run*"))[:-self.keep_runs]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def _write_files(self, run: int, pixels: np.ndarray, settings: dict[str, Any]) -> tuple[list[Path], Path | None]:
        """Downloads, and for clips the MP4 to show.

        One file per sample (+ the side-by-side tile when > 1) encoded as `python -m core.sample` does:
        PNG for images, MP4 for clips, the settings embedded (PNG text chunk / MP4 comment).  Clips also
        get a lossless PNG frame strip (a row of all frames per sample) and a display-sized MP4.
        """
        folder = self._folder(run)
        stem = f"{settings['checkpoint']}_{settings['class']}_L{settings['loops']}_seed{settings['seed']}"
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)
        clips = pixels.ndim == 5
        suffix, encode = (".mp4", mp4_bytes) if clips else (".png", png_bytes)

        def write(name: str, data: bytes) -> Path:
            return _write(folder / name, data)

        if len(pixels) == 1:
            files = [write(stem + suffix, encode(pixels[0], settings=settings))]
        else:
            files = [write(f"{stem}_all{suffix}", encode(tile(pixels, pad=0), settings=settings))]
            files += [write(f"{stem}_{i}{suffix}", encode(sample, settings={**settings, "index": i}))
                      for i, sample in enumerate(pixels)]
        if not clips:
            return files, None
        files.append(write(f"{stem}_frames.png", png_bytes(frame_strips(pixels, None, pad=0), settings)))
        return files, write(f"{stem}_view.mp4", mp4_bytes(display_tile(pixels), settings=settings))

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.outdir, ignore_errors=True)

    # -- sweep and compare ---------------------------------------------------------------------------
    def _tiles(self, plan: list[tuple[GenerationRequest, list[int]]], stop: threading.Event | None
               ) -> Iterator[Progress | Tile]:
        """Full runs (one sample each) at every (request, loop count) of the plan, yielded in order.

        All are submitted at once, so the engine runs them as one batch per checkpoint (a sweep is one
        batched run: the batch goes to the deepest L and each tile reads its own loop).  A tile's `ms` is
        its own model time at its L inside that run (embedding, its loops, head; not the deeper loops
        other tiles needed) plus the tokenizer decode.  Each tile's display image is written once
        (`image_file`); clip tiles also carry `grid_video`, every tile so far as one MP4.
        """
        runs = [(req, loops) for req, loop_counts in plan for loops in loop_counts]
        total, run, tiles = len(runs), next(self._runs), []
        try:
            # tiles show their final images only: no previews decoded
            tickets = self.engine.submit_all([BatchRequest(req.pipeline, req.batch_key, (req.label,), loops,
                                                           req.sampler, req.seed, previews=False)
                                              for req, loops in runs])
        except Busy as error:
            raise StudioError(str(error)) from None
        try:
            for (req, loops), ticket in zip(runs, tickets):
                p, ms = req.pipeline, 0.0
                for event in ticket.events():
                    if isinstance(event, Failed):
                        raise StudioError(event.message)
                    if isinstance(event, StepDone):
                        ms += event.own_ms
                        yield Progress(done=len(tiles), total=total, step=event.step, steps=event.steps,
                                       text=f"{req.checkpoint} · L={loops}")
                        if stop is not None and stop.is_set():
                            return
                    elif not isinstance(event, Queued):  # Done
                        tile_ = Tile(checkpoint=req.checkpoint, loops=loops, max_loops=p.config.max_loops,
                                     pixels=event.pixels[0], ms=ms + event.decode_ms,
                                     gflops=p.gflops_per_sample(loops, req.sampler))
                tiles.append(tile_)
                folder = self._folder(run)
                tile_.image_file = _write(folder / f"tile{len(tiles):03d}.png", png_bytes(tile_.image))
                grid = clip_grid(tiles)
                if grid is not None:
                    tile_.grid_video = _write(folder / f"grid{len(tiles):03d}.mp4", mp4_bytes(grid))
                yield tile_
        finally:
            for ticket in tickets:  # stopped or dropped: the rest leave the batch
                ticket.cancel()

    def sweep(self, checkpoint: Any, class_name: Any, steps: Any, cfg_scale: Any, seed: Any,
              extra_loops: Any = EXTRA_SWEEP_LOOPS, *, stop: threading.Event | None = None
              ) -> Iterator[Progress | Tile]:
        """The any-time strip: the same class and seed as full runs at L = 1 … L_max (+ extra).  Checks input now."""
        req = self.request(checkpoint, class_name, 1, steps, cfg_scale, seed)
        max_loops = req.pipeline.config.max_loops
        return self._tiles([(req, loop_range(max_loops, as_int("extra loops", extra_loops, 0, max_loops)))], stop)

    def compare_plan(self, checkpoints: Any) -> list[tuple[str, list[int]]]:
        """(checkpoint, loop counts) per model: looped ones at 1 … L_max, a dense one at its own depth."""
        if isinstance(checkpoints, str):
            checkpoints = [checkpoints]
        if not checkpoints:
            raise StudioError("choose at least one checkpoint to compare")
        if not isinstance(checkpoints, (list, tuple)) or len(checkpoints) > 6:
            raise StudioError(f"choose 1 to 6 checkpoints to compare, got {checkpoints!r}")
        kinds = {name: "video" if self.checkpoints.is_video(name) else "image" for name in checkpoints}
        if len(set(kinds.values())) > 1:
            listed = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
            raise StudioError(f"cannot compare image and video checkpoints in one grid ({listed}); "
                              "choose only image or only video checkpoints")
        plan = []
        for name in checkpoints:
            entry = self.checkpoints.entry(name)
            if not entry.is_generator:
                raise StudioError(f"checkpoint {name!r} cannot be compared: {entry.error or 'not a generator'}")
            max_loops = entry.meta["experiment"]["model"]["max_loops"]
            plan.append((name, list(range(1, max_loops + 1))))
        return plan

    def compare(self, checkpoints: Any, class_name: Any, steps: Any, cfg_scale: Any, seed: Any, *,
                stop: threading.Event | None = None) -> Iterator[Progress | Tile]:
        """The same class and seed on several checkpoints across their loop counts.  Checks input now."""
        plan = [(self.request(name, class_name, 1, steps, cfg_scale, seed), loops)
                for name, loops in self.compare_plan(checkpoints)]
        if len({tuple(req.pipeline.class_names) for req, _ in plan}) > 1:
            raise StudioError("these checkpoints were trained on different class lists; compare like with like")
        return self._tiles(plan, stop)

    # -- inspect and spot check ----------------------------------------------------------------------
    def inspect(self, checkpoint: Any) -> dict[str, Any]:
        """Config, parameter count, FLOPs per loop, stored metrics and sample grid of one checkpoint.

        The sample grid is `samples.gif` (animated, video checkpoints) or `samples.png`, as written by
        `python -m core.evaluate --grid`.
        """
        entry = self.checkpoints.entry(checkpoint)
        info: dict[str, Any] = {"name": entry.name, "path": entry.location, "task": entry.task, "error": entry.error,
                                "config": self.checkpoints.public_config(entry.meta), "metrics": {},
                                "samples_grid": None,
                                "video": entry.is_video}
        if entry.error:
            return info
        metrics_file = entry.path / "metrics.json"
        grid = next((g for g in (entry.path / "samples.gif", entry.path / "samples.png") if g.is_file()), None)
        if metrics_file.is_file():
            try:
                info["metrics"] = json.loads(metrics_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                info["error"] = f"{entry.location}/metrics.json: corrupt JSON ({error})"
        info["samples_grid"] = str(grid) if grid else None
        info["num_params"] = entry.meta.get("num_params")
        if entry.task == "generator":
            from core.family import family_of

            experiment = entry.experiment
            model = experiment.model
            family = family_of(model)
            flops = family.flops
            per_loop = flops(model, loops=1) - flops(model, loops=0)
            passes = experiment.sampler.passes
            info.update(
                mode=experiment.train.mode, layers=model.num_layers, max_loops=model.max_loops,
                allowed_loops=list(model.allowed_loops), trained_loops=list(experiment.trained_loops),
                trained_range=trained_range(experiment.trained_loops),
                width=model.width, num_tokens=model.num_tokens, token_grid=list(model.token_grid),
                # a continuous family (DiT) denoises a latent (T, H, W, channels) cut into patches
                latent=(None if family.discrete else
                        {"shape": [*model.latent_grid, model.latent_channels], "patch": model.patch_size}),
                classes=entry.meta["class_names"],
                gflops_per_loop=per_loop / 1e9, gflops_head=flops(model, loops=0) / 1e9,
                gflops_per_sample={L: passes * flops(model, loops=L) / 1e9
                                   for L in loop_range(model.max_loops)},
                default_sampler=sampler_summary(experiment.sampler))
        return info

    def spot_check(self, checkpoint: Any, samples: Any, *, progress: Callable[[int, int, str], None] | None = None,
                   stop: threading.Event | None = None) -> dict[str, Any]:
        """A quick per-loop evaluation with the stored metrics' settings; returns both reports."""
        from core.evaluate import evaluate, load_classifier

        pipeline = self.checkpoints.pipeline(checkpoint)
        samples = as_int("samples per loop count", samples, 1, MAX_SPOT_SAMPLES)
        stored = self.inspect(checkpoint)["metrics"]
        sampler = pipeline.family.sampler_type(**stored["sampler"]) if "sampler" in stored else pipeline.sampler()
        loops = [row["loops"] for row in stored.get("rows", [])] or loop_range(pipeline.config.max_loops)
        seed = stored.get("seed", 0)

        def report(done: int, total: int, text: str) -> None:
            if stop is not None and stop.is_set():
                raise StopRequested
            if progress is not None:
                progress(done, total, text)

        try:
            classifier = load_classifier(pipeline)
            fresh = evaluate(pipeline, loops, samples=samples, seed=seed, sampler=sampler, classifier=classifier,
                             batch_size=min(samples, 25), progress=report)
        except user_errors() as error:
            raise StudioError(f"spot check of {checkpoint!r} failed: {error}") from None
        return {"checkpoint": checkpoint, "spot": fresh, "stored": stored}


def settle_row(loop_predictions: torch.Tensor, unknown: torch.Tensor) -> np.ndarray:
    """(L, T) one sample's argmax per loop, bool (T,) masked at the step's start -> (T,) the loop at which
    each masked token's prediction stopped changing; NaN where the token was already known."""
    settled = settled_loop(loop_predictions[:, None])[0].double().numpy()
    return np.where(unknown.numpy(), settled, np.nan)


def budget_setting(plan: budget.Plan) -> LoopSetting:
    return LoopSetting(plan.loops, plan.schedule)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
