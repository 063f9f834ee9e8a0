"""LoopedTransformer (core.model): loop semantics, every loop from one pass, FLOPs, position codes, compiled
layers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import dense_twin
from core.model import LoopedTransformer, sincos_grid

from conftest import TINY_GENERATOR, model_inputs


def test_parameter_count_is_independent_of_loops():
    base = LoopedTransformer(TINY_GENERATOR).num_params()
    for loops in (1, 5, 12):
        assert LoopedTransformer(replace(TINY_GENERATOR, max_loops=loops)).num_params() == base
    # the dense twin has N·L unique layers: more parameters, same FLOPs at its single loop
    dense = LoopedTransformer(dense_twin(TINY_GENERATOR))
    assert dense.num_params() > base
    assert dense.flops(1) == pytest.approx(LoopedTransformer(TINY_GENERATOR).flops(TINY_GENERATOR.max_loops))


def test_every_loop_from_one_pass_equals_separate_runs():
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR).eval()
    tokens, labels = model_inputs(TINY_GENERATOR)
    loops = TINY_GENERATOR.max_loops + 2  # extrapolation beyond max_loops is allowed
    with torch.no_grad():
        out = model(tokens, labels, loops=loops, return_loops="all")
        assert out.loop_logits.shape == (loops, 3, TINY_GENERATOR.num_tokens, TINY_GENERATOR.vocab_size)
        assert torch.equal(out.loop_logits[-1], out.logits)
        for L in range(1, loops + 1):
            alone = model(tokens, labels, loops=L).logits
            torch.testing.assert_close(out.loop_logits[L - 1], alone, rtol=1e-5, atol=1e-5)
        subset = model(tokens, labels, loops=4, return_loops=(2, 4))
        torch.testing.assert_close(subset.loop_logits[0], out.loop_logits[1], rtol=1e-5, atol=1e-5)
    assert model(tokens, labels).loop_logits is None
    # training decodes only the masked positions: the same numbers, fewer of them
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.no_grad():
        picked = model(tokens, labels, loops=4, return_loops=(2, 4), positions=mask)
    assert picked.loop_logits.shape == (2, int(mask.sum()), TINY_GENERATOR.vocab_size)
    torch.testing.assert_close(picked.loop_logits[0], out.loop_logits[1][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked.logits, out.loop_logits[3][mask], rtol=1e-5, atol=1e-5)


def test_loops_differ_and_flops_are_linear_in_loops():
    torch.manual_seed(0)
    model = LoopedTransformer(TINY_GENERATOR).eval()
    tokens, labels = model_inputs(TINY_GENERATOR)
    with torch.no_grad():
        assert not torch.allclose(model(tokens, labels, loops=1).logits, model(tokens, labels, loops=2).logits)
    f = [model.flops(L) for L in range(1, 6)]
    steps = np.diff(f)
    assert np.allclose(steps, steps[0]) and steps[0] > 0


@pytest.mark.parametrize("grid", [(4, 8, 8), (1, 8, 8), (3, 2, 5)])
def test_position_codes_depend_only_on_offsets(grid):
    """The starting position embedding: a code's dot product with another depends only on their
    (frame, row, column) offset, so "one frame earlier, same place" looks the same everywhere."""
    width = 48
    codes = sincos_grid(grid, width).double()
    assert codes.shape == (math.prod(grid), width)
    assert codes.std().item() == pytest.approx(0.02, rel=1e-3)
    coords = torch.tensor(np.indices(grid).reshape(len(grid), -1).T)
    gram = codes @ codes.T
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    for offset in ([0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]):
        shifted = coords + torch.tensor(offset)
        inside = (shifted < torch.tensor(grid)).all(1)
        if not inside.any():
            continue
        values = torch.stack([gram[i, index[tuple(shifted[i].tolist())]] for i in torch.nonzero(inside)[:, 0]])
        assert torch.allclose(values, values[0], rtol=1e-6, atol=1e-12), offset
        assert values[0] < gram[0, 0]  # a neighbour is less alike than the position itself
    model = LoopedTransformer(replace(TINY_GENERATOR, token_grid=(1, 4, 4), position_init="sincos"))
    assert torch.equal(model.pos_embed.data[0, 1:], sincos_grid((1, 4, 4), model.config.width))


def test_bad_loop_arguments_raise():
    model = LoopedTransformer(TINY_GENERATOR)
    tokens, labels = model_inputs(TINY_GENERATOR)
    with pytest.raises(ValueError, match="loops must be >= 1"):
        model(tokens, labels, loops=0)
    with pytest.raises(ValueError, match="return_loops"):
        model(tokens, labels, loops=2, return_loops=(3,))


def test_compiled_layers_keep_the_checkpoint_format():
    model = LoopedTransformer(TINY_GENERATOR)
    keys = list(model.state_dict())
    assert model.compile_layers() is model and list(model.state_dict()) == keys  # saved and resumed as before


@pytest.mark.slow
def test_compiled_layers_compute_the_same_step():
    torch.manual_seed(0)
    eager = LoopedTransformer(TINY_GENERATOR)
    compiled = LoopedTransformer(TINY_GENERATOR)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    tokens = torch.randint(0, TINY_GENERATOR.vocab_size, (2, TINY_GENERATOR.num_tokens))
    labels = torch.tensor([0, 1])
    out = [m(tokens, labels, return_loops="all").loop_logits for m in (eager, compiled)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)
