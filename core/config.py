"""Frozen, typed configs with named presets and a JSON round-trip.

Three kinds of model are trained by the project: the tokenizer (pixels <-> discrete tokens), the
metric classifier (class accuracy and Fréchet-distance features) and the looped generator, which
comes in two families: masked token prediction (`ModelConfig`, MaskGIT) and diffusion (`DiTConfig`).
Each has one config dataclass; an `Experiment` bundles a model config with its `TrainConfig` (and a
generator's sampler settings), and `PRESETS` names every experiment the project ships or scales up to.
A generator config's type is its family (`GENERATOR_CONFIGS`; core.family maps it to model, objectives
and sampler).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

GENERATOR_MODES = ("ilsd", "vanilla", "dense")
TASKS = ("tokenizer", "classifier", "generator")
LAMBDA_SCHEDULES = ("linear", "cosine", "ground-truth", "distill")  # ILSD λ over training (core.losses.ilsd_lambda)


def allowed_loops(max_loops: int) -> tuple[int, int]:
    """The loop counts a generator may run at, (lowest, highest) inclusive: 1 … 2·L_max.

    The one definition of the rule: beyond L_max is extrapolation (PAPER.md §6, claim 5), and far beyond
    it only degrades, so the app, the API and the page (export.json carries it) all stop at twice L_max."""
    return (1, 2 * max_loops)


class ConfigError(ValueError):
    """A config value out of range; the message names the field and the accepted values."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class TokenizerConfig:
    """Conv encoder/decoder with an FSQ quantizer; 2-D for images, 3-D for video (num_frames > 1)."""

    image_size: int = 32
    num_frames: int = 1  # 1 = image tokenizer; > 1 = spatio-temporal (video) tokenizer
    channels: tuple[int, ...] = (32, 64, 128)  # one stage per entry; stage i>0 downsamples space 2x
    temporal_downsample: int = 1  # total time compression (power of two, <= 2**(stages-1))
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per latent channel; codebook = prod(levels)
    # video: the decoder's conv kernel along time; 1 decodes every token-frame on its own (with
    # temporal_downsample 1, a per-frame 2-D tokenizer: its norms take statistics per frame too)
    temporal_kernel: int = 3

    def __post_init__(self) -> None:
        _check(self.temporal_kernel in (1, 3), f"temporal_kernel must be 1 or 3, got {self.temporal_kernel}")
        _check(self.image_size % self.spatial_downsample == 0,
               f"image_size {self.image_size} must be divisible by {self.spatial_downsample}")
        _check(self.num_frames >= 1, "num_frames must be >= 1")
        _check(self.num_frames % self.temporal_downsample == 0,
               f"num_frames {self.num_frames} must be divisible by temporal_downsample")
        stages = len(self.channels) - 1
        _check(self.temporal_downsample in [2**i for i in range(stages + 1)],
               f"temporal_downsample must be a power of two <= {2**stages}")
        _check(all(level >= 2 for level in self.levels), "every FSQ level must be >= 2")

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1

    @property
    def spatial_downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W') of the token grid; T' = 1 for images."""
        side = self.image_size // self.spatial_downsample
        return (self.num_frames // self.temporal_downsample, side, side)


@dataclass(frozen=True)
class ClassifierConfig:
    """Small conv net trained on real data; its penultimate features define FD-<dataset>net."""

    num_classes: int = 10
    image_size: int = 32
    num_frames: int = 1
    channels: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1


@dataclass(frozen=True)
class ModelConfig:
    """LoopedTransformer: embed once, apply `num_layers` unique layers `max_loops` times, one head.

    The dense baseline is the same class with num_layers = N * L and max_loops = 1.
    """

    vocab_size: int = 1000  # tokenizer codebook; the mask token is id vocab_size
    num_classes: int = 10  # the null (unconditional) class is id num_classes
    token_grid: tuple[int, int, int] = (1, 8, 8)
    width: int = 128
    num_heads: int = 4
    mlp_ratio: int = 4
    num_layers: int = 2
    max_loops: int = 4
    # starting position embedding (learned either way): "random" (normal, std 0.02) or "sincos"
    # (frame + row + column sin-cos codes, core.model.sincos_grid)
    position_init: str = "random"

    def __post_init__(self) -> None:
        _check(self.position_init in ("random", "sincos"),
               f"position_init must be 'random' or 'sincos', got {self.position_init!r}")
        _check(self.width % self.num_heads == 0,
               f"width {self.width} must be divisible by num_heads {self.num_heads}")
        _check(self.num_layers >= 1, "num_layers must be >= 1")
        _check(self.max_loops >= 1, "max_loops must be >= 1")
        _check(self.vocab_size >= 2 and self.num_classes >= 1, "vocab_size >= 2, num_classes >= 1")

    @property
    def num_tokens(self) -> int:
        return math.prod(self.token_grid)

    @property
    def seq_len(self) -> int:
        return self.num_tokens + 1  # class token prepended

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def name(self) -> str:
        return f"{self.num_layers}N×{self.max_loops}L"

    @property
    def allowed_loops(self) -> tuple[int, int]:
        return allowed_loops(self.max_loops)


@dataclass(frozen=True)
class DiTConfig:
    """Looped DiT denoiser (core.model.LoopedDiT) over the tokenizer's continuous latent grid.

    Same loop structure as ModelConfig (N unique layers applied L times, one shared final layer);
    conditioning is adaLN-Zero on time + class instead of a class token.  The noise schedule and the
    loss weighting belong to the model because training and sampling must agree on them
    (core.sampling.noise_schedule, core.losses.diffusion_inputs).
    """

    num_classes: int = 10  # the null (unconditional) class is id num_classes
    latent_grid: tuple[int, int, int] = (1, 8, 8)  # (T', H', W') of the tokenizer's latent
    latent_channels: int = 4  # the tokenizer's latent channels (len(levels))
    patch_size: int = 1  # spatial patch of the latent grid per transformer token
    width: int = 128
    num_heads: int = 4
    mlp_ratio: int = 4
    num_layers: int = 2
    max_loops: int = 4
    schedule_shift: float = 1.0  # shifted cosine: logSNR(t) = -2 log tan(πt/2) - 2 log shift (> 1: noisier)
    weight_bias: float = -1.0  # x0-loss weight w(t) = sigmoid(logSNR(t) - weight_bias)

    def __post_init__(self) -> None:
        _check(self.width % self.num_heads == 0,
               f"width {self.width} must be divisible by num_heads {self.num_heads}")
        _check(self.num_layers >= 1, "num_layers must be >= 1")
        _check(self.max_loops >= 1, "max_loops must be >= 1")
        _check(self.num_classes >= 1 and self.latent_channels >= 1, "num_classes, latent_channels >= 1")
        _check(self.patch_size >= 1 and self.latent_grid[1] % self.patch_size == 0
               and self.latent_grid[2] % self.patch_size == 0,
               f"patch_size {self.patch_size} must divide the latent grid {self.latent_grid}")
        _check(self.schedule_shift > 0, "schedule_shift must be > 0")

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W') of the transformer's tokens (the latent grid over patches)."""
        T, H, W = self.latent_grid
        return (T, H // self.patch_size, W // self.patch_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.token_grid)

    @property
    def seq_len(self) -> int:
        return self.num_tokens  # conditioning enters through adaLN, not a token

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.latent_channels

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def name(self) -> str:
        return f"DiT {self.num_layers}N×{self.max_loops}L"

    @property
    def allowed_loops(self) -> tuple[int, int]:
        return allowed_loops(self.max_loops)


@dataclass(frozen=True)
class TrainConfig:
    task: str = "generator"  # one of TASKS
    dataset: str = "shapes"
    data_root: str | None = None  # folder for the imagefolder / videofolder datasets
    mode: str = "ilsd"  # generator objective: one of GENERATOR_MODES
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.045
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables the EMA copy
    min_loops: int = 1  # ILSD student loop count is drawn from [min_loops, max_loops - 1]
    lambda_schedule: str = "linear"  # ILSD λ over training: one of LAMBDA_SCHEDULES
    label_dropout: float = 0.1  # classifier-free guidance: fraction of labels replaced by null
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0
    bf16: bool = True  # bf16 autocast where the hardware has bf16 units (AMX / AVX512-BF16, tensor cores)
    edge_weight: float = 0.0  # tokenizer only: pixel error weighted 1 + edge_weight·(edge strength, mean 1)
    tokenizer: str | None = None  # generator only: tokenizer checkpoint folder
    classifier: str | None = None  # generator only: metric classifier folder, used by evaluate

    def __post_init__(self) -> None:
        _check(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        _check(self.mode in GENERATOR_MODES, f"mode must be one of {GENERATOR_MODES}, got {self.mode!r}")
        _check(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
        _check(self.min_loops >= 1, "min_loops must be >= 1")
        _check(0.0 <= self.label_dropout < 1.0, "label_dropout must be in [0, 1)")
        _check(self.lambda_schedule in LAMBDA_SCHEDULES,
               f"lambda_schedule must be one of {LAMBDA_SCHEDULES}, got {self.lambda_schedule!r}")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1")
        _check(self.edge_weight >= 0.0, f"edge_weight must be >= 0, got {self.edge_weight}")


@dataclass(frozen=True)
class SamplerConfig:
    """MaskGIT decoding settings.  An experiment carries the defaults its checkpoint is sampled and
    evaluated with (`Experiment.sampler`); the CLIs and the app start from them."""

    steps: int = 8
    cfg_scale: float = 2.0  # classifier-free guidance; 0 disables (and skips the null-class pass)
    choice_temperature: float = 4.5  # Gumbel noise on confidences, annealed linearly to 0 (MaskGIT: 4.5)
    # token temperature at step k of K: base + bias·(1 − (k+1)/K).  Flat 1.0, not MaskGIT's annealed
    # 1.3 → 0.5 (base 0.5, bias 0.8): on 500 images (seed 1, 8,000-step models) shapes-elt 0.618 → 0.688
    # at L = 4 and 0.596 → 0.616 at L = 2, shapes-vanilla +0.02 at both; video clips did not change.
    # On seed 0 it is mixed (README): FD lower at L ≥ 2, shapes-dense 0.698 → 0.678
    temperature_base: float = 1.0
    temperature_bias: float = 0.0

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.cfg_scale >= 0, f"cfg_scale must be >= 0, got {self.cfg_scale}")

    @property
    def passes(self) -> int:
        """Model forward passes per sample: one per step, two with classifier-free guidance."""
        return self.steps * (2 if self.cfg_scale > 0 else 1)


@dataclass(frozen=True)
class DiffusionSamplerConfig:
    """DiT sampling settings (core.sampling.diffusion_decode): `steps` solver steps from t = 1 to 0."""

    steps: int = 32
    cfg_scale: float = 2.0  # the guidance scale; 0 disables (and skips the null-class pass)
    method: str = "ddim"  # "ddim" (deterministic) or "ddpm" (ancestral: fresh noise every step)
    # 0: classifier-free guidance (conditional against unconditional, two passes per step).  k >= 1: loop
    # guidance, the prediction at L loops guided away from the same pass's prediction at loop k < L, with no
    # unconditional pass (core.sampling.loop_guided)
    guide_loop: int = 0

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.cfg_scale >= 0, f"cfg_scale must be >= 0, got {self.cfg_scale}")
        _check(self.method in DIFFUSION_METHODS, f"method must be one of {DIFFUSION_METHODS}, got {self.method!r}")
        _check(self.guide_loop >= 0, f"guide_loop must be >= 0, got {self.guide_loop}")

    @property
    def passes(self) -> int:
        return self.steps * (2 if self.cfg_scale > 0 and not self.guide_loop else 1)

    def check_loops(self, loops: int) -> None:
        """ConfigError unless loop guidance has a loop to guide from below `loops`."""
        _check(not self.guide_loop or self.guide_loop < loops,
               f"loop guidance from loop {self.guide_loop} needs more loops than that; got {loops} loops")


DIFFUSION_METHODS = ("ddim", "ddpm")
# generator family -> (model config, sampler config); the family's code is chosen in core.family
GENERATOR_CONFIGS = {"maskgit": (ModelConfig, SamplerConfig), "diffusion": (DiTConfig, DiffusionSamplerConfig)}
MODEL_TYPES = {"tokenizer": TokenizerConfig, "classifier": ClassifierConfig, "generator": ModelConfig}


def family_name(model: Any) -> str:
    """"maskgit" or "diffusion" for a generator config."""
    for name, (config_type, _) in GENERATOR_CONFIGS.items():
        if isinstance(model, config_type):
            return name
    raise ConfigError(f"not a generator config: {type(model).__name__}")


@dataclass(frozen=True)
class Experiment:
    """A model config plus how to train it (and, for a generator, how to sample it); `model` type
    follows `train.task`."""

    name: str
    train: TrainConfig
    model: TokenizerConfig | ClassifierConfig | ModelConfig | DiTConfig = field(default_factory=ModelConfig)
    description: str = ""
    sampler: SamplerConfig | DiffusionSamplerConfig | None = None  # None: the family's default

    def __post_init__(self) -> None:
        if self.train.task == "generator":
            family = family_name(self.model)
            sampler_type = GENERATOR_CONFIGS[family][1]
            if self.sampler is None:
                object.__setattr__(self, "sampler", sampler_type())
            _check(isinstance(self.sampler, sampler_type),
                   f"a {family} generator needs a {sampler_type.__name__}, got {type(self.sampler).__name__}")
        else:
            expected = MODEL_TYPES[self.train.task]
            _check(isinstance(self.model, expected),
                   f"task {self.train.task!r} needs a {expected.__name__}, got {type(self.model).__name__}")
            if self.sampler is None:
                object.__setattr__(self, "sampler", SamplerConfig())
        if self.train.task == "generator":
            _check(self.train.mode != "dense" or self.model.max_loops == 1,
                   "mode 'dense' needs max_loops = 1 (N·L unique layers, one loop)")
            _check(self.train.mode != "ilsd" or self.model.max_loops > self.train.min_loops,
                   "mode 'ilsd' needs max_loops > min_loops")

    @property
    def trained_loops(self) -> tuple[int, int]:
        """The loop counts a generator's objective supervises: ILSD L_min…L_max, vanilla L_max only,
        dense its one loop.  Other L run (below: exit early; above: extrapolation), untrained."""
        top = self.model.max_loops
        return (self.train.min_loops, top) if self.train.mode == "ilsd" else (top, top)

    @property
    def family(self) -> str | None:
        """The generator family ("maskgit" / "diffusion"); None for a tokenizer or classifier."""
        return family_name(self.model) if self.train.task == "generator" else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.train.task != "generator":
            del data["sampler"]  # nothing to sample
        elif self.family != "maskgit":  # MaskGIT configs stay as they were (no key: older checkpoints)
            data["model"] = {"family": self.family, **data["model"]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Experiment":
        train = _build(TrainConfig, data["train"])
        if train.task != "generator":
            return cls(name=data["name"], train=train, model=_build(MODEL_TYPES[train.task], data["model"]),
                       description=data.get("description", ""))
        model_data = dict(data["model"])
        family = model_data.pop("family", "maskgit")
        _check(family in GENERATOR_CONFIGS, f"unknown generator family {family!r}; accepted: {list(GENERATOR_CONFIGS)}")
        model_type, sampler_type = GENERATOR_CONFIGS[family]
        return cls(name=data["name"], train=train, model=_build(model_type, model_data),
                   description=data.get("description", ""),
                   sampler=_build(sampler_type, data.get("sampler", {})))  # older checkpoints: the defaults

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        return cls.from_dict(json.loads(text))


def _build(cls: type, data: dict[str, Any]):
    """Dataclass from a JSON dict: unknown keys are errors, lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    _check(not unknown, f"unknown {cls.__name__} keys {unknown}; accepted: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def dense_twin(model: ModelConfig) -> ModelConfig:
    """The dense baseline of equal FLOPs: N·L unique layers, one loop."""
    return replace(model, num_layers=model.num_layers * model.max_loops, max_loops=1)


# ---------------------------------------------------------------------------------------------
# Presets.  Embedded ones are trained here on 2 CPU cores; paper-scale ones are the scale-up path
# (PAPER.md §4: width/MLP/heads L = 1024/4096/16, XL = 1152/4608/16; 16x16 tokens, 1024 codes).
# ---------------------------------------------------------------------------------------------

_SHAPES_TOKENIZER = TokenizerConfig()
_IMAGE_TOKENIZER_TRAIN = TrainConfig(task="tokenizer", dataset="shapes", steps=1500, batch_size=64, lr=2e-3,
                                      weight_decay=0.0, warmup_steps=100)
_IMAGE_CLASSIFIER_TRAIN = TrainConfig(task="classifier", dataset="shapes", steps=800, batch_size=128, lr=2e-3,
                                       weight_decay=1e-4, warmup_steps=100, label_dropout=0.0)
# width 128: a width-192 block fits only ~8,000 steps in the 60-min budget and scored lower (0.68 vs 0.74
# accuracy at L = 4 for ILSD, 500 samples, seed 0; README)
_SHAPES_GEN = ModelConfig(vocab_size=_SHAPES_TOKENIZER.codebook_size, num_classes=10,
                          token_grid=_SHAPES_TOKENIZER.token_grid, width=128, num_heads=4,
                          num_layers=2, max_loops=4)
# 16 MaskGIT steps, not 8: chosen on seed 1 (500 images, the shipped models), accuracy at L = 1 / 2 / 3 / 4 went
# from 0.37 / 0.72 / 0.77 / 0.75 to 0.37 / 0.79 / 0.81 / 0.83 for shapes-elt (24 steps: 0.85 at L = 4), vanilla
# from 0.83 to 0.90 at L = 4, dense from 0.79 to 0.82; the video models did not gain (0.83 → 0.81 at L = 4)
_SHAPES_SAMPLER = SamplerConfig(steps=16)
# 24,000 steps for all three arms (issue 22: equal budgets): at 12,000 shapes-elt peaked at L = 3 and vanilla led
# at L_max; with `--compile` an ILSD step takes ≈ 0.21 s on 2 cores (≈ 85 min), inside the 150-minute limit
_SHAPES_TRAIN = TrainConfig(task="generator", dataset="shapes", steps=24_000, batch_size=64, lr=2e-3,
                            tokenizer="checkpoints/shapes-tokenizer",
                            classifier="checkpoints/shapes-classifier")
_IMAGENET_TRAIN = TrainConfig(task="generator", dataset="imagefolder", steps=270 * 2500, batch_size=512,
                              lr=1e-4, warmup_steps=10_000, ema_decay=0.9999,
                              tokenizer="checkpoints/imagenet-tokenizer",
                              classifier="checkpoints/imagenet-classifier")
_IMAGENET_TOKENIZER = TokenizerConfig(image_size=256, channels=(64, 128, 128, 256, 512), levels=(8, 8, 4, 4))
_imagenet = dict(vocab_size=_IMAGENET_TOKENIZER.codebook_size, num_classes=1000,
                 token_grid=_IMAGENET_TOKENIZER.token_grid)

# Diffusion on the same tokenizer's continuous latent (8×8×4, core.model.LoopedDiT explains why), the same
# 2N×4L block at width 128 as the MaskGIT models, so MaskGIT and DiT compare at equal transformer size
_SHAPES_DIT = DiTConfig(num_classes=10, latent_grid=_SHAPES_TOKENIZER.token_grid,
                        latent_channels=len(_SHAPES_TOKENIZER.levels), width=128, num_heads=4, num_layers=2,
                        max_loops=4)
# At 12,000 steps of batch 64 the ILSD DiT trailed vanilla at L_max (0.890 vs 0.922 accuracy, FD 6.3 vs 2.9), as
# shapes-elt did at 12,000.  A DiT step is compute-bound: in fp32 on a 2-core AVX2 EPYC it took 0.51 s at batch 64
# and 0.25 s at batch 32 (2 threads), 0.38-0.40 s at batch 32 on one core while a twin ran on the other
# (core.bench.train_step_ratio).  So twice the updates at half the batch: 20,000 steps of 32, with two models
# trained at once, one core each, ≈ 135 min (issue 33; docs/EXPERIMENTS.md)
_SHAPES_DIT_TRAIN = replace(_SHAPES_TRAIN, steps=20_000, batch_size=32, lr=1e-3)
_SHAPES_DIT_SAMPLER = DiffusionSamplerConfig(steps=24, cfg_scale=2.0)

# 4 frames per token with a 5-channel FSQ, 7·5·5·5·5 = 4,375 codes (issue 33; docs/EXPERIMENTS.md, "Video step
# cost"): 2x8x8 = 128 tokens per clip, half the earlier 4x8x8 grid of 1,000 codes, make the fp32 ILSD step 2.0x
# cheaper (1.37 vs 2.75 s CPU time at batch 32, 1 thread, AVX2 EPYC), and the metric classifier still recognises
# 0.996 of 500 reconstructed test clips (23.7 dB PSNR after 800 steps).  With 1,000 codes four frames per token
# could not hold a moving edge (0.69 recognised); 12,800 codes would make the step slower than before.
_MOVING_TOKENIZER = TokenizerConfig(image_size=32, num_frames=8, channels=(16, 32, 64), temporal_downsample=4,
                                    levels=(7, 5, 5, 5, 5))
# Issue 44: a per-frame 2-D tokenizer keeps each frame's shape (round-trip shape consistency 0.885 on 300 test
# clips, against 0.671 for the 4-frames-per-token one above; docs/EXPERIMENTS.md, "Video tokenizers and shape
# consistency"): 1x4x4 patches, 1x3x3 decoder convs and per-frame norms, the shapes tokenizer's widths and codes;
# 8x8x8 = 512 tokens a clip.  Its generators: batch 8, the cheapest per sample at 512 tokens (bf16, one core:
# 0.71 s a step against 1.55 s at batch 16), lr scaled by √(8/16) from batch 16's 1.5e-3.
_MOVING_2D_TOKENIZER = TokenizerConfig(image_size=32, num_frames=8, channels=(32, 64, 128), temporal_downsample=1,
                                       temporal_kernel=1, levels=(8, 5, 5, 5))
_MOVING_2D_TRAIN = TrainConfig(task="generator", dataset="moving-shapes", steps=11_000, batch_size=8, lr=1.1e-3,
                               tokenizer="checkpoints/moving-shapes-2d-tokenizer",
                               classifier="checkpoints/moving-shapes-classifier")
# sincos start: at 1,000 steps the ILSD teacher CE was 0.03 nats lower than from a random start
_MOVING_GEN = ModelConfig(vocab_size=_MOVING_TOKENIZER.codebook_size, num_classes=10,
                          token_grid=_MOVING_TOKENIZER.token_grid, width=128, num_heads=4, num_layers=2, max_loops=4,
                          position_init="sincos")
# Batch 16, 11,000 steps: the two video generators train at once, each on one core (scripts/train_shipped.sh), at
# ≈ 0.55 s (vanilla) and ≈ 0.69 s (ILSD) per step, 103 and ≈ 130 min; one 2-thread run at batch 32 took 1.0 s
# per step (docs/EXPERIMENTS.md, "Video generators on 2x8x8 tokens")
_MOVING_TRAIN = TrainConfig(task="generator", dataset="moving-shapes", steps=11_000, batch_size=16, lr=1.5e-3,
                            tokenizer="checkpoints/moving-shapes-tokenizer",
                            classifier="checkpoints/moving-shapes-classifier")
# Guidance 3, not the image models' 2: chosen on seed 1 (150 clips, 7,000-step models), moving-shapes-elt
# went from 0.85 / 0.75 / 0.75 / 0.68 to 0.79 / 0.87 / 0.81 / 0.83 action accuracy at L = 1 / 2 / 3 / 4 and
# vanilla from 0.67 to 0.75 at L = 4; the image models are best at 2 (guidance 3: shapes-elt FD 62 at L = 4)
_MOVING_SAMPLER = SamplerConfig(cfg_scale=3.0)
_MOVING_TOKENIZER_TRAIN = TrainConfig(task="tokenizer", dataset="moving-shapes", steps=800, batch_size=16, lr=2e-3,
                                      weight_decay=0.0, warmup_steps=100,
                                      bf16=False)  # bf16 Conv3d backward gives NaN grads on CPU by step 2
# MAGVIT-style: 16x128x128 clips -> 4x16x16 tokens, 1024 codes; ELT 6N×4L at width 1024 (76M params)
_UCF_TOKENIZER = TokenizerConfig(image_size=128, num_frames=16, channels=(64, 128, 256, 512), temporal_downsample=4,
                                 levels=(8, 8, 4, 4))
_UCF_TRAIN = replace(_IMAGENET_TRAIN, dataset="videofolder", tokenizer="checkpoints/ucf101-tokenizer",
                     classifier="checkpoints/ucf101-classifier", label_dropout=0.0)

# Digits (scikit-learn's 1,797 real 8x8 scans, 16 grey levels; 1,437 train / 360 held out, core.data.digits).
# 16x16, not 32x32: the source has 8x8 pixels, so 16x16 is already 2x upsampled and loses nothing.  Two
# stages (2x downsampling) give an 8x8 token grid, one token per source pixel (the shapes generators'
# sequence length, so the same 2N×4L block fits the time budget); each token must hold one pixel's 16
# grey levels plus how it blends into its neighbours under the bilinear upsampling, hence 8·8·4 = 256
# codes, well above 16 and a quarter of shapes' vocabulary (a smaller softmax for 1,437 images).
_DIGITS_TOKENIZER = TokenizerConfig(image_size=16, channels=(32, 64), levels=(8, 8, 4))
_DIGITS_GEN = replace(_SHAPES_GEN, vocab_size=_DIGITS_TOKENIZER.codebook_size, token_grid=_DIGITS_TOKENIZER.token_grid)
# 12,000 steps at batch 64: shapes-elt / -vanilla (same width, depth and sequence length) took 0.28 / 0.35 s
# per step on 2 cores, so ≈ 60-75 min per generator, inside the 100-minute aim
_DIGITS_TRAIN = replace(_SHAPES_TRAIN, dataset="digits", steps=12_000, tokenizer="checkpoints/digits-tokenizer",
                        classifier="checkpoints/digits-classifier")

# Emoji (data/emoji, built by scripts/make_emoji_dataset.py from open-licensed npm artwork in six styles; its
# README lists sources, licences and counts): 32x32 colour drawings, one class per Unicode subgroup.
# 1,000 codes (8·5·5·5), shapes' codebook: at 1,500 steps it reconstructs the 501 val images at 22.7 dB PSNR
# (987 codes used) against 23.4 dB for 7·5·5·5·5 = 4,375 codes (3,102 used); 0.7 dB is not worth a generator
# head and embedding 4.4x larger (a softmax over 4,375 codes per token, and 1.1 M of a generator's weights
# against the 60 MB budget for every shipped checkpoint) (docs/EXPERIMENTS.md, "Emoji")
_EMOJI_TOKENIZER = TokenizerConfig(levels=(8, 5, 5, 5))
_EMOJI_CLASSES = 11  # the subgroups the script keeps at its pinned package versions (>= 150 images each)
_EMOJI_DATA = dict(dataset="imagefolder", data_root="data/emoji")
# Width 192 (6 heads), not shapes' 128: six styles of eleven kinds of thing hold far more than ten procedural
# shapes, and on one core a bf16 ILSD step at width 192 cost 1.16x the width-128 step (1.31 vs 1.13 s in a short
# probe; fp32: 1.58 vs 1.23 s) (docs/EXPERIMENTS.md, "Emoji")
_EMOJI_GEN = replace(_SHAPES_GEN, vocab_size=_EMOJI_TOKENIZER.codebook_size, num_classes=_EMOJI_CLASSES,
                     token_grid=_EMOJI_TOKENIZER.token_grid, width=192, num_heads=6)
# 7,000 steps of 64 (191 epochs of the 2,343 training images), lr 1.5e-3: the two generators train at once, one
# core each, at ≈ 0.75 s per step with the core to themselves (bf16 autocast, compiled layers), ≈ 0.85 s beside
# other work: ≈ 100 min, inside the 150-minute limit
_EMOJI_TRAIN = replace(_SHAPES_TRAIN, **_EMOJI_DATA, steps=7_000, lr=1.5e-3, tokenizer="checkpoints/emoji-tokenizer",
                       classifier="checkpoints/emoji-classifier")

PRESETS: dict[str, Experiment] = {
    "shapes-tokenizer": Experiment(
        "shapes-tokenizer", _IMAGE_TOKENIZER_TRAIN,
        _SHAPES_TOKENIZER, "FSQ image tokenizer, 32x32 RGB -> 8x8 tokens, 1000 codes"),
    "shapes-classifier": Experiment(
        "shapes-classifier", _IMAGE_CLASSIFIER_TRAIN,
        ClassifierConfig(num_classes=10), "metric classifier for shapes (FD-shapesnet features)"),
    # L_min = 2: at 8,000 steps, students drawn from {1, 2, 3} held the 2N block to one-loop quality
    # (0.44 accuracy at L = 4 vs 0.63 for vanilla); students from {2, 3} give 0.60 (500 samples, seed 0)
    "shapes-elt": Experiment("shapes-elt", replace(_SHAPES_TRAIN, min_loops=2), _SHAPES_GEN,
                             "ELT 2N×4L trained with ILSD (students at L = 2, 3)", _SHAPES_SAMPLER),
    "shapes-vanilla": Experiment("shapes-vanilla", replace(_SHAPES_TRAIN, mode="vanilla"), _SHAPES_GEN,
                                 "looped 2N×4L trained at L_max only", _SHAPES_SAMPLER),
    "shapes-dense": Experiment("shapes-dense", replace(_SHAPES_TRAIN, mode="dense"),
                               dense_twin(_SHAPES_GEN), "dense 8 unique layers, equal FLOPs", _SHAPES_SAMPLER),
    "shapes-dit-elt": Experiment("shapes-dit-elt", replace(_SHAPES_DIT_TRAIN, min_loops=2), _SHAPES_DIT,
                                 "looped DiT 2N×4L trained with ILSD (students at L = 2, 3)", _SHAPES_DIT_SAMPLER),
    "shapes-dit-vanilla": Experiment("shapes-dit-vanilla", replace(_SHAPES_DIT_TRAIN, mode="vanilla"), _SHAPES_DIT,
                                     "looped DiT 2N×4L trained at L_max only", _SHAPES_DIT_SAMPLER),
    "shapes-dit-dense": Experiment("shapes-dit-dense", replace(_SHAPES_DIT_TRAIN, mode="dense"),
                                   dense_twin(_SHAPES_DIT), "dense DiT, 8 unique layers, equal FLOPs",
                                   _SHAPES_DIT_SAMPLER),
    "digits-tokenizer": Experiment(
        "digits-tokenizer", replace(_IMAGE_TOKENIZER_TRAIN, dataset="digits"), _DIGITS_TOKENIZER,
        "FSQ tokenizer for real handwritten digits, 16x16 grey -> 8x8 tokens, 256 codes"),
    "digits-classifier": Experiment(
        "digits-classifier", replace(_IMAGE_CLASSIFIER_TRAIN, dataset="digits", steps=1000),
        ClassifierConfig(num_classes=10, image_size=16, channels=(32, 64)),
        "metric classifier for digits (FD-digitsnet features); accuracy on the 360 held-out scans"),
    "digits-elt": Experiment("digits-elt", replace(_DIGITS_TRAIN, min_loops=2), _DIGITS_GEN,
                             "ELT 2N×4L on real digits, ILSD (students at L = 2, 3)", _SHAPES_SAMPLER),
    "digits-vanilla": Experiment("digits-vanilla", replace(_DIGITS_TRAIN, mode="vanilla"), _DIGITS_GEN,
                                 "looped 2N×4L on real digits, trained at L_max only", _SHAPES_SAMPLER),
    "emoji-tokenizer": Experiment(
        "emoji-tokenizer", replace(_IMAGE_TOKENIZER_TRAIN, **_EMOJI_DATA), _EMOJI_TOKENIZER,
        "FSQ tokenizer for emoji artwork, 32x32 RGB -> 8x8 tokens, 1000 codes"),
    "emoji-classifier": Experiment(
        "emoji-classifier", replace(_IMAGE_CLASSIFIER_TRAIN, **_EMOJI_DATA),
        ClassifierConfig(num_classes=_EMOJI_CLASSES),
        "metric classifier for emoji subgroups (FD-emojinet features); accuracy on the val designs"),
    "emoji-elt": Experiment("emoji-elt", replace(_EMOJI_TRAIN, min_loops=2), _EMOJI_GEN,
                            "ELT 2N×4L on emoji artwork, ILSD (students at L = 2, 3)", _SHAPES_SAMPLER),
    "emoji-vanilla": Experiment("emoji-vanilla", replace(_EMOJI_TRAIN, mode="vanilla"), _EMOJI_GEN,
                                "looped 2N×4L on emoji artwork, trained at L_max only", _SHAPES_SAMPLER),
    "imagenet-tokenizer": Experiment(
        "imagenet-tokenizer", TrainConfig(task="tokenizer", dataset="imagefolder", steps=200_000,
                                          batch_size=256, lr=1e-4, weight_decay=0.0),
        _IMAGENET_TOKENIZER, "FSQ tokenizer, 256x256 -> 16x16 tokens, 1024 codes"),
    "imagenet-L-8x3": Experiment(
        "imagenet-L-8x3", _IMAGENET_TRAIN,
        ModelConfig(**_imagenet, width=1024, num_heads=16, num_layers=8, max_loops=3), "ELT-L 8N×3L"),
    "imagenet-L-12x2": Experiment(
        "imagenet-L-12x2", _IMAGENET_TRAIN,
        ModelConfig(**_imagenet, width=1024, num_heads=16, num_layers=12, max_loops=2), "ELT-L 12N×2L"),
    "imagenet-XL-7x4": Experiment(
        "imagenet-XL-7x4", _IMAGENET_TRAIN,
        ModelConfig(**_imagenet, width=1152, num_heads=16, num_layers=7, max_loops=4), "ELT-XL 7N×4L"),
    "imagenet-L-dense24": Experiment(
        "imagenet-L-dense24", replace(_IMAGENET_TRAIN, mode="dense"),
        ModelConfig(**_imagenet, width=1024, num_heads=16, num_layers=24, max_loops=1),
        "dense 24-layer baseline of ELT-L 8N×3L"),
    "moving-shapes-tokenizer": Experiment(
        "moving-shapes-tokenizer", _MOVING_TOKENIZER_TRAIN,
        _MOVING_TOKENIZER, "3-D FSQ video tokenizer, 8x32x32 clips -> 2x8x8 tokens (4 frames per token), 4375 codes"),
    "moving-shapes-2d-tokenizer": Experiment(
        "moving-shapes-2d-tokenizer", replace(_MOVING_TOKENIZER_TRAIN, steps=1500), _MOVING_2D_TOKENIZER,
        "per-frame 2-D FSQ video tokenizer, 8x32x32 clips -> 8x8x8 tokens (one token-frame per frame), 1000 codes"),
    "moving-shapes-2d-elt": Experiment(
        "moving-shapes-2d-elt", replace(_MOVING_2D_TRAIN, min_loops=2),
        replace(_MOVING_GEN, vocab_size=_MOVING_2D_TOKENIZER.codebook_size, token_grid=_MOVING_2D_TOKENIZER.token_grid),
        "video ELT 2N×4L over per-frame tokens, ILSD (students at L = 2, 3)", _MOVING_SAMPLER),
    "moving-shapes-2d-vanilla": Experiment(
        "moving-shapes-2d-vanilla", replace(_MOVING_2D_TRAIN, mode="vanilla"),
        replace(_MOVING_GEN, vocab_size=_MOVING_2D_TOKENIZER.codebook_size, token_grid=_MOVING_2D_TOKENIZER.token_grid),
        "video 2N×4L over per-frame tokens, trained at L_max only", _MOVING_SAMPLER),
    "moving-shapes-classifier": Experiment(
        "moving-shapes-classifier", TrainConfig(task="classifier", dataset="moving-shapes", steps=800, batch_size=32,
                                                lr=2e-3, weight_decay=1e-4, warmup_steps=100, label_dropout=0.0,
                                                bf16=False),  # bf16 Conv3d backward overflows on CPU (inf grads)
        ClassifierConfig(num_classes=10, num_frames=8, channels=(16, 32, 64)),
        "3-D metric classifier for moving-shapes actions (FVD-movingshapesnet features)"),
    # 2-D, on single frames labelled with their clip's shape: a clip's shape consistency (core.metrics) is the share
    # of its frames this classifier gives the clip's most common shape; core.evaluate finds it beside the video
    # classifier (issue 44)
    "moving-shapes-frame-classifier": Experiment(
        "moving-shapes-frame-classifier", replace(_IMAGE_CLASSIFIER_TRAIN, dataset="moving-shapes-frames", steps=1500),
        ClassifierConfig(num_classes=10, channels=(16, 32, 64), feature_dim=64),
        "per-frame shape classifier for moving-shapes clips (shape consistency)"),
    "moving-shapes-elt": Experiment("moving-shapes-elt", replace(_MOVING_TRAIN, min_loops=2), _MOVING_GEN,
                                    "video ELT 2N×4L, ILSD (students at L = 2, 3)", _MOVING_SAMPLER),
    "moving-shapes-vanilla": Experiment("moving-shapes-vanilla", replace(_MOVING_TRAIN, mode="vanilla"), _MOVING_GEN,
                                        "video 2N×4L trained at L_max only", _MOVING_SAMPLER),
    "ucf101-tokenizer": Experiment(
        "ucf101-tokenizer", TrainConfig(task="tokenizer", dataset="videofolder", steps=200_000, batch_size=64,
                                        lr=1e-4, weight_decay=0.0), _UCF_TOKENIZER,
        "3-D FSQ tokenizer, 16x128x128 -> 4x16x16 tokens, 1024 codes"),
    "ucf101-6x4": Experiment(
        "ucf101-6x4", replace(_UCF_TRAIN, mode="ilsd"),
        ModelConfig(vocab_size=_UCF_TOKENIZER.codebook_size, num_classes=101, token_grid=_UCF_TOKENIZER.token_grid,
                    width=1024, num_heads=16, num_layers=6, max_loops=4), "ELT 6N×4L for UCF-101 (paper: FVD 72.8)"),
}


def get_preset(name: str) -> Experiment:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return PRESETS[name]
