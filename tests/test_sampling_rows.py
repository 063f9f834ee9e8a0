"""The per-row samplers: a row depends on its own settings and generator only, never on its batch."""

import torch

from core.config import DiffusionSamplerConfig, SamplerConfig
from core.sampling import (MaskGITRows, combine_guidance, diffusion_decode, diffusion_init, diffusion_step, draws_for,
                           gaussians, guided, maskgit_decode, maskgit_init, maskgit_step)

V, T, MASK, NULL = 8, 12, 8, 5


def logits_fn(tokens, labels):
    """Soft logits that depend on each row's own tokens and label only."""
    favourite = (torch.arange(tokens.shape[1])[None] + labels[:, None] + (tokens == MASK).sum(1, keepdim=True)) % V
    return 2 * torch.nn.functional.one_hot(favourite, V).float() + 0.1 * labels[:, None, None]


def alone(label, config, seed):
    states = list(maskgit_decode(logits_fn, torch.tensor([label]), num_tokens=T, mask_id=MASK, null_label=NULL,
                                 config=config, generator=torch.Generator().manual_seed(seed)))
    return states[-1].tokens[0], [s.tokens[0] for s in states]


def test_rows_with_their_own_settings_match_each_row_run_alone():
    configs = [SamplerConfig(steps=4, cfg_scale=0.0), SamplerConfig(steps=6, cfg_scale=2.0, choice_temperature=1.0),
               SamplerConfig(steps=3, cfg_scale=1.5, temperature_base=0.5)]
    labels, seeds = torch.tensor([1, 3, 0]), [7, 8, 9]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    rows = maskgit_init(configs, batch=3, num_tokens=T, mask_id=MASK)
    finals: dict[int, torch.Tensor] = {}
    index = torch.arange(3)  # which original row each batch row is
    while len(index):
        logits = guided(logits_fn, rows.tokens, labels[index], NULL, rows.cfg_scale)
        rows, _, _ = maskgit_step(rows, logits, draws_for([generators[i] for i in index], len(index), T))
        for j in rows.done.nonzero()[:, 0].tolist():  # finished rows leave the batch
            finals[int(index[j])] = rows.tokens[j]
        keep = ~rows.done
        rows, index = rows.select(keep), index[keep]
    for i in range(3):
        assert torch.equal(finals[i], alone(int(labels[i]), configs[i], seeds[i])[0]), f"row {i} changed by its batch"


def test_a_row_joining_a_running_batch_is_what_it_would_be_alone():
    config = SamplerConfig(steps=5, cfg_scale=2.0)
    first = maskgit_init(config, batch=1, num_tokens=T, mask_id=MASK)
    g_first, g_late = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    labels = torch.tensor([2])
    for _ in range(2):  # the first request runs two steps alone
        first, _, _ = maskgit_step(first, guided(logits_fn, first.tokens, labels, NULL, first.cfg_scale),
                                   draws_for(g_first, 1, T))
    rows = MaskGITRows.concat([first, maskgit_init(config, batch=1, num_tokens=T, mask_id=MASK)])
    labels, generators = torch.tensor([2, 4]), [g_first, g_late]
    assert rows.step.tolist() == [2, 0]
    while not rows.done.all():
        active = ~rows.done
        part = rows.select(active)
        part, _, _ = maskgit_step(part, guided(logits_fn, part.tokens, labels[active], NULL, part.cfg_scale),
                                  draws_for([g for g, a in zip(generators, active) if a], int(active.sum()), T))
        rows.tokens[active], rows.step[active] = part.tokens, part.step
    assert torch.equal(rows.tokens[0], alone(2, config, 1)[0])
    assert torch.equal(rows.tokens[1], alone(4, config, 2)[0])


def test_a_shared_generator_draws_row_by_row():
    """One generator for a request's rows = the same generator listed once per row (so a request's rows draw
    the same numbers alone and inside a larger batch)."""
    a = draws_for(torch.Generator().manual_seed(3), 2, T)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a, draws_for([g, g], 2, T))
    assert a.shape == (2, 2, T) and not torch.equal(a[:, 0], a[:, 1])


def test_maskgit_step_refuses_a_finished_row():
    rows = maskgit_init(SamplerConfig(steps=1, cfg_scale=0.0), batch=1, num_tokens=T, mask_id=MASK)
    rows, _, left = maskgit_step(rows, logits_fn(rows.tokens, torch.tensor([0])), draws_for(None, 1, T))
    assert left.tolist() == [0] and bool(rows.done.all()) and not (rows.tokens == MASK).any()
    try:
        maskgit_step(rows, logits_fn(rows.tokens, torch.tensor([0])), draws_for(None, 1, T))
    except ValueError as e:
        assert "finished" in str(e)
    else:
        raise AssertionError("a finished row was stepped again")


def denoise_fn(x, labels, t):
    return 0.5 * x + labels[:, None, None].float() * 0.1 + t[:, None, None]


def test_diffusion_rows_match_each_row_run_alone():
    configs = [DiffusionSamplerConfig(steps=4, cfg_scale=0.0), DiffusionSamplerConfig(steps=6, cfg_scale=2.0,
                                                                                      method="ddpm")]
    labels, seeds, shape = torch.tensor([1, 3]), [4, 5], (6, 2)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    rows = diffusion_init(configs, batch=2, shape=shape, generator=generators)
    while not rows.done.all():
        active = ~rows.done
        part = rows.select(active)
        gens = [g for g, a in zip(generators, active) if a]
        x0 = guided(denoise_fn, part.x, labels[active], 10, part.cfg_scale, part.t)
        noise = gaussians(gens, len(gens), shape, rows=part.needs_noise)
        part = diffusion_step(part, x0, noise)
        rows.x[active], rows.step[active] = part.x, part.step
    for i in range(2):
        single = list(diffusion_decode(denoise_fn, labels[i:i + 1], shape=shape, null_label=10, config=configs[i],
                                       generator=torch.Generator().manual_seed(seeds[i])))[-1].tokens[0]
        assert torch.allclose(rows.x[i], single, atol=1e-6), f"row {i} changed by its batch"


def test_per_row_guidance_is_the_textbook_formula_bit_for_bit():
    """combine_guidance works in place for speed; a row's guided logits are still uncond + s·(cond − uncond) to the
    last bit (what the browser's sampler and a row alone compute), and a row with scale 0 takes cond."""
    both = torch.randn(3, 2 * 4, T, V, generator=torch.Generator().manual_seed(0))  # (L, [cond; uncond], T, V)
    scale, given = torch.tensor([2.0, 0.0, 1.3, 7.5]), both.clone()
    cond, uncond = both.chunk(2, dim=-3)
    s = scale.view(-1, 1, 1)
    assert torch.equal(combine_guidance(both, scale), torch.where(s == 0, cond, uncond + s * (cond - uncond)))
    for i in range(4):  # a row alone, with its scale as a number
        alone = combine_guidance(torch.cat([cond[:, i:i + 1], uncond[:, i:i + 1]], 1), float(scale[i]))
        assert torch.equal(combine_guidance(both, scale)[:, i], alone[:, 0] if scale[i] else cond[:, i])
    assert torch.equal(both, given)  # the model's logits are left as they were
