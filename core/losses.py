"""Masked-token losses and the ILSD objective (PAPER.md §3) as plain functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.config import LAMBDA_SCHEDULES
from core.sampling import mask_schedule


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


def cosine_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
