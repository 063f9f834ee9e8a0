"""The MaskGIT sampler (core.sampling) on a fake logits function."""

from __future__ import annotations

import pytest
import torch

from core.sampling import SamplerConfig, decode_all, maskgit_decode, num_masked_after


def _fake_logits_fn(vocab: int, calls: list | None = None):
    """Deterministic logits: favours token (position + label) % vocab."""

    def fn(tokens, labels):
        if calls is not None:
            calls.append((tokens.clone(), labels.clone()))
        B, T = tokens.shape
        favourite = (torch.arange(T)[None] + labels[:, None]) % vocab
        return torch.nn.functional.one_hot(favourite, vocab).float()  # soft: sampling still varies

    return fn


def test_sampler_is_deterministic_and_fully_decodes():
    labels = torch.tensor([0, 1, 2])
    kwargs = dict(num_tokens=16, mask_id=8, null_label=5, config=SamplerConfig(steps=6, cfg_scale=0.0))
    a = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(3), **kwargs)
    b = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(3), **kwargs)
    c = decode_all(_fake_logits_fn(8), labels, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a < 8).all()


def test_sampler_follows_schedule_and_keeps_decided_tokens():
    states = list(maskgit_decode(_fake_logits_fn(8), torch.tensor([1]), num_tokens=32, mask_id=8, null_label=5,
                                 config=SamplerConfig(steps=5, cfg_scale=0.0),
                                 generator=torch.Generator().manual_seed(0)))
    assert [s.step for s in states] == [1, 2, 3, 4, 5]
    masked = [int((s.tokens == 8).sum()) for s in states]
    assert masked == [num_masked_after(k, 5, 32) for k in range(4)] + [0]
    assert all(a >= b for a, b in zip(masked, masked[1:]))
    for before, after in zip(states, states[1:]):
        decided = before.tokens != 8
        assert torch.equal(after.tokens[decided], before.tokens[decided])


def test_sampler_continues_from_given_tokens():
    """init keeps the known tokens (e.g. a clip's first frames) and schedules only the rest."""
    kwargs = dict(num_tokens=32, mask_id=8, null_label=5, config=SamplerConfig(steps=4, cfg_scale=0.0))
    init = torch.full((2, 32), 8)
    init[:, :12] = 3  # 12 known tokens the fake model would never choose at every position
    states = list(maskgit_decode(_fake_logits_fn(8), torch.tensor([0, 1]), init=init,
                                 generator=torch.Generator().manual_seed(0), **kwargs))
    assert all(torch.equal(s.tokens[:, :12], init[:, :12]) for s in states)
    assert [int((s.tokens == 8).sum(1).max()) for s in states] == [num_masked_after(k, 4, 20) for k in range(3)] + [0]
    everything_masked = decode_all(_fake_logits_fn(8), torch.tensor([0, 1]), init=torch.full((2, 32), 8),
                                   generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(everything_masked, decode_all(_fake_logits_fn(8), torch.tensor([0, 1]),
                                                     generator=torch.Generator().manual_seed(0), **kwargs))
    with pytest.raises(ValueError, match="init must have shape"):
        decode_all(_fake_logits_fn(8), torch.tensor([0]), init=init, **kwargs)


def test_confident_logits_decode_to_the_argmax():
    # Logits of 50 nats make sampling effectively greedy: the output is the favourite everywhere.
    def sharp(tokens, labels):
        return _fake_logits_fn(8)(tokens, labels) * 50

    out = decode_all(sharp, torch.tensor([3]), num_tokens=10, mask_id=8, null_label=5,
                     config=SamplerConfig(steps=4, cfg_scale=0.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0], (torch.arange(10) + 3) % 8)


def test_guidance_doubles_the_batch_with_null_labels_and_accepts_per_loop_logits():
    calls = []
    fn = _fake_logits_fn(8, calls)

    def all_loops(tokens, labels):
        one = fn(tokens, labels)
        return torch.stack([one * 0.5, one])  # (L=2, B, T, V)

    states = list(maskgit_decode(all_loops, torch.tensor([1, 2]), num_tokens=8, mask_id=8, null_label=5,
                                 config=SamplerConfig(steps=3, cfg_scale=2.0),
                                 generator=torch.Generator().manual_seed(0)))
    tokens, labels = calls[0]
    assert tokens.shape == (4, 8) and labels.tolist() == [1, 2, 5, 5]
    assert states[-1].loop_predictions.shape == (2, 2, 8)


def test_sampler_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplerConfig(cfg_scale=-1)
