"""core.objectives: the tokenizer's reconstruction loss and its edge weighting (issue 44)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.config import ConfigError, TokenizerConfig, TrainConfig
from core.objectives import edge_strength, tokenizer_loss
from core.tokenizer import Tokenizer


def test_edge_strength_marks_both_sides_of_an_edge_and_nothing_flat():
    x = -torch.ones(2, 3, 4, 8, 8)  # clips: (B, 3, T, H, W)
    x[0, 1, :, 2:5, 2:5] = 1.0  # one channel changes: a colour edge counts
    edge = edge_strength(x)
    assert edge.shape == (2, 1, 4, 8, 8)
    assert edge[1].abs().max() == 0  # a flat clip has no edges
    assert torch.isclose(edge[0].mean(), torch.tensor(1.0))  # mean 1 per sample
    frame = edge[0, 0, 0]
    assert frame[2, 1] > 0 and frame[2, 2] > 0  # outside and inside the square's left side
    assert frame[3, 3] == 0 and frame[0, 0] == 0  # the square's middle, the far background


def test_edge_weighted_loss_counts_errors_at_edges_more():
    torch.manual_seed(0)
    tokenizer = Tokenizer(TokenizerConfig(image_size=8, channels=(8, 8), levels=(3, 3)))
    pixels = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    pixels[:, 2:6, 2:6] = 255
    step = type("Step", (), {"pixels": pixels})()
    plain = tokenizer_loss(tokenizer, step, TrainConfig(task="tokenizer"))
    edged = tokenizer_loss(tokenizer, step, TrainConfig(task="tokenizer", edge_weight=2.0))
    assert torch.equal(plain["mse"], edged["mse"])  # the logged MSE stays the plain one
    assert edged["loss"] > plain["loss"]  # the same error, weighted 1 + 2·edge (mean 3 where edges exist)
    edged["loss"].backward()
    assert all(p.grad is not None for p in tokenizer.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="edge_weight must be >= 0"):
        replace(TrainConfig(task="tokenizer"), edge_weight=-1.0)
