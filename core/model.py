"""The looped transformers of the project (PAPER.md §2): one per generator family.

Embedding runs once; a block of `num_layers` unique layers is applied `loops` times with shared
weights; one shared head decodes the hidden state after any loop (`run_loops`, common to both).  The
dense baseline is the same class with N·L unique layers and one loop.

- `LoopedTransformer` (MaskGIT): token + class-token embedding, pre-norm `Layer`s, softmax head.
- `LoopedDiT` (diffusion): the same `Layer` math (attention, MLP, LayerNorm), plus what a DiT adds,
  kept apart below it: patch embedding of a continuous latent, adaLN-Zero modulation on time + class
  (`DiTLayer`), and a modulated final layer predicting x0 per patch.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.config import DiTConfig, ModelConfig


class LoopOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V) after the last loop; T = number of image/video tokens
    loop_logits: torch.Tensor | None  # (len(return_loops), B, T, V) when return_loops is given
    loops_used: torch.Tensor | None = None  # (B,) loops each sample ran when `until` is given


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        qkv = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, S, D/H)
        if x.is_cuda:
            y = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no causal mask
        else:
            # For the short sequences here, explicit attention is several times faster than the CPU
            # SDPA kernel under bf16 autocast (measured: 7x on its backward pass).
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, S, S)
            y = attn.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, S, D))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact (erf) GELU: on this CPU the tanh approximation costs 3-4x more, ~20% of a bf16 forward
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    """Pre-norm transformer layer (affine=False: the norms' scale and shift come from outside, adaLN)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, affine: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine)
        self.mlp = MLP(width, mlp_ratio * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_grid(grid: Sequence[int], width: int, std: float = 0.02) -> torch.Tensor:
    """Sin-cos position codes (prod(grid), width) for a (T', H', W') token grid, scaled to `std`.

    Each axis longer than 1 gets an equal share of the channels (sin and cos of geometric
    frequencies), so a position's code is the sum of its frame, row and column codes and
    attention can find "the same place one frame earlier" from the first step.
    """
    axes = [i for i, n in enumerate(grid) if n > 1] or [len(grid) - 1]
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij"), -1)
    coords = coords.reshape(-1, len(grid))
    pairs = [width // 2 // len(axes) + (i < width // 2 % len(axes)) for i in range(len(axes))]
    parts = []
    for axis, k in zip(axes, pairs):
        # wavelengths from 4 positions up to 4x the axis length
        freq = (math.pi / 2) * grid[axis] ** (-torch.arange(k, dtype=torch.float32) / max(k - 1, 1))
        angle = coords[:, axis, None] * freq
        parts += [angle.sin(), angle.cos()]
    code = torch.cat(parts, -1)
    code = F.pad(code, (0, width - code.shape[1]))
    return code * (std / code.std())


class Looped(nn.Module):
    """What both looped models share beyond `run_loops`: their unique `layers`, compiled or counted."""

    layers: nn.ModuleList

    def compile_layers(self) -> "Looped":
        """torch.compile each unique layer in place (weights and state-dict names unchanged).

        The loop stays in Python, so one compiled graph per layer serves every loop count; what it fuses
        (layer norms, GELU, softmax, residual adds) is much of an eager step's time at this width
        (`python -m core.bench` measures the training step both ways)."""
        for layer in self.layers:
            layer.compile(dynamic=False)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LoopedTransformer(Looped):
    """Bidirectional masked-token predictor with a looped block (MaskGIT-style, class token first)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.token_embed = nn.Embedding(c.vocab_size + 1, c.width)  # + mask token
        self.class_embed = nn.Embedding(c.num_classes + 1, c.width)  # + null class (guidance)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.width))
        self.layers = nn.ModuleList(Layer(c.width, c.num_heads, c.mlp_ratio) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size)
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_embed, std=0.02)
        if c.position_init == "sincos":  # learned, but started from the token grid's geometry
            with torch.no_grad():
                self.pos_embed[0, 1:] = sincos_grid(c.token_grid, c.width)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int, labels (B,) int -> hidden (B, 1 + T, D)."""
        x = torch.cat([self.class_embed(labels)[:, None], self.token_embed(tokens)], dim=1)
        return x + self.pos_embed

    def block(self, x: torch.Tensor) -> torch.Tensor:
        """One loop: the N unique layers in order."""
        for layer in self.layers:
            x = layer(x)
        return x

    def decode(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The shared head: hidden (..., B, 1 + T, D) -> logits (..., B, T, V); the class slot is dropped.

        positions: optional bool (B, T); then only those are decoded -> (..., N, V), N = positions.sum().
        """
        h = x[..., 1:, :]
        if positions is not None:
            h = h[..., positions, :]
        return self.head(self.norm(h))

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        *,
        loops: int | None = None,
        return_loops: Sequence[int] | str = (),
        on_loop: Callable[[int], None] | None = None,
        positions: torch.Tensor | None = None,
        until: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> LoopOutput:
        """Run `loops` loops (default max_loops; more is extrapolation) in ONE pass.

        return_loops: 1-based loop indices whose predictions to decode with the shared head as well
        ("all" = every loop).  on_loop(i) is called after the embedding (i = 0) and after loop i
        (per-loop timing in the runtime).  positions (bool (B, T)) decodes only those tokens — training
        needs logits only where tokens are masked — and then logits are (N, V), loop_logits (K, N, V).

        until(i, logits (B, T, V)) -> bool (B,): an early exit per sample.  Called after every loop
        i < loops with each sample's latest prediction; a sample it marks stops looping (its hidden
        state and logits are frozen, later loops run only on the others) and `loops` is the cap.
        loops_used (B,) says where each sample stopped.
        """
        x = self.embed(tokens, labels)
        return LoopOutput(*run_loops(x, self.block, lambda h: self.decode(h, positions),
                                     self.config.max_loops if loops is None else loops, return_loops, on_loop,
                                     until, positions is not None))


    def flops(self, loops: int | None = None, batch: int = 1) -> float:
        """Forward FLOPs (multiply-add = 2) for `batch` sequences at `loops` loops.

        Counts the block once per loop (not once per unique layer set): cost is linear in loops.
        """
        return flops(self.config, loops, batch)


def run_loops(x: torch.Tensor, block: Callable[[torch.Tensor], torch.Tensor],
              decode: Callable[[torch.Tensor], torch.Tensor], loops: int, return_loops: Sequence[int] | str = (),
              on_loop: Callable[[int], None] | None = None,
              until: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
              partial: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The loop both families share: `block` applied `loops` times to the embedded x in ONE pass.

    Returns (decode(x after the last loop), decode of the hidden states after each of `return_loops`
    stacked on a new first axis, or None, loops each sample ran or None); the wanted states are decoded
    by one head call.  until(i, latest prediction) -> bool (B,): a per-sample early exit (see
    LoopedTransformer.forward); block and decode must then work on any subset of the batch's rows.
    partial: decode returns only part of each sample (positions), which `until` cannot take.
    """
    if loops < 1:
        raise ValueError(f"loops must be >= 1, got {loops}")
    wanted = range(1, loops + 1) if return_loops == "all" else sorted(set(return_loops))
    if any(not 1 <= i <= loops for i in wanted):
        raise ValueError(f"return_loops must lie in 1..{loops}, got {list(wanted)}")
    if on_loop is not None:
        on_loop(0)  # embedding done: lets a timer separate fixed costs from per-loop cost
    if until is not None:
        if wanted or partial:
            raise ValueError("until cannot be combined with return_loops or positions")
        return _loop_until(x, block, decode, loops, until, on_loop)
    kept = []  # hidden states after the wanted loops
    for i in range(1, loops + 1):
        x = block(x)
        if i in wanted:
            kept.append(x)
        if on_loop is not None:
            on_loop(i)
    if not kept:
        return decode(x), None, None
    every = decode(torch.stack(kept))  # (K, ...)
    return (every[-1] if wanted[-1] == loops else decode(x)), every, None


def _loop_until(x: torch.Tensor, block: Callable, decode: Callable, loops: int, until: Callable,
                on_loop: Callable | None) -> tuple[torch.Tensor, None, torch.Tensor]:
    """Per-sample early exit: only the samples still running go through the next loop."""
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    used = torch.full_like(active, loops, dtype=torch.long)
    out = None
    for i in range(1, loops + 1):
        rows = active.nonzero()[:, 0]
        x = x.index_copy(0, rows, block(x[rows]))  # a batch of the running samples only
        new = decode(x[rows])
        out = new if out is None else out.index_copy(0, rows, new.to(out.dtype))
        if on_loop is not None:
            on_loop(i)
        if i == loops:
            break
        stopped = until(i, out).to(active.device) & active
        used[stopped] = i
        active &= ~stopped
        if not active.any():
            break
    return out, None, used


def layer_flops(seq_len: int, width: int, mlp_ratio: int) -> float:
    """Forward FLOPs of one transformer layer on one sequence: matmuls + attention scores/values."""
    S, D = seq_len, width
    return 2 * S * (3 * D * D + D * D + 2 * mlp_ratio * D * D) + 2 * 2 * S * S * D


def flops(config: ModelConfig, loops: int | None = None, batch: int = 1) -> float:
    c = config
    loops = c.max_loops if loops is None else loops
    head = 2 * c.num_tokens * c.width * c.vocab_size
    return float(batch * (loops * c.num_layers * layer_flops(c.seq_len, c.width, c.mlp_ratio) + head))


# -------------------------------------------------------------------------------------------------
# Diffusion: the looped DiT.  What differs from the MaskGIT model is only here: conditioning
# (adaLN-Zero on time + class), the patch embedding of a continuous latent, and the final layer.
# -------------------------------------------------------------------------------------------------
class DenoiseOutput(NamedTuple):
    x0: torch.Tensor  # (B, T, C) predicted clean latent after the last loop (T latent positions, C channels)
    loop_x0: torch.Tensor | None  # (len(return_loops), B, T, C) when return_loops is given


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal code of continuous t in [0, 1] (scaled to 0..1000 as in DiT): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], -1)


class DiTLayer(Layer):
    """The shared `Layer` (same attention, MLP, norms without affine) under adaLN-Zero: shift, scale and
    gate of both branches come from the conditioning vector; the projection starts at zero, so every
    layer starts as the identity."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__(width, num_heads, mlp_ratio, affine=False)
        self.modulation = nn.Linear(width, 6 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, -1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """The shared DiT head: adaLN-modulated LayerNorm + linear to each patch's latent values (zero init)."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, patch_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (..., B, T, D) — any number of stacked loops in front — c (B, D) -> (..., B, T, patch_dim)."""
        shift, scale = self.modulation(F.silu(c)).chunk(2, -1)
        return self.linear(self.norm(x) * (1 + scale[:, None]) + shift[:, None])


class LoopedDiT(Looped):
    """DiT x0-predictor with a looped block: x_t (B, T, C) latent, t (B,) in [0, 1], labels (B,).

    Latent choice: the tokenizer's continuous pre-quantization latent (core.tokenizer.Tokenizer.
    encode_latent), not pixels.  Measured on the shipped shapes tokenizer (2,000 test images): its
    decoder turns the continuous latent into images at 32.0 dB PSNR against the originals (its FSQ
    codes: 31.4 dB), so nothing is lost; the latent is already on a diffusion-friendly scale (values
    in [-1, 1], std 0.75, mean -0.13: no rescaling needed); and the diffused vector is 8×8×4 = 256 numbers instead of
    32×32×3 = 3,072; at the same 64-token sequence (patch 4 on pixels) the head would predict 12×
    more values per token and the denoiser would spend its width on pixel detail the tokenizer's
    decoder already knows.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Linear(c.patch_dim, c.width)
        self.register_buffer("pos_embed", sincos_grid(c.token_grid, c.width, std=1.0)[None])  # fixed, as in DiT
        self.time_embed = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.class_embed = nn.Embedding(c.num_classes + 1, c.width)  # + null class (guidance)
        self.layers = nn.ModuleList(DiTLayer(c.width, c.num_heads, c.mlp_ratio) for _ in range(c.num_layers))
        self.final = FinalLayer(c.width, c.patch_dim)
        self.apply(self._init_weights)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for module in [*(layer.modulation for layer in self.layers), self.final.modulation, self.final.linear]:
            nn.init.zeros_(module.weight)  # adaLN-Zero
            nn.init.zeros_(module.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    # -- latent (B, T'·H'·W', C) <-> patches (B, T'·(H'/p)·(W'/p), p·p·C) ------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        (T, H, W), p, C = self.config.latent_grid, self.config.patch_size, self.config.latent_channels
        x = x.reshape(-1, T, H // p, p, W // p, p, C).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(x.shape[0], -1, p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(..., B, tokens, p·p·C) -> (..., B, T'·H'·W', C)."""
        (T, H, W), p, C = self.config.latent_grid, self.config.patch_size, self.config.latent_channels
        lead = x.shape[:-2]
        x = x.reshape(*lead, T, H // p, W // p, p, p, C)
        n = len(lead)
        x = x.permute(*range(n), n, n + 1, n + 3, n + 2, n + 4, n + 5)
        return x.reshape(*lead, T * H * W, C)

    def condition(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) times and labels -> the adaLN conditioning vector (B, D)."""
        code = timestep_embedding(t, self.config.width).to(self.patch_embed.weight.dtype)
        return self.time_embed(code) + self.class_embed(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, *, loops: int | None = None,
                return_loops: Sequence[int] | str = (), on_loop: Callable[[int], None] | None = None
                ) -> DenoiseOutput:
        """Predict x0 from x_t after `loops` loops (default max_loops), every wanted loop from ONE pass
        (return_loops, on_loop: as LoopedTransformer.forward)."""
        c = self.condition(t, labels)
        h = self.patch_embed(self.patchify(x)) + self.pos_embed

        def block(h: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                h = layer(h, c)
            return h

        last, every, _ = run_loops(h, block, lambda h: self.unpatchify(self.final(h, c)),
                                   self.config.max_loops if loops is None else loops, return_loops, on_loop)
        return DenoiseOutput(last, every)

    def flops(self, loops: int | None = None, batch: int = 1) -> float:
        return dit_flops(self.config, loops, batch)


def dit_flops(config: DiTConfig, loops: int | None = None, batch: int = 1) -> float:
    """Forward FLOPs of LoopedDiT: layers (plus their adaLN projections) per loop, patch embed and final layer."""
    c = config
    loops = c.max_loops if loops is None else loops
    S, D = c.seq_len, c.width
    per_layer = layer_flops(S, D, c.mlp_ratio) + 2 * D * 6 * D
    fixed = 2 * S * c.patch_dim * D * 2 + 2 * D * 2 * D + 2 * 2 * D * D  # patch embed + head, final adaLN, time MLP
    return float(batch * (loops * c.num_layers * per_layer + fixed))
