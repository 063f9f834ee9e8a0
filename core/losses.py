"""Masked-token and diffusion losses and the ILSD objective of both (PAPER.md §3) as plain functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.config import LAMBDA_SCHEDULES
from core.sampling import mask_schedule, noise_schedule


def random_mask(tokens: torch.Tensor, mask_id: int, u: torch.Tensor, scores: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT training mask from explicit uniform noise (so data-parallel shards can share draws).

    A cosine-scheduled fraction cos(π/2·u) of each sample's tokens (at least one) is masked, at the
    positions with the lowest `scores`.  tokens, scores (B, T); u (B,) -> (masked tokens, mask (B, T)).
    """
    T = tokens.shape[1]
    n_mask = (mask_schedule(u) * T).ceil().clamp(1, T)  # (B,)
    ranks = scores.argsort(1).argsort(1)  # rank of each position within its sample
    mask = ranks < n_mask[:, None]
    return torch.where(mask, mask_id, tokens), mask


def at_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the masked positions: (B, T, V) -> (N, V); (N, V) (already taken there) as is."""
    return logits if logits.dim() == 2 else logits[mask]


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions. logits (B, T, V) or (N, V) at the mask; targets/mask (B, T)."""
    return F.cross_entropy(at_mask(logits, mask).float(), targets[mask])


def ilsd_lambda(step: int, total_steps: int, schedule: str = "linear") -> float:
    """The weight of the student's ground-truth term; 1 − λ weighs its distillation term.

    linear: 1 (first step) → 0 (last step), the paper's; cosine: the same ends along a half cosine;
    ground-truth: always 1 (students learn from the data only); distill: always 0 (from the teacher only).
    """
    progress = step / max(total_steps - 1, 1)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "ground-truth":
        return 1.0
    if schedule == "distill":
        return 0.0
    raise ValueError(f"unknown λ schedule {schedule!r}; accepted: {', '.join(LAMBDA_SCHEDULES)}")


def sample_student_loops(min_loops: int, max_loops: int, generator: torch.Generator | None = None) -> int:
    """L_int ~ U{min_loops, …, max_loops − 1} (never L_max)."""
    return int(torch.randint(min_loops, max_loops, (1,), generator=generator))


def ilsd_loss(teacher: torch.Tensor, student: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              lam: float) -> dict[str, torch.Tensor]:
    """GT(teacher) + λ·GT(student) + (1 − λ)·DIST(student, sg[teacher]); returns all terms.

    teacher, student: logits (B, T, V), or (N, V) already taken at the mask.  DIST is the soft-label
    CE of the student against the teacher's full softmax, which is detached: no gradient flows into
    the model through the teacher side.  Each side's log-softmax is computed once and shared.
    """
    y = targets[mask]
    log_teacher = F.log_softmax(at_mask(teacher, mask).float(), dim=-1)
    log_student = F.log_softmax(at_mask(student, mask).float(), dim=-1)
    teacher_ce = F.nll_loss(log_teacher, y)
    student_ce = F.nll_loss(log_student, y)
    distill = -(log_teacher.detach().exp() * log_student).sum(-1).mean()
    loss = teacher_ce + lam * student_ce + (1 - lam) * distill
    return {"loss": loss, "teacher_ce": teacher_ce, "student_ce": student_ce, "distill": distill}


def diffusion_inputs(x0: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, shift: float, weight_bias: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noised training input from explicit draws: t = u (B,) uniform on [0, 1], noise ε like x0 (B, T, C).

    Returns (x_t = α_t·x0 + σ_t·ε, t, w(t)) on the shifted cosine schedule (core.sampling.noise_schedule)
    with the sigmoid weight w(t) = sigmoid(logSNR(t) − weight_bias).  For an x0-prediction loss this is
    Kingma & Gao's sigmoid weighting of the ε-loss (w_ε = sigmoid(b − logSNR), and
    ‖ε̂ − ε‖² = e^logSNR·‖x̂0 − x0‖²) up to the constant e^b: about 1 where the sample is
    mostly signal, falling to 0 at pure noise, where x0 cannot be known and its loss would dominate.
    """
    alpha, sigma, logsnr = noise_schedule(u, shift)
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * noise
    return x_t, u, torch.sigmoid(logsnr - weight_bias)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mean over the batch of w(t)·‖pred − target‖² (mean over the latent's values). pred, target (B, T, C)."""
    return (weight * (pred.float() - target.float()).square().flatten(1).mean(1)).mean()


def diffusion_ilsd_loss(teacher: torch.Tensor, student: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor,
                        lam: float) -> dict[str, torch.Tensor]:
    """ILSD for diffusion (PAPER.md §3): GT(teacher) + λ·GT(student) + (1 − λ)·DIST(student, sg[teacher]).

    Target: x0 (the clean latent), the paper's GT = w(t)·‖F_L(x_t) − x0‖²; DIST = w(t)·‖F_Lint(x_t) −
    sg[F_Lmax(x_t)]‖² with the same weight.  teacher/student: x0 predictions (B, T, C) after L_max and
    L_int loops of ONE forward pass; the teacher is detached inside DIST only (it keeps its own GT).
    """
    teacher_mse = weighted_mse(teacher, x0, weight)
    student_mse = weighted_mse(student, x0, weight)
    distill = weighted_mse(student, teacher.detach(), weight)
    loss = teacher_mse + lam * student_mse + (1 - lam) * distill
    return {"loss": loss, "teacher_mse": teacher_mse, "student_mse": student_mse, "distill": distill}


def cosine_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
