"""Image / video tokenizer: conv encoder -> FSQ quantizer -> conv decoder.

Quantizer choice: FSQ (finite scalar quantization, Mentzer et al. 2023) rather than VQ.  FSQ rounds
each of a few bounded latent channels to a fixed grid, so it has no codebook to collapse, no
commitment/codebook losses and no EMA or dead-code restarts — on a 2-core CPU budget it trains
stably in minutes and uses the whole codebook, which a small VQ codebook often does not.

The same module is 2-D for images (B, H, W, 3) and 3-D for clips (B, T, H, W, 3), compressing time
as well as space (MAGVIT-style); which one follows from `TokenizerConfig.num_frames`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TokenizerConfig


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """Finite scalar quantization: channel c is bounded and rounded to `levels[c]` values."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1,) + levels[:-1]), 0)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z (..., C) so that rounding yields exactly `levels` integer values per channel."""
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., C) -> (quantized values in [-1, 1] (..., C), code indices (...,))."""
        q = round_ste(self.bound(z))
        half_width = self.levels // 2
        indices = ((q.detach() + half_width) * self.basis).sum(-1).long()
        return q / half_width, indices

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...,) -> quantized values in [-1, 1] (..., C)."""
        half_width = self.levels // 2
        digits = (indices[..., None] // self.basis) % self.levels
        return (digits - half_width) / half_width


class FrameNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame of a clip (B, C, T, H, W): a per-frame decoder mixes no frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, conv: Callable[[int, int], nn.Module], norm: type[nn.GroupNorm] = nn.GroupNorm):
        super().__init__()
        self.body = nn.Sequential(
            norm(8, channels), nn.SiLU(), conv(channels, channels),
            norm(8, channels), nn.SiLU(), conv(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Tokenizer(nn.Module):
    """pixels uint8 <-> token ids on the grid `config.token_grid` (flattened T'·H'·W', row-major)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = c = config
        video = c.is_video
        conv = nn.Conv3d if video else nn.Conv2d
        ch = c.channels
        # stride of each downsampling stage: time is halved in the first log2(td) stages
        t_stages = c.temporal_downsample.bit_length() - 1
        self.strides = [((2 if i < t_stages else 1, 2, 2) if video else 2) for i in range(len(ch) - 1)]

        # The encoder is strictly patch-local: one non-overlapping conv whose kernel is the token's
        # patch (its stride = the downsampling factor), then a per-patch MLP (1x1 convs).  A token's
        # code is then a function of its own pixels only, so a flat patch of one colour gets the same
        # code everywhere.  An encoder with overlapping 3x3 convs gave a flat patch of one colour 15-61
        # different codes (measured), depending on edges nearby; the generator then has to model that
        # noise and never learned the shapes.  The decoder keeps full context and does the heavy lifting.
        patch = (c.temporal_downsample, c.spatial_downsample, c.spatial_downsample) if video else c.spatial_downsample
        self.encoder = nn.Sequential(
            conv(3, ch[-1], patch, stride=patch), nn.SiLU(),
            conv(ch[-1], ch[-1], 1), nn.SiLU(), conv(ch[-1], ch[-1], 1), nn.SiLU(),
            conv(ch[-1], len(c.levels), 1),
        )
        self.quantizer = FSQ(c.levels)

        # the decoder's 3x3 convs, 3x3x3 for clips; temporal_kernel = 1: 1x3x3 convs and per-frame norms, so
        # every token-frame is decoded on its own
        kernel = (c.temporal_kernel, 3, 3) if video else 3
        padding = (c.temporal_kernel // 2, 1, 1) if video else 1
        norm = FrameNorm if video and c.temporal_kernel == 1 else nn.GroupNorm

        def conv3(cin: int, cout: int) -> nn.Module:
            return conv(cin, cout, kernel, padding=padding)

        self.dec_in = nn.Sequential(conv3(len(c.levels), ch[-1]), ResBlock(ch[-1], conv3, norm))
        self.dec_up = nn.ModuleList(
            nn.Sequential(conv3(ch[i + 1], ch[i]), ResBlock(ch[i], conv3, norm))
            for i in reversed(range(len(ch) - 1))
        )
        self.dec_out = nn.Sequential(norm(8, ch[0]), nn.SiLU(), conv3(ch[0], 3))

    # -- layout helpers: (B, [T,] H, W, 3) uint8 <-> (B, 3, [T,] H, W) float in [-1, 1] --------------
    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 127.5 - 1.0
        return x.movedim(-1, 1).contiguous()

    @staticmethod
    def to_pixels(x: torch.Tensor) -> torch.Tensor:
        # positive dims throughout: the ONNX exporter (core.export) mistranslates movedim with a negative one
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(1, x.dim() - 1)

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, [T,] H, W) -> latent (B, T', H', W', C) before quantization."""
        z = self.encoder(x)
        if not self.config.is_video:
            z = z[:, :, None]
        return z.movedim(1, -1)

    def _decode_codes(self, q: torch.Tensor) -> torch.Tensor:
        """q (B, T', H', W', C) in [-1, 1] -> reconstruction (B, 3, [T,] H, W)."""
        q = q.movedim(q.dim() - 1, 1)
        x = self.dec_in(q if self.config.is_video else q[:, :, 0])
        for up, stride in zip(self.dec_up, reversed(self.strides)):
            scale = stride if isinstance(stride, int) else tuple(float(s) for s in stride)
            x = up(F.interpolate(x, scale_factor=scale, mode="nearest"))
        return self.dec_out(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: x (B, 3, [T,] H, W) in [-1, 1] -> (reconstruction, indices (B, T'·H'·W'))."""
        q, indices = self.quantizer(self._latents(x).float())
        return self._decode_codes(q), indices.flatten(1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels uint8 (B, [T,] H, W, 3) -> token ids (B, T'·H'·W') int64."""
        _, indices = self.quantizer(self._latents(self.to_input(pixels)).float())
        return indices.flatten(1)

    @torch.no_grad()
    def encode_latent(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels uint8 (B, [T,] H, W, 3) -> continuous pre-quantization latent (B, T'·H'·W', C) in [-1, 1]:
        the bounded encoder output on the codes' scale, before rounding (what a diffusion model learns)."""
        z = self.quantizer.bound(self._latents(self.to_input(pixels)).float())
        return (z / (self.quantizer.levels // 2)).flatten(1, 3)

    @torch.no_grad()
    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Continuous latent (B, T'·H'·W', C) -> pixels uint8 (B, [T,] H, W, 3) (no rounding to the codes)."""
        q = latents.float().reshape(latents.shape[0], *self.config.token_grid, latents.shape[-1])
        return self.to_pixels(self._decode_codes(q))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """token ids (B, T'·H'·W') -> pixels uint8 (B, [T,] H, W, 3)."""
        grid = self.config.token_grid
        q = self.quantizer.indices_to_codes(tokens.reshape(tokens.shape[0], *grid))
        return self.to_pixels(self._decode_codes(q))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two uint8 tensors of equal shape (averaged over samples/frames)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())
