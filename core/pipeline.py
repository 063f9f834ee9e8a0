"""Generation pipeline: a generator checkpoint + its tokenizer + a runtime -> pixels.

The one place that binds the looped model to a loop count as the model function of its family's pure
sampler (core.family: MaskGIT's logits_fn or a DiT's denoise_fn) and decodes the result to pixels; the
sample CLI, the evaluator, the bench and the app all go through it, so the same settings give the same
pixels everywhere, for either family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from core import checkpoint as ckpt
from core.config import ConfigError
from core.family import NO_LOOP_SETTINGS, Family, family_of
from core.runtime import Runtime
from core.sampling import DecodeState, DiffusionState, ExitCriterion, LoopSetting, SamplerConfig
from core.usage import UsageError, apply_overrides, check_positive


@dataclass
class StepResult:
    """One sampling step's state plus per-loop timings (ms) of its forward pass."""

    state: DecodeState | DiffusionState
    loop_ms: list[float]  # per loop iteration
    embed_ms: float
    head_ms: float  # head + guidance combination + token sampling (everything after the last loop)
    loops_used: list[int] = field(default_factory=list)  # per sample: the loops its forward pass ran


def step_timings(timer) -> tuple[list[float], float, float]:
    """A step's timer marked "start", then by the model function "embed" and "loop i", then "head" ->
    (ms per loop, embedding ms, head ms: head + guidance + sampling, everything after the last loop)."""
    loop_ms, embed_ms, head_ms = [], 0.0, 0.0
    for name, ms in timer.durations():
        if name == "embed":
            embed_ms = ms
        elif name.startswith("loop"):
            loop_ms.append(ms)
        elif name == "head":
            head_ms = ms
    return loop_ms, embed_ms, head_ms


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
        """backend "jax" runs the transformer in JAX on the same weights (matmuls at `precision`).

        The folder is checked first by `core.checkpoint.validate`, as the app's checkpoint list checks it.
        """
        task = ckpt.validate(path, weights=weights)["experiment"]["train"]["task"]
        if task != "generator":
            raise ckpt.CheckpointError(f"{path} is a {task} checkpoint, not a generator")
        runtime = runtime or Runtime.create()
        gen = ckpt.load(path, weights=weights)
        pipeline = cls(gen, ckpt.load(gen.reference("tokenizer")), runtime)
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
        guide_loop = getattr(sampler, "guide_loop", 0)  # a DiT's loop guidance reads every loop's x0
        labels_t = torch.as_tensor(list(labels), dtype=torch.long, device=self.runtime.device)
        generator = self.runtime.generator(seed)
        timer = self.runtime.timer()
        mark = (lambda name: timer.mark(name)) if timed else None
        record: list[torch.Tensor] = []
        fns = {L: self.logits_fn(L, all_loops or bool(guide_loop), mark, exit=exit, cfg_scale=sampler.cfg_scale,
                                 record=record)
               for L in set(caps)}
        fn = fns[loops] if len(fns) == 1 and schedule is None else [fns[L] for L in caps]
        timer.mark("start")
        if not isinstance(sampler, self.family.sampler_type):
            raise UsageError(f"a {self.family.name} checkpoint samples with a {self.family.sampler_type.__name__}, "
                             f"not a {type(sampler).__name__}")
        try:
            if guide_loop:
                sampler.check_loops(loops)
            states = self.family.sample(fn, labels_t, self.config, sampler, generator, init)
        except ConfigError as error:
            raise UsageError(str(error)) from None
        for state in states:
            loop_ms, embed_ms, head_ms = [], 0.0, 0.0
            if timed:
                timer.mark("head")
                loop_ms, embed_ms, head_ms = step_timings(timer)
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
