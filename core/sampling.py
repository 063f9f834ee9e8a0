"""The samplers of both generator families as pure functions of the model call (no model, no globals).

MaskGIT: `logits_fn(tokens (B, T), labels (B,)) -> logits` returns either (B, T, V) or (L, B, T, V):
every loop's prediction from one pass, the last one used for decoding.
Diffusion: `denoise_fn(x_t (B, T, C), labels (B,), t (B,)) -> x0` returns (B, T, C) or (L, B, T, C).
Both yield their state after every step (the app's streaming contract: `predicted` is the step's full
prediction, `loop_predictions` every loop's).  Randomness enters only through an explicit
`torch.Generator`, so a fake model function gives an exactly reproducible result.

Each family's step is also a per-row pure function (`maskgit_init` / `maskgit_step`, `diffusion_init` /
`diffusion_step`): every row has its own settings, step and generator, so a server can batch requests
that arrive at different times (core.batching) and a row is what it would be alone; `maskgit_decode` and
`diffusion_decode` are thin loops over them.  MaskGIT draws its tokens by inverse CDF from explicit
uniforms, so the browser's sampler (assets/browser/maskgit.js) can mirror it on the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from core.config import DiffusionSamplerConfig, SamplerConfig  # noqa: F401  (re-exported: the settings live with the experiment)

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DecodeState:
    step: int  # 1-based index of the step just finished
    steps: int
    tokens: torch.Tensor  # (B, T) after this step; still-masked positions hold mask_id
    predicted: torch.Tensor  # (B, T) this step's full prediction (sampled where masked, kept elsewhere)
    loop_predictions: torch.Tensor | None  # (L, B, T) argmax per loop when logits_fn returned all loops
    num_masked: int  # masked positions per sample after this step


def mask_schedule(ratio: torch.Tensor | float) -> torch.Tensor | float:
    """Cosine schedule: fraction of tokens still masked at progress `ratio` in [0, 1]."""
    if isinstance(ratio, torch.Tensor):
        return torch.cos(ratio * math.pi / 2)
    return math.cos(ratio * math.pi / 2)


def num_masked_after(step: int, steps: int, num_tokens: int) -> int:
    """Tokens left masked after 0-based step `step` of `steps` (0 after the last step)."""
    return int(math.floor(mask_schedule((step + 1) / steps) * num_tokens))


def combine_guidance(both: torch.Tensor, cfg_scale: float | torch.Tensor) -> torch.Tensor:
    """(..., 2B, T, V) logits of [conditional; unconditional] rows -> uncond + s·(cond − uncond).

    cfg_scale: one scale, or one per sample (B,); a sample with scale 0 takes its conditional logits
    (scale 0 means no guidance, as in `guided`)."""
    cond, uncond = both.chunk(2, dim=-3)  # split the batch axis
    if not isinstance(cfg_scale, torch.Tensor) or cfg_scale.dim() == 0:
        return uncond + float(cfg_scale) * (cond - uncond)
    scale = cfg_scale.to(cond.device, cond.dtype).view(-1, 1, 1)
    # in place, one temporary: a server's every-loop logits are the largest tensor of its step; the same
    # operations in the same order as uncond + scale·(cond − uncond), so the same bits
    out = (cond - uncond).mul_(scale).add_(uncond)
    unguided = (scale == 0).view(-1)
    if bool(unguided.any()):
        out[..., unguided, :, :] = cond[..., unguided, :, :]
    return out


def guided(logits_fn: LogitsFn | DenoiseFn, tokens: torch.Tensor, labels: torch.Tensor, null_label: int,
           cfg_scale: float | torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond) in one batched call of
    fn(inputs, labels, *extra) (extra: e.g. the diffusion time, (B,) per sample).  cfg_scale: one scale or
    one per sample (B,); when every scale is 0 the unconditional half is not computed at all."""
    if not bool((torch.as_tensor(cfg_scale) != 0).any()):
        return logits_fn(tokens, labels, *extra)
    both = logits_fn(torch.cat([tokens, tokens]), torch.cat([labels, torch.full_like(labels, null_label)]),
                     *(torch.cat([e, e]) for e in extra))
    return combine_guidance(both, cfg_scale)


# -- loop counts per step: schedules and adaptive exit ------------------------------------------------
EXIT_KINDS = ("agree", "kl")


@dataclass(frozen=True)
class ExitCriterion:
    """When a sample stops looping inside a sampling step (compared on its still-masked tokens).

    agree:τ — the share of tokens whose argmax is unchanged from the previous loop is >= τ (0 < τ <= 1);
    kl:ε — the mean KL(p_loop ‖ p_previous loop) is < ε (ε > 0).  Checked after every loop i with
    i >= max(min_loops, 2) (loop 1 has no previous prediction); the loop count is the cap.
    """

    kind: str
    threshold: float
    min_loops: int = 1

    def __post_init__(self) -> None:
        if self.kind not in EXIT_KINDS:
            raise ValueError(f"unknown exit criterion {self.kind!r}; use agree:TAU or kl:EPS")
        if self.kind == "agree" and not 0 < self.threshold <= 1:
            raise ValueError(f"agree:τ needs 0 < τ <= 1, got {self.threshold:g}")
        if self.kind == "kl" and not self.threshold > 0:
            raise ValueError(f"kl:ε needs ε > 0, got {self.threshold:g}")
        if self.min_loops < 1:
            raise ValueError(f"exit min loops must be >= 1, got {self.min_loops}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.threshold:g}"

    def converged(self, previous: torch.Tensor, current: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """previous, current (B, T, V) logits, masked bool (B, T) -> bool (B,): has the sample settled?

        A sample with nothing masked has settled."""
        count = masked.sum(-1)
        if self.kind == "agree":
            same = (previous.argmax(-1) == current.argmax(-1)) & masked
            held = same.sum(-1) / count.clamp_min(1) >= self.threshold
        else:
            log_p, log_q = F.log_softmax(current.float(), -1), F.log_softmax(previous.float(), -1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
            held = (kl * masked).sum(-1) / count.clamp_min(1) < self.threshold
        return held | (count == 0)


@dataclass(frozen=True)
class LoopSetting:
    """How a run spends loops: a fixed L, a schedule (one L per step), adaptive exit (the fixed L or the
    schedule being the cap), or a schedule with adaptive exit."""

    loops: int
    schedule: tuple[int, ...] | None = None
    exit: ExitCriterion | None = None

    @property
    def name(self) -> str:
        parts = [f"schedule {','.join(map(str, self.schedule))}" if self.schedule else f"L={self.loops}"]
        if self.exit is not None:
            parts.append(f"adaptive {self.exit.name} (from loop {max(self.exit.min_loops, 2)})")
        return " + ".join(parts)

    @property
    def fixed(self) -> bool:
        return self.schedule is None and self.exit is None

    def caps(self, steps: int) -> list[int]:
        return list(self.schedule) if self.schedule is not None else [self.loops] * steps


def parse_exit(text: str, min_loops: int = 1) -> ExitCriterion:
    """"agree:0.95" or "kl:0.01" -> ExitCriterion; ValueError with one readable line otherwise."""
    kind, _, value = str(text).strip().partition(":")
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"adaptive criterion must be agree:TAU or kl:EPS, got {text!r}") from None
    return ExitCriterion(kind.strip().lower(), threshold, min_loops)


def parse_schedule(text: str, steps: int) -> tuple[int, ...]:
    """Loops per MaskGIT step: "1,2,3,4" (one L per step) or a ramp "A..B" (A at the first step, B at
    the last, linear in between, rounded).  ValueError for a wrong length or an L < 1."""
    text = str(text).strip()
    try:
        if ".." in text:
            start, end = (int(part) for part in text.split(".."))
            schedule = tuple(round(start + (end - start) * k / max(steps - 1, 1)) for k in range(steps))
            if min(start, end) < 1:
                raise ValueError(f"loops schedule {text!r}: every L must be >= 1")
        else:
            schedule = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        if "must be" in str(error):
            raise
        raise ValueError(f"loops schedule must be comma-separated integers or A..B, got {text!r}") from None
    if len(schedule) != steps:
        raise ValueError(f"loops schedule {text!r} has {len(schedule)} entries for {steps} sampling steps")
    if min(schedule) < 1:
        raise ValueError(f"loops schedule {text!r}: every L must be >= 1")
    return schedule


def exit_until(criterion: ExitCriterion, masked: torch.Tensor, cfg_scale: float = 0.0
               ) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """The model's `until(i, logits)` callback for one forward pass (see LoopedTransformer.forward).

    masked: bool (B, T) still-masked tokens of the batch the model sees; with guidance (cfg_scale > 0)
    its rows are [conditional; unconditional], the criterion is judged on the guided logits and both
    rows of a sample stop together.
    """
    previous: list[torch.Tensor] = []

    def until(i: int, logits: torch.Tensor) -> torch.Tensor:
        pair = cfg_scale > 0
        current = combine_guidance(logits.float(), cfg_scale) if pair else logits.float()
        mask = masked[: current.shape[0]].to(current.device)
        stop = torch.zeros(current.shape[0], dtype=torch.bool, device=current.device)
        if previous and i >= criterion.min_loops:
            stop = criterion.converged(previous[0], current, mask)
        previous[:] = [current]
        return torch.cat([stop, stop]) if pair else stop

    return until


def settled_loop(loop_predictions: torch.Tensor) -> torch.Tensor:
    """(L, B, T) argmax per loop -> (B, T) int: the 1-based loop from which each token's prediction no
    longer changed (1 = right after the first loop, L = only the last loop got it)."""
    L = loop_predictions.shape[0]
    differs = loop_predictions != loop_predictions[-1]  # (L, B, T)
    index = torch.arange(1, L + 1, device=loop_predictions.device).view(L, 1, 1)
    return (differs * index).amax(0) + 1  # one past the last loop that still disagreed


def row_generators(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int) -> list:
    """One generator per row: a list as given, or one generator shared by every row (drawn row by row, so a
    request's rows draw the same numbers alone as inside a larger batch)."""
    if isinstance(generator, Sequence):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} random generators for {batch} rows")
        return list(generator)
    return [generator] * batch


def uniforms(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int, shape: tuple[int, ...],
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform draws in [0, 1), (batch, *shape), each row from its own generator (see row_generators)."""
    return torch.stack([torch.rand(shape, generator=g, device=g.device if g is not None else "cpu")
                        for g in row_generators(generator, batch)]).to(device)


def gaussians(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int, shape: tuple[int, ...],
              device: torch.device | str = "cpu", rows: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal draws (batch, *shape) like `uniforms`; rows: bool (batch,) which rows draw (the others
    draw nothing from their generator and get zeros)."""
    want = [True] * batch if rows is None else rows.tolist()
    return torch.stack([torch.randn(shape, generator=g, device=g.device if g is not None else "cpu") if w else
                        torch.zeros(shape) for g, w in zip(row_generators(generator, batch), want)]).to(device)


class Rows:
    """What both families' row sets share: (B, …) tensor fields, one entry per row (other fields are settings
    of the whole set), each row at its own `step` of its own `steps`."""

    @property
    def done(self) -> torch.Tensor:
        return self.step >= self.steps

    def _rowwise(self) -> list[str]:
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]

    def select(self, rows: torch.Tensor | Sequence[int]):
        """The rows at `rows` (indices or a bool mask), e.g. to drop finished or cancelled samples."""
        return replace(self, **{name: getattr(self, name)[rows] for name in self._rowwise()})

    @staticmethod
    def concat(parts: Sequence["Rows"]):
        """Stack row sets (e.g. a newly admitted request's rows onto a running batch)."""
        return replace(parts[0], **{name: torch.cat([getattr(p, name) for p in parts])
                                    for name in parts[0]._rowwise()})


def configs_per_row(configs, batch: int) -> list:
    """Sampler configs: one for every row, or a sequence of one per row."""
    configs = list(configs) if isinstance(configs, Sequence) else [configs] * batch
    if len(configs) != batch:
        raise ValueError(f"{len(configs)} sampler configs for {batch} rows")
    return configs


@dataclass
class MaskGITRows(Rows):
    """B independent MaskGIT samples, each at its own step of its own settings (a batch a server can grow
    and shrink between steps).  Settings are per row: (B,) tensors."""

    tokens: torch.Tensor  # (B, T) mask_id where still unknown
    step: torch.Tensor  # (B,) long: steps done
    steps: torch.Tensor  # (B,) long
    to_decode: torch.Tensor  # (B,) long: tokens unknown at the start (the schedule runs over these)
    cfg_scale: torch.Tensor  # (B,) float
    temperature_base: torch.Tensor
    temperature_bias: torch.Tensor
    choice_temperature: torch.Tensor
    mask_id: int


def maskgit_init(configs: SamplerConfig | Sequence[SamplerConfig], *, batch: int, num_tokens: int, mask_id: int,
                 init: torch.Tensor | None = None, device: torch.device | str = "cpu") -> MaskGITRows:
    """Rows ready for their first step.  configs: one for every row, or one per row.

    init: optional (B, T) starting tokens, mask_id where unknown (e.g. a clip's first frames to
    continue); known tokens are kept and each row's schedule runs over its unknown ones."""
    configs = configs_per_row(configs, batch)
    if init is None:
        tokens = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    else:
        tokens = init.to(device=device, dtype=torch.long)
        if tokens.shape != (batch, num_tokens):
            raise ValueError(f"init must have shape {(batch, num_tokens)}, got {tuple(tokens.shape)}")
    per_row = lambda name, dtype=torch.float32: torch.tensor([getattr(c, name) for c in configs],  # noqa: E731
                                                             dtype=dtype, device=device)
    return MaskGITRows(tokens, torch.zeros(batch, dtype=torch.long, device=device), per_row("steps", torch.long),
                       (tokens == mask_id).sum(1), per_row("cfg_scale"), per_row("temperature_base"),
                       per_row("temperature_bias"), per_row("choice_temperature"), mask_id)


def maskgit_step(rows: MaskGITRows, logits: torch.Tensor, draws: torch.Tensor
                 ) -> tuple[MaskGITRows, torch.Tensor, torch.Tensor]:
    """One MaskGIT step of every row, a pure function of its inputs (the browser's sampler mirrors it).

    logits: (B, T, V) fp32, guidance already applied; draws: (2, B, T) uniforms in [0, 1): the token
    draws (inverse CDF of each token's distribution) and the choice draws (Gumbel noise of the
    confidence ranking).  Returns (rows after the step, this step's full prediction (B, T), tokens
    left masked per row (B,)).  The last step of a row leaves nothing masked.
    """
    if bool(rows.done.any()):
        raise ValueError("maskgit_step on a row that has finished all its steps")
    B, T, V = logits.shape
    progress = ((rows.step + 1) / rows.steps).float()  # (B,) after this step
    temperature = rows.temperature_base + rows.temperature_bias * (1 - progress)
    probs = torch.softmax(logits / temperature.clamp_min(1e-6)[:, None, None], dim=-1)
    cdf = probs.cumsum(-1)
    sampled = torch.searchsorted(cdf, (draws[0] * cdf[..., -1])[..., None], right=True)[..., 0].clamp_max(V - 1)
    unknown = rows.tokens == rows.mask_id
    sampled = torch.where(unknown, sampled, rows.tokens)

    # confidence of each sampled token; known tokens are never re-masked
    confidence = torch.gather(probs, -1, sampled[..., None])[..., 0]
    confidence = torch.where(unknown, confidence, torch.inf)
    n_mask = [0 if k == K - 1 else max(min(num_masked_after(k, K, n), u - 1), 0)
              for k, K, n, u in zip(rows.step.tolist(), rows.steps.tolist(), rows.to_decode.tolist(),
                                    unknown.sum(1).tolist())]
    choice_t = rows.choice_temperature * (1 - progress)
    gumbel = -torch.log(-torch.log(draws[1].clamp(1e-20, 1.0)))
    scores = torch.log(confidence.clamp_min(1e-20)) + choice_t[:, None] * gumbel
    remask = torch.zeros_like(unknown)
    for n in set(n_mask) - {0}:  # rows sharing a count share one top-k call
        at = torch.tensor([m == n for m in n_mask], device=scores.device)
        chosen = torch.zeros_like(unknown[at]).scatter_(1, scores[at].topk(n, dim=1, largest=False).indices, True)
        remask[at] = chosen
    tokens = torch.where(remask, rows.mask_id, sampled)
    return replace(rows, tokens=tokens, step=rows.step + 1), sampled, torch.tensor(n_mask)


def maskgit_decode(
    logits_fn: LogitsFn | Sequence[LogitsFn],
    labels: torch.Tensor,
    *,
    num_tokens: int,
    mask_id: int,
    null_label: int,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    init: torch.Tensor | None = None,
) -> Iterator[DecodeState]:
    """Yield the decoding state after every step; the last state's tokens are fully decoded.

    A thin loop over `maskgit_init` / `maskgit_step` for a batch that shares one config.
    logits_fn: one for every step, or a sequence with one per step (e.g. a loop schedule).
    generator: one for the batch, or one per row (then each row is what it would be alone).
    init: optional (B, T) starting tokens, mask_id where unknown (see maskgit_init).
    """
    B, K = labels.shape[0], config.steps
    step_fns = list(logits_fn) if isinstance(logits_fn, Sequence) else [logits_fn] * K
    if len(step_fns) != K:
        raise ValueError(f"{len(step_fns)} logits functions for {K} sampling steps")
    rows = maskgit_init(config, batch=B, num_tokens=num_tokens, mask_id=mask_id, init=init, device=labels.device)
    for k in range(K):
        logits = guided(step_fns[k], rows.tokens, labels, null_label, config.cfg_scale).float()
        loop_predictions = logits.argmax(-1) if logits.dim() == 4 else None
        logits = logits[-1] if logits.dim() == 4 else logits  # (B, T, V)
        rows, sampled, n_mask = maskgit_step(rows, logits, draws_for(generator, B, num_tokens, labels.device))
        yield DecodeState(k + 1, K, rows.tokens, sampled, loop_predictions, int(n_mask.max()))


def draws_for(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int, num_tokens: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A MaskGIT step's random draws (2, B, T): per row, T token draws then T choice draws."""
    return uniforms(generator, batch, (2, num_tokens), device).transpose(0, 1)


def decode_all(logits_fn: LogitsFn, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """Run maskgit_decode to the end and return the final tokens (B, T)."""
    state = None
    for state in maskgit_decode(logits_fn, labels, **kwargs):
        pass
    return state.tokens


# -- diffusion ----------------------------------------------------------------------------------------
LOGSNR_LIMIT = 15.0  # t = 0 and t = 1 are clipped to logSNR ±15 (α or σ ≈ 5.5e-4): finite everywhere


def noise_schedule(t: torch.Tensor, shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted cosine schedule (variance preserving): t in [0, 1] -> (α_t, σ_t, logSNR_t).

    logSNR(t) = −2·log tan(πt/2) − 2·log(shift), clipped to ±LOGSNR_LIMIT; α² = sigmoid(logSNR),
    σ² = sigmoid(−logSNR), so x_t = α·x0 + σ·ε has unit variance for unit-variance x0.  shift > 1
    moves every t towards more noise (for larger latents); t = 1 is (nearly) pure noise.
    """
    angle = t.double().clamp(0, 1) * math.pi / 2  # cos and sin, not tan: tan(π/2) rounds to a negative number
    logsnr = 2 * (angle.cos().clamp_min(1e-12).log() - angle.sin().clamp_min(1e-12).log()) - 2 * math.log(shift)
    logsnr = logsnr.float()
    logsnr = logsnr.clamp(-LOGSNR_LIMIT, LOGSNR_LIMIT)
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt(), logsnr


@dataclass
class DiffusionState:
    step: int  # 1-based index of the step just finished
    steps: int
    tokens: torch.Tensor  # (B, T, C) the latent x_s after this step (the clean sample after the last)
    predicted: torch.Tensor  # (B, T, C) this step's x0 prediction (after guidance)
    loop_predictions: torch.Tensor | None  # (L, B, T, C) each loop's x0 when denoise_fn returned all loops
    t: float  # the time reached after this step (0 at the end)


@dataclass
class DiffusionRows(Rows):
    """B independent diffusion samples, each at its own step of its own settings: (B,) tensors."""

    x: torch.Tensor  # (B, T, C) the latent at the row's current time
    step: torch.Tensor  # (B,) long: steps done
    steps: torch.Tensor  # (B,) long
    ddpm: torch.Tensor  # (B,) bool: ancestral (DDPM) instead of DDIM
    cfg_scale: torch.Tensor  # (B,) float
    guide_loop: torch.Tensor  # (B,) long: 0 (classifier-free guidance), or the loop a row's x0 is guided away from

    @property
    def tokens(self) -> torch.Tensor:
        """The latent, under the name MaskGIT rows and DiffusionState use, so a server reads both alike."""
        return self.x

    @property
    def t(self) -> torch.Tensor:
        """(B,) each row's current time: uniform steps of t from 1 to 0."""
        return 1 - self.step.float() / self.steps.float()

    @property
    def needs_noise(self) -> torch.Tensor:
        """(B,) rows whose next step draws noise: DDPM, except on its last step (which returns x̂0)."""
        return self.ddpm & (self.step < self.steps - 1)


def diffusion_init(configs: DiffusionSamplerConfig | Sequence[DiffusionSamplerConfig], *, batch: int,
                   shape: tuple[int, int], generator: torch.Generator | Sequence[torch.Generator] | None = None,
                   device: torch.device | str = "cpu") -> DiffusionRows:
    """Rows of pure noise at t = 1; configs: one for every row, or one per row."""
    configs = configs_per_row(configs, batch)
    x = gaussians(generator, batch, shape, device)
    return DiffusionRows(x, torch.zeros(batch, dtype=torch.long, device=device),
                         torch.tensor([c.steps for c in configs], device=device),
                         torch.tensor([c.method == "ddpm" for c in configs], device=device),
                         torch.tensor([c.cfg_scale for c in configs], dtype=torch.float32, device=device),
                         torch.tensor([c.guide_loop for c in configs], dtype=torch.long, device=device))


def own_loop(out: torch.Tensor, loops: torch.Tensor) -> torch.Tensor:
    """(L, B, …) every loop's output -> (B, …) each row's output at its own loop count (B,)."""
    return out[loops.to(out.device) - 1, torch.arange(out.shape[1], device=out.device)]


def loop_guided(loop_x0: torch.Tensor, guide_loop: int | torch.Tensor, scale: float | torch.Tensor,
                loops: int | torch.Tensor | None = None) -> torch.Tensor:
    """Loop guidance: (L, B, T, C) every loop's x0 from one pass -> (B, T, C) each row's prediction at its loop
    count guided away from its own prediction at loop k:  x̂_k + s·(x̂_loops − x̂_k).

    Autoguidance (Karras et al. 2024) with the model's own earlier loop as the weaker model: one conditional
    pass per step instead of classifier-free guidance's two.  guide_loop (k), scale (s) and loops (default:
    the last, L): one value or one per row (B,); a row with k = 0 or s = 0 takes x̂_loops unguided, as scale 0
    turns classifier-free guidance off.
    """
    L, B = loop_x0.shape[:2]

    def per_row(value, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(value, dtype=dtype, device=loop_x0.device).expand(B)

    loops, k = per_row(L if loops is None else loops, torch.long), per_row(guide_loop, torch.long)
    s = per_row(scale, loop_x0.dtype)[:, None, None]
    on = (k > 0) & (s[:, 0, 0] != 0)
    if bool((on & (k >= loops)).any()):
        raise ValueError("loop guidance needs a guide loop below the loop count of every row it guides")
    strong, weak = own_loop(loop_x0, loops), own_loop(loop_x0, k.clamp_min(1))
    return torch.where(on[:, None, None], weak + s * (strong - weak), strong)


def diffusion_step(rows: DiffusionRows, x0: torch.Tensor, noise: torch.Tensor | None = None, shift: float = 1.0
                   ) -> DiffusionRows:
    """One solver step of every row from its time t to s = t − 1/steps, given the model's x̂0 (B, T, C)
    (guidance applied) and, for DDPM rows, standard normal noise (B, T, C).

    From t to s < t with ε̂ = (x_t − α_t·x̂0)/σ_t:
      DDIM: x_s = α_s·x̂0 + σ_s·ε̂;
      DDPM: x_s ~ q(x_s | x_t, x̂0) = N(α_{t|s}σ_s²/σ_t²·x_t + α_s·σ²_{t|s}/σ_t²·x̂0, σ²_{t|s}σ_s²/σ_t²)
            with α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s}·σ_s².
    A row's last step returns x̂0 itself.
    """
    if bool(rows.done.any()):
        raise ValueError("diffusion_step on a row that has finished all its steps")
    t = rows.t
    s = 1 - (rows.step + 1).float() / rows.steps.float()
    (a_t, s_t, _), (a_s, s_s, _) = noise_schedule(t, shift), noise_schedule(s, shift)
    a_t, s_t, a_s, s_s = (v.to(x0.device)[:, None, None] for v in (a_t, s_t, a_s, s_s))
    x = rows.x
    ddim = a_s * x0 + s_s * (x - a_t * x0) / s_t
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
    ddpm = mean + (var_ts * s_s**2 / s_t**2).sqrt() * (noise if noise is not None else torch.zeros_like(x))
    last = (rows.step == rows.steps - 1)[:, None, None]
    x = torch.where(last, x0, torch.where(rows.ddpm[:, None, None], ddpm, ddim))
    return replace(rows, x=x, step=rows.step + 1)


def diffusion_decode(
    denoise_fn: DenoiseFn,
    labels: torch.Tensor,
    *,
    shape: tuple[int, int],
    null_label: int,
    config: DiffusionSamplerConfig = DiffusionSamplerConfig(),
    shift: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Iterator[DiffusionState]:
    """DDIM (η = 0) or DDPM (ancestral) sampling from t = 1 to 0 in `config.steps` uniform steps of t;
    yields the state after every step.  shape = (T, C) of one latent; the model predicts x0.

    A thin loop over `diffusion_init` / `diffusion_step` (the solver's formulas are there) for a batch
    that shares one config; generator: one for the batch, or one per row.
    """
    B, K = labels.shape[0], config.steps
    device = labels.device
    rows = diffusion_init(config, batch=B, shape=shape, generator=generator, device=device)
    by_loop = config.guide_loop > 0  # loop guidance: the conditional pass only, every loop's x0 from it
    for k in range(K):
        x0 = guided(denoise_fn, rows.x, labels, null_label, 0.0 if by_loop else config.cfg_scale,
                    rows.t.to(device)).float()
        loop_predictions = x0 if x0.dim() == 4 else None
        if by_loop:
            if loop_predictions is None:
                raise ValueError("loop guidance needs a denoise_fn that returns every loop's x0 (all_loops)")
            x0 = loop_guided(x0, config.guide_loop, config.cfg_scale)
        elif loop_predictions is not None:
            x0 = x0[-1]
        noise = gaussians(generator, B, shape, device, rows.needs_noise) if rows.needs_noise.any() else None
        rows = diffusion_step(rows, x0, noise, shift)
        yield DiffusionState(k + 1, K, rows.x, x0, loop_predictions, float(rows.t[0]))
