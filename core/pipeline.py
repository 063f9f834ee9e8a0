"""Generation pipeline: a generator checkpoint + its tokenizer + a runtime -> pixels.

The one place that binds the looped model to a loop count as the model function of its family's pure
sampler (core.family: MaskGIT's logits_fn or a DiT's denoise_fn) and decodes the result to pixels; the
sample CLI, the evaluator, the bench and the app all go through it, so the same settings give the same
pixels everywhere, for either family.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from core import checkpoint as ckpt
from core.cli import UsageError, apply_overrides
from core.config import ConfigError
from core.family import NO_LOOP_SETTINGS, Family, family_of
from core.runtime import Runtime
from core.sampling import DecodeState, DiffusionState, ExitCriterion, LoopSetting, SamplerConfig, parse_exit, parse_schedule


def resolve_class(class_names: Sequence[str], value: str | int) -> int:
    """Class index from a name (case-insensitive) or an index; UsageError lists what is accepted."""
    if isinstance(value, str):
        key = value.strip().lower()
        for i, name in enumerate(class_names):
            if name.lower() == key:
                return i
        if key.lstrip("-").isdigit():
            value = int(key)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(class_names):
        return int(value)
    shown = ", ".join(class_names[:10]) + (", …" if len(class_names) > 10 else "")
    raise UsageError(f"unknown class {value!r}; accepted: a name ({shown}) or an index 0..{len(class_names) - 1}")


def check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


ADAPTIVE_HELP = ("adaptive exit inside every sampling step, per sample: agree:TAU stops a sample once the share of its "
                 "still-masked tokens whose argmax did not change from the previous loop is >= TAU (0 < TAU <= 1); "
                 "kl:EPS once the mean KL between successive loops' predictions is < EPS (EPS > 0).  Measured in "
                 "docs/ADAPTIVE.md (agree:0.95 is a good start); the loop count / schedule is the cap")
SCHEDULE_HELP = ("loops per MaskGIT step: one L per step (L1,L2,…, as many as --steps) or a ramp A..B (A loops at "
                 "the first step, B at the last)")


def add_loop_arguments(parser, many: bool = False) -> None:
    """--loops-schedule / --adaptive / --exit-min-loops / --exit-cap (repeatable with many=True)."""
    action = "append" if many else "store"
    more = " (repeat for several settings)" if many else ""
    parser.add_argument("--loops-schedule", action=action, default=None, metavar="L1,L2,…|A..B",
                        help=SCHEDULE_HELP + more)
    parser.add_argument("--adaptive", action=action, default=None, metavar="agree:TAU|kl:EPS",
                        help=ADAPTIVE_HELP + more)
    parser.add_argument("--exit-min-loops", type=int, default=None,
                        help="adaptive exit is checked from this loop on (default: the checkpoint's L_min)")
    parser.add_argument("--exit-cap", type=int, default=None,
                        help="adaptive exit never runs beyond this many loops (default: the loop count, else L_max)")


def loop_setting(pipeline: "Pipeline", steps: int, loops: int | None = None, schedule: str | None = None,
                 adaptive: str | None = None, min_loops: int | None = None, cap: int | None = None) -> LoopSetting:
    """A LoopSetting from command-line / app text; bad values raise UsageError with one clear line."""
    if not pipeline.family.discrete and (schedule is not None or adaptive is not None):
        raise UsageError(NO_LOOP_SETTINGS)
    try:
        exit = None
        if adaptive is not None:
            lowest = pipeline.generator.experiment.trained_loops[0]
            exit = parse_exit(adaptive, lowest if min_loops is None else check_positive("exit-min-loops", min_loops))
        top = loops or pipeline.config.max_loops
        if exit is not None and cap is not None:
            top = check_positive("exit-cap", cap)
        caps = parse_schedule(schedule, steps) if schedule is not None else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    return LoopSetting(check_positive("loops", top), caps, exit)


@dataclass
class StepResult:
    """One sampling step's state plus per-loop timings (ms) of its forward pass."""

    state: DecodeState | DiffusionState
    loop_ms: list[float]  # per loop iteration
    embed_ms: float
    head_ms: float  # head + guidance combination + token sampling (everything after the last loop)
    loops_used: list[int] = field(default_factory=list)  # per sample: the loops its forward pass ran


@dataclass
class Pipeline:
    generator: ckpt.Checkpoint
    tokenizer: ckpt.Checkpoint
    runtime: Runtime
    backend: Any = None  # None = the torch model; else an object with logits_fn(loops, all_loops, mark)
    _model: torch.nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._model = self.runtime.prepare(self.generator.module)
        self.tokenizer.module.to(self.runtime.device).eval()

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime | None = None, weights: str = "model", backend: str = "torch",
             precision: str = "auto") -> "Pipeline":
        """backend "jax" runs the transformer in JAX on the same weights (matmuls at `precision`)."""
        runtime = runtime or Runtime.create()
        gen = ckpt.load(path, weights=weights)
        if gen.experiment.train.task != "generator":
            raise ckpt.CheckpointError(f"{path} is a {gen.experiment.train.task} checkpoint, not a generator")
        tok_path = gen.reference("tokenizer")
        if tok_path is None:
            raise ckpt.CheckpointError(f"{path}/config.json names no tokenizer")
        pipeline = cls(gen, ckpt.load(tok_path), runtime)
        if backend == "jax":
            from core.runtime.jax_backend import use_jax

            use_jax(pipeline, precision)
        return pipeline

    # -- facts ---------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.generator.experiment.model

    @property
    def family(self) -> Family:
        return family_of(self.config)

    @property
    def class_names(self) -> list[str]:
        return self.generator.class_names

    @property
    def is_video(self) -> bool:
        return self.tokenizer.experiment.model.is_video

    def sampler(self, steps: int | None = None, cfg_scale: float | None = None, overrides: Sequence[str] = ()):
        """The sampler this checkpoint is evaluated with (its experiment's), with the given settings changed.

        overrides: KEY=VALUE strings for its family's other settings (e.g. method=ddpm for diffusion,
        choice_temperature=3 for MaskGIT); a key the family's sampler lacks is a UsageError naming the
        accepted ones.
        """
        given = {"steps": steps, "cfg_scale": cfg_scale}
        base = replace(self.generator.experiment.sampler, **{k: v for k, v in given.items() if v is not None})
        return apply_overrides(base, list(overrides))

    def gflops_per_sample(self, loops: int, sampler: SamplerConfig) -> float:
        """Transformer GFLOPs for one sample: steps × (2 with guidance) × forward(loops)."""
        return sampler.passes * self.generator.module.flops(loops) / 1e9

    def gflops_of_run(self, step_loops: Sequence[float], sampler: SamplerConfig, adaptive: bool = False) -> float:
        """GFLOPs for one sample that ran step_loops[k] loops (a mean over samples is fine) at step k;
        adaptive exit also applies the head after every loop (to compare successive predictions)."""
        flops = self.generator.module.flops
        head = flops(0)
        total = sum(flops(L) + (L - 1) * head * adaptive for L in step_loops)
        return sampler.passes / sampler.steps * total / 1e9

    # -- generation ----------------------------------------------------------------------------------
    def logits_fn(self, loops: int, all_loops: bool = False, mark: Callable[[str], None] | None = None,
                  exit: ExitCriterion | None = None, cfg_scale: float = 0.0, record: list | None = None):
        """The model bound to `loops` as the sampler's model function (MaskGIT logits_fn / DiT
        denoise_fn, core.family); mark(name) is called per loop.

        exit: adaptive exit per sample with `loops` as the cap (cfg_scale: the guidance the sampler
        applies, so the criterion judges guided logits); each call appends loops used (rows,) to record.
        """
        if self.backend is not None:  # e.g. core.runtime.jax_backend.JaxGenerator
            return self.backend.logits_fn(loops, all_loops, mark, exit=exit, cfg_scale=cfg_scale, record=record)
        on_loop = (lambda i: mark(f"loop {i}" if i else "embed")) if mark else None
        return self.family.model_fn(self._model, loops, all_loops, on_loop, exit, cfg_scale, record)

    @torch.inference_mode()
    def stream(self, labels: Sequence[int], loops: int, sampler: SamplerConfig, seed: int,
               all_loops: bool = False, timed: bool = False, init: torch.Tensor | None = None,
               schedule: Sequence[int] | None = None, exit: ExitCriterion | None = None) -> Iterator[StepResult]:
        """Yield every sampling step (state + timings); all_loops adds each loop's prediction.
        init: optional (B, T) tokens to start from, mask id where unknown (see maskgit_decode).
        schedule: loops per step (replaces `loops`); exit: adaptive exit, the loops (per step) being the cap."""
        caps = list(schedule) if schedule is not None else [loops] * sampler.steps
        if len(caps) != sampler.steps:
            raise UsageError(f"loops schedule has {len(caps)} entries for {sampler.steps} sampling steps")
        for value in caps:
            check_positive("loops", value)
        if not self.family.discrete and (schedule is not None or exit is not None):
            raise UsageError(NO_LOOP_SETTINGS)
        labels_t = torch.as_tensor(list(labels), dtype=torch.long, device=self.runtime.device)
        generator = self.runtime.generator(seed)
        timer = self.runtime.timer()
        mark = (lambda name: timer.mark(name)) if timed else None
        record: list[torch.Tensor] = []
        fns = {L: self.logits_fn(L, all_loops, mark, exit=exit, cfg_scale=sampler.cfg_scale, record=record)
               for L in set(caps)}
        fn = fns[loops] if len(fns) == 1 and schedule is None else [fns[L] for L in caps]
        timer.mark("start")
        if not isinstance(sampler, self.family.sampler_type):
            raise UsageError(f"a {self.family.name} checkpoint samples with a {self.family.sampler_type.__name__}, "
                             f"not a {type(sampler).__name__}")
        try:
            states = self.family.sample(fn, labels_t, self.config, sampler, generator, init)
        except ConfigError as error:
            raise UsageError(str(error)) from None
        for state in states:
            loop_ms, embed_ms, head_ms = [], 0.0, 0.0
            if timed:
                timer.mark("head")
                for name, ms in timer.durations():
                    if name == "embed":
                        embed_ms = ms
                    elif name.startswith("loop"):
                        loop_ms.append(ms)
                    elif name == "head":
                        head_ms = ms
            used = record.pop()[:len(labels_t)].tolist()  # with guidance both rows of a sample ran alike
            yield StepResult(state, loop_ms, embed_ms, head_ms, used)
            if timed:  # fresh marks after the consumer's turn, so its time is not counted as "embed"
                timer = self.runtime.timer()  # the closure above reads `timer` late
                timer.mark("start")

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """A sampler state's tokens (B, T) or DiT latents (B, T, C) -> uint8 pixels (B, [T,] H, W, 3)."""
        with self.runtime.autocast():
            return self.family.decode(self.tokenizer.module, tokens.to(self.runtime.device)).cpu().numpy()

    def generate(self, labels: Sequence[int], loops: int | LoopSetting, sampler: SamplerConfig, seed: int,
                 init: torch.Tensor | None = None, loops_used: list | None = None) -> np.ndarray:
        """Final pixels uint8 (B, [T,] H, W, 3) for `labels` (optionally continuing `init` tokens).
        loops: a fixed L or a LoopSetting (schedule / adaptive exit); loops_used: if given, receives
        one list per step of the loops each sample ran."""
        setting = loops if isinstance(loops, LoopSetting) else LoopSetting(loops)
        state = None
        for result in self.stream(labels, setting.loops, sampler, seed, init=init, schedule=setting.schedule,
                                  exit=setting.exit):
            state = result.state
            if loops_used is not None:
                loops_used.append(result.loops_used)
        return self.decode(state.tokens)


# -- output files ------------------------------------------------------------------------------------
def png_bytes(image: np.ndarray, settings: dict[str, Any] | None = None) -> bytes:
    """Encode uint8 (H, W, 3) as PNG with the settings as a JSON text chunk ("elt-studio")."""
    info = PngImagePlugin.PngInfo()
    if settings:
        info.add_text("elt-studio", json.dumps(settings))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) with an edge row/column so H and W are even (H.264 yuv420p needs it)."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def mp4_bytes(frames: np.ndarray, fps: int = 8, settings: dict[str, Any] | None = None, scale: int = 1) -> bytes:
    """H.264 / yuv420p MP4 (plays in browsers) of uint8 (T, H, W, 3); settings go in the comment tag."""
    import imageio_ffmpeg

    frames = even_frames(frames.repeat(scale, 1).repeat(scale, 2))
    _, H, W, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        params = ["-metadata", f"comment={json.dumps(settings)}"] if settings else []
        writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=1, output_params=params, ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def gif_bytes(frames: np.ndarray, fps: int = 8, settings: dict[str, Any] | None = None, scale: int = 1) -> bytes:
    """Looping GIF of uint8 (T, H, W, 3); settings go in the GIF comment."""
    images = [Image.fromarray(f.repeat(scale, 0).repeat(scale, 1)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0,
                   comment=json.dumps(settings).encode() if settings else b"")
    return buffer.getvalue()


def tile(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, [T,] H, W, 3) -> one grid (of frames for clips), `columns` wide (default: one row)."""
    n, *frame_axes, h, w, c = images.shape
    columns = columns or n
    rows = -(-n // columns)
    grid = np.full((*frame_axes, rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[..., y:y + h, x:x + w, :] = image
    return grid
