"""ILSD and the masked losses (core.losses)."""

from __future__ import annotations

import numpy as np
import torch

from core.losses import ilsd_lambda, ilsd_loss, masked_ce, random_mask, sample_student_loops
from core.model import LoopedTransformer

from conftest import TINY_GENERATOR, model_inputs


def test_lambda_decays_linearly_from_one_to_zero():
    total = 11
    values = [ilsd_lambda(s, total) for s in range(total)]
    assert values[0] == 1.0 and values[-1] == 0.0
    assert np.allclose(np.diff(values), -0.1)


def test_student_loops_uniform_and_never_max():
    g = torch.Generator().manual_seed(0)
    draws = [sample_student_loops(1, 4, g) for _ in range(600)]
    assert set(draws) == {1, 2, 3}
    counts = np.bincount(draws)[1:]
    assert counts.min() > 150  # roughly uniform


def test_distillation_term_sends_no_gradient_to_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    student = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    mask = torch.rand(2, 5, generator=g) > 0.3
    targets = torch.randint(0, 7, (2, 5), generator=g)
    ilsd_loss(teacher, student, targets, mask, 0.3)["distill"].backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_ilsd_gradients_through_the_model_match_the_formula():
    """With λ = 0.3, model gradients equal those of GT(T) + λ GT(S) + (1-λ) DIST(S, T.detach())."""
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR)
    tokens, labels = model_inputs(TINY_GENERATOR, seed=1)
    targets = tokens.clamp(max=TINY_GENERATOR.vocab_size - 1)
    g = torch.Generator().manual_seed(2)
    masked, mask = random_mask(targets, TINY_GENERATOR.mask_id, torch.rand(3, generator=g),
                               torch.rand(3, TINY_GENERATOR.num_tokens, generator=g))

    def grads(loss_fn):
        model.zero_grad()
        out = model(masked, labels, return_loops=(1, TINY_GENERATOR.max_loops))
        loss_fn(out.loop_logits[1], out.loop_logits[0]).backward()
        return [p.grad.clone() for p in model.parameters()]

    lam = 0.3
    ours = grads(lambda t, s: ilsd_loss(t, s, targets, mask, lam)["loss"])

    def reference(t, s):
        target = torch.softmax(t.detach()[mask], -1)
        dist = -(target * torch.log_softmax(s[mask], -1)).sum(-1).mean()
        return masked_ce(t, targets, mask) + lam * masked_ce(s, targets, mask) + (1 - lam) * dist

    for a, b in zip(ours, grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the teacher-side path matters: a distillation term without stop-gradient differs
    leaky = grads(lambda t, s: masked_ce(t, targets, mask) + (1 - lam) * -(
        torch.softmax(t[mask], -1) * torch.log_softmax(s[mask], -1)).sum(-1).mean() + lam * masked_ce(s, targets, mask))
    assert any(not torch.allclose(a, b) for a, b in zip(ours, leaky))


def test_random_mask_masks_at_least_one_token_by_cosine_schedule():
    tokens = torch.arange(40).view(2, 20)
    masked, mask = random_mask(tokens, 99, torch.tensor([0.0, 1.0]), torch.rand(2, 20))
    assert mask[0].all()  # u = 0 -> everything masked
    assert mask[1].sum() == 1  # u = 1 -> cos(pi/2) = 0, but at least one
    assert torch.equal(masked[mask], torch.full((int(mask.sum()),), 99))
