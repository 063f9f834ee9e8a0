"""MaskGIT decoding as pure functions of a `logits_fn` (no model, no globals).

`logits_fn(tokens (B, T), labels (B,)) -> logits` returns either (B, T, V) or (L, B, T, V): every
loop's prediction from one pass, the last one used for decoding.  Randomness enters only through an
explicit `torch.Generator`, so a fake logits_fn gives an exactly reproducible result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from core.config import SamplerConfig  # noqa: F401  (re-exported: the sampler settings live with the experiment)

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def guided(logits_fn: LogitsFn, tokens: torch.Tensor, labels: torch.Tensor, null_label: int,
           cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond) in one batched call."""
    if cfg_scale == 0:
        return logits_fn(tokens, labels)
    both = logits_fn(torch.cat([tokens, tokens]), torch.cat([labels, torch.full_like(labels, null_label)]))
    cond, uncond = both.chunk(2, dim=-3)  # split the batch axis of (..., 2B, T, V)
    return uncond + cfg_scale * (cond - uncond)


def maskgit_decode(
    logits_fn: LogitsFn,
    labels: torch.Tensor,
    *,
    num_tokens: int,
    mask_id: int,
    null_label: int,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
) -> Iterator[DecodeState]:
    """Yield the decoding state after every step; the last state's tokens are fully decoded.

    init: optional (B, T) starting tokens, mask_id where unknown (e.g. a clip's first frames to
    continue); known tokens are kept and the schedule runs over the unknown ones.
    """
    B, K = labels.shape[0], config.steps
    device = labels.device
    if init is None:
        tokens = torch.full((B, num_tokens), mask_id, dtype=torch.long, device=device)
    else:
        tokens = init.to(device=device, dtype=torch.long)
        if tokens.shape != (B, num_tokens):
            raise ValueError(f"init must have shape {(B, num_tokens)}, got {tuple(tokens.shape)}")
    to_decode = int((tokens == mask_id).sum(1).max())
    for k in range(K):
        logits = guided(logits_fn, tokens, labels, null_label, config.cfg_scale).float()
        loop_predictions = logits.argmax(-1) if logits.dim() == 4 else None
        logits = logits[-1] if logits.dim() == 4 else logits  # (B, T, V)

        temperature = config.temperature_base + config.temperature_bias * (1 - (k + 1) / K)
        probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
        sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(B, -1)
        unknown = tokens == mask_id
        sampled = torch.where(unknown, sampled, tokens)

        # confidence of each sampled token; known tokens are never re-masked
        confidence = torch.gather(probs, -1, sampled[..., None])[..., 0]
        confidence = torch.where(unknown, confidence, torch.inf)
        n_mask = min(num_masked_after(k, K, to_decode), int(unknown.sum(1).min()) - 1)
        n_mask = max(n_mask, 0) if k < K - 1 else 0
        if n_mask > 0:
            choice_t = config.choice_temperature * (1 - (k + 1) / K)
            gumbel = -torch.log(-torch.log(
                torch.rand(confidence.shape, generator=generator, device=device).clamp(1e-20, 1.0)))
            scores = torch.log(confidence.clamp_min(1e-20)) + choice_t * gumbel
            remask = torch.zeros_like(unknown)
            remask.scatter_(1, scores.topk(n_mask, dim=1, largest=False).indices, True)
            tokens = torch.where(remask, mask_id, sampled)
        else:
            tokens = sampled
        yield DecodeState(k + 1, K, tokens, sampled, loop_predictions, n_mask)


def decode_all(logits_fn: LogitsFn, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """Run maskgit_decode to the end and return the final tokens (B, T)."""
    state = None
    for state in maskgit_decode(logits_fn, labels, **kwargs):
        pass
    return state.tokens
