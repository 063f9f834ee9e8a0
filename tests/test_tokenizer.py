"""The FSQ image / video tokenizer (core.tokenizer)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt
from core.config import TokenizerConfig
from core.tokenizer import FSQ, Tokenizer

from conftest import TINY_TOKENIZER

ROOT = Path(__file__).resolve().parents[1]


def test_fsq_indices_round_trip_exactly():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(500, 4) * 3
    q, idx = fsq(z)
    assert idx.min() >= 0 and idx.max() < 1000
    torch.testing.assert_close(fsq.indices_to_codes(idx), q)
    all_codes = torch.arange(1000)
    codes = fsq.indices_to_codes(all_codes)
    assert len({tuple(c.tolist()) for c in codes}) == 1000  # every index is its own code


def test_tokenizer_encode_decode_shapes_and_round_trip(tiny_checkpoints):
    tok = ckpt.load(tiny_checkpoints["tiny-tokenizer"]).module
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    tokens = tok.encode(pixels)
    assert tokens.shape == (2, 64) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < TINY_TOKENIZER.codebook_size
    recon = tok.decode(tokens)
    assert recon.shape == pixels.shape and recon.dtype == torch.uint8
    assert torch.equal(tok.decode(tokens), recon)  # decoding is deterministic
    assert tok.encode(recon).shape == tokens.shape


def test_shipped_tokenizer_reconstructs_well():
    folder = ROOT / "checkpoints" / "shapes-tokenizer"
    if not (folder / "model.safetensors").exists():
        pytest.skip("shipped tokenizer not present")
    from core.data import get_dataset
    from core.tokenizer import psnr

    tok = ckpt.load(folder).module
    pixels = torch.from_numpy(get_dataset("shapes", "test").batch(range(64))[0])
    tokens = tok.encode(pixels)
    assert psnr(tok.decode(tokens), pixels) > 22.0
    # re-encoding the reconstruction gives back (almost) the same tokens
    assert (tok.encode(tok.decode(tokens)) == tokens).float().mean() > 0.7


def test_video_tokenizer_compresses_time():
    from core.config import TokenizerConfig

    config = TokenizerConfig(image_size=16, num_frames=8, channels=(8, 16, 16), temporal_downsample=4, levels=(4, 4))
    tok = Tokenizer(config).eval()
    clip = torch.randint(0, 256, (1, 8, 16, 16, 3), dtype=torch.uint8)
    tokens = tok.encode(clip)
    assert config.token_grid == (2, 4, 4) and tokens.shape == (1, 32)
    assert tok.decode(tokens).shape == clip.shape


@pytest.mark.parametrize("frames", [1, 4])
def test_tokenizer_codes_depend_only_on_their_own_patch(frames):
    """A flat patch gets the same code wherever it is, whatever its neighbours (stable codes)."""
    torch.manual_seed(0)
    config = TokenizerConfig(image_size=16, num_frames=frames, channels=(8, 16, 16),
                             temporal_downsample=2 if frames > 1 else 1)
    tok = Tokenizer(config)
    pixels = torch.full((2, frames, 16, 16, 3), 40, dtype=torch.uint8)
    pixels[0, :, :, 8:] = torch.randint(0, 256, (frames, 16, 8, 3), dtype=torch.uint8)  # busy right half
    pixels[1, :, 4:, :] = 200  # a different colour below the first row of patches
    if frames == 1:
        pixels = pixels[:, 0]
    codes = tok.encode(pixels).view(2, -1, 4, 4)  # (B, T', H', W'): 4x4 patches of 4x4 pixels
    flat = torch.cat([codes[0, :, :, :2].flatten(), codes[1, :, 0].flatten()])  # every all-40 patch
    assert (flat == flat[0]).all()


def test_a_per_frame_tokenizer_decodes_each_frame_from_its_own_tokens():
    """temporal_downsample 1 with temporal_kernel 1: one token-frame per frame, decoded from its own tokens alone
    (1x3x3 convs, norms per frame); a 3-frame kernel reaches the neighbouring frames."""
    from core.config import ConfigError

    torch.manual_seed(0)
    config = TokenizerConfig(image_size=16, num_frames=4, channels=(8, 16, 16), temporal_downsample=1,
                             temporal_kernel=1, levels=(4, 4))
    tok = Tokenizer(config).eval()
    assert config.token_grid == (4, 4, 4)
    tokens = tok.encode(torch.randint(0, 256, (1, 4, 16, 16, 3), dtype=torch.uint8)).view(1, 4, 16)
    changed = tokens.clone()
    changed[0, 2] = (changed[0, 2] + 1) % config.codebook_size  # other tokens in frame 2 only
    with torch.no_grad():
        q = [tok.quantizer.indices_to_codes(t.view(1, *config.token_grid)) for t in (tokens, changed)]
        a, b = (tok._decode_codes(codes) for codes in q)  # (1, 3, T, H, W), before rounding
    assert torch.equal(a[:, :, [0, 1, 3]], b[:, :, [0, 1, 3]]) and not torch.equal(a[:, :, 2], b[:, :, 2])
    three = Tokenizer(replace(config, temporal_kernel=3)).eval()
    with torch.no_grad():
        c, d = (three._decode_codes(codes) for codes in q)
    assert not torch.equal(c[:, :, 1], d[:, :, 1]) and not torch.equal(c[:, :, 3], d[:, :, 3])
    with pytest.raises(ConfigError, match="temporal_kernel must be 1 or 3"):
        replace(config, temporal_kernel=2)


def test_a_per_frame_decoder_exports_for_the_page():
    """The page runs a video tokenizer's decoder as ONNX (core.export's exporter): per-frame norms export and give
    torch's pixels for every frame, at any batch."""
    import numpy as np
    import onnxruntime as ort

    from core.export import _Graph, _onnx_bytes

    torch.manual_seed(0)
    config = TokenizerConfig(image_size=16, num_frames=4, channels=(8, 16, 16), temporal_downsample=1,
                             temporal_kernel=1, levels=(4, 4))
    tok = Tokenizer(config).eval()
    spec = {"inputs": {"tokens": {"shape": ["batch", 64]}}, "outputs": {"pixels": {"shape": ["batch", 4, 16, 16, 3]}}}
    graph = _Graph(lambda tokens: tok.decode(tokens.long()), tok)
    tokens = torch.randint(0, config.codebook_size, (3, 64), dtype=torch.int32)
    session = ort.InferenceSession(_onnx_bytes(graph, (tokens[:1],), spec))
    (pixels,) = session.run(None, {"tokens": tokens.numpy()})
    expected = tok.decode(tokens.long()).numpy()
    assert pixels.shape == expected.shape == (3, 4, 16, 16, 3)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # rounding to uint8 may differ by one
