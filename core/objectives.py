"""Training objectives: one loss function per task and, for a generator, per family and mode.

Each is `loss(model, step, cfg) -> {"loss": ..., logged terms}`; core.family says which one a
generator experiment trains with.  All randomness comes from the step's generator, drawn for the
global batch and sliced to this rank's rows, so data-parallel ranks see one global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TrainConfig
from core.losses import (diffusion_ilsd_loss, diffusion_inputs, ilsd_lambda, ilsd_loss, masked_ce, random_mask,
                         sample_student_loops, weighted_mse)


@dataclass
class Step:
    """Everything a loss function may need for one step on this rank."""

    index: int
    total: int
    generator: torch.Generator  # seeded by (seed, step); identical on every rank
    global_batch: int
    shard: slice  # this rank's rows of the global batch
    pixels: torch.Tensor  # uint8 (b, [T,] H, W, 3) — this rank's rows
    labels: torch.Tensor  # (b,)
    tokens: torch.Tensor | None  # generator only: token ids (b, T) (MaskGIT) or latents (b, T, C) (diffusion)


def _global_rand(step: Step, *shape: int) -> torch.Tensor:
    """Uniform noise drawn for the global batch, sliced to this rank's rows."""
    return torch.rand(step.global_batch, *shape, generator=step.generator)[step.shard]


# -- losses ----------------------------------------------------------------------------------------
def tokenizer_loss(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    x = model.module.to_input(step.pixels) if hasattr(model, "module") else model.to_input(step.pixels)
    recon, _ = model(x)
    recon = recon.float()
    mse = F.mse_loss(recon, x)
    if not cfg.edge_weight:
        return {"loss": mse + 0.1 * F.l1_loss(recon, x), "mse": mse}
    weight = 1 + cfg.edge_weight * edge_strength(x)
    error = recon - x
    return {"loss": (weight * (error.square() + 0.1 * error.abs())).mean(), "mse": mse}


def edge_strength(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel edge strength of images or clips x (B, 3, [T,] H, W), scaled to mean 1 per sample: the largest
    absolute difference to a horizontal or vertical neighbour, over the colour channels (0 inside flat areas)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    edge = torch.maximum(F.pad(dx, (0, 1)).maximum(F.pad(dx, (1, 0))), F.pad(dy, (0, 0, 0, 1)).maximum(F.pad(dy, (0, 0, 1, 0))))
    return edge / edge.flatten(1).mean(1).clamp_min(1e-6).view(-1, *[1] * (edge.dim() - 1))


def classifier_loss(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    logits = model(step.pixels).float()
    return {"loss": F.cross_entropy(logits, step.labels),
            "accuracy": (logits.argmax(-1) == step.labels).float().mean()}


def _masked_inputs(step: Step, cfg: TrainConfig, mask_id: int, null_class: int):
    tokens = step.tokens
    masked, mask = random_mask(tokens, mask_id, _global_rand(step), _global_rand(step, tokens.shape[1]))
    drop = _global_rand(step) < cfg.label_dropout  # classifier-free guidance training
    labels = torch.where(drop, null_class, step.labels)
    return masked, labels, mask


def ilsd_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """PAPER.md §3: one pass to L_max, student = the prefix at L_int, distilled to sg[teacher]."""
    mc = _config(model)
    masked, labels, mask = _masked_inputs(step, cfg, mc.mask_id, mc.null_class)
    student_loops = sample_student_loops(cfg.min_loops, mc.max_loops, step.generator)
    out = model(masked, labels, loops=mc.max_loops, return_loops=(student_loops, mc.max_loops), positions=mask)
    student, teacher = out.loop_logits
    lam = ilsd_lambda(step.index, step.total, cfg.lambda_schedule)
    terms = ilsd_loss(teacher, student, step.tokens, mask, lam)
    return {**terms, "lambda": torch.tensor(lam), "student_loops": torch.tensor(float(student_loops)),
            "masked_tokens": mask.sum()}


def vanilla_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Ground truth at L_max only (for `dense`, L_max = 1 over N·L unique layers)."""
    mc = _config(model)
    masked, labels, mask = _masked_inputs(step, cfg, mc.mask_id, mc.null_class)
    logits = model(masked, labels, positions=mask).logits  # the head runs on masked tokens only
    return {"loss": masked_ce(logits, step.tokens, mask), "masked_tokens": mask.sum()}


# -- diffusion ---------------------------------------------------------------------------------------
def _noised_inputs(step: Step, cfg: TrainConfig, mc):
    """(x_t, t, w(t), labels with dropout) for the step's clean latents (b, T, C)."""
    x0 = step.tokens
    noise = torch.randn(step.global_batch, *x0.shape[1:], generator=step.generator)[step.shard].to(x0.device)
    x_t, t, weight = diffusion_inputs(x0, _global_rand(step).to(x0.device), noise, mc.schedule_shift,
                                      mc.weight_bias)
    drop = _global_rand(step).to(x0.device) < cfg.label_dropout  # classifier-free guidance training
    return x_t, t, weight, torch.where(drop, mc.null_class, step.labels)


def diffusion_ilsd_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """PAPER.md §3 for a DiT: one pass to L_max; the student is the x0 prediction after L_int loops."""
    mc = _config(model)
    x_t, t, weight, labels = _noised_inputs(step, cfg, mc)
    student_loops = sample_student_loops(cfg.min_loops, mc.max_loops, step.generator)
    student, teacher = model(x_t, t, labels, loops=mc.max_loops, return_loops=(student_loops, mc.max_loops)).loop_x0
    lam = ilsd_lambda(step.index, step.total, cfg.lambda_schedule)
    terms = diffusion_ilsd_loss(teacher, student, step.tokens, weight, lam)
    return {**terms, "lambda": torch.tensor(lam), "student_loops": torch.tensor(float(student_loops))}


def diffusion_vanilla_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """w(t)·‖F_Lmax(x_t) − x0‖² only (for `dense`, L_max = 1 over N·L unique layers)."""
    mc = _config(model)
    x_t, t, weight, labels = _noised_inputs(step, cfg, mc)
    return {"loss": weighted_mse(model(x_t, t, labels).x0, step.tokens, weight)}


COMPONENT_LOSSES = {"tokenizer": tokenizer_loss, "classifier": classifier_loss}


def _config(model: nn.Module):
    return (model.module if hasattr(model, "module") else model).config


