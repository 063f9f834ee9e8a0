"""LoopedTransformer: the one transformer of the project (PAPER.md §2).

Embedding runs once; a block of `num_layers` unique layers is applied `loops` times with shared
weights; one shared head (final norm + projection) decodes the hidden state after any loop.  The
dense baseline is this class with N·L unique layers and one loop.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig


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
    """Pre-norm transformer layer."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
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


class LoopedTransformer(nn.Module):
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
        loops = self.config.max_loops if loops is None else loops
        if loops < 1:
            raise ValueError(f"loops must be >= 1, got {loops}")
        wanted = range(1, loops + 1) if return_loops == "all" else sorted(set(return_loops))
        if any(not 1 <= i <= loops for i in wanted):
            raise ValueError(f"return_loops must lie in 1..{loops}, got {list(wanted)}")
        x = self.embed(tokens, labels)
        if on_loop is not None:
            on_loop(0)  # embedding done: lets a timer separate fixed costs from per-loop cost
        if until is not None:
            if wanted or positions is not None:
                raise ValueError("until cannot be combined with return_loops or positions")
            return self._loop_until(x, loops, until, on_loop)
        kept = []  # hidden states after the wanted loops; decoded together by one head call
        for i in range(1, loops + 1):
            x = self.block(x)
            if i in wanted:
                kept.append(x)
            if on_loop is not None:
                on_loop(i)
        if not kept:
            return LoopOutput(self.decode(x, positions), None)
        loop_logits = self.decode(torch.stack(kept), positions)  # (K, B, T, V) or (K, N, V)
        logits = loop_logits[-1] if wanted[-1] == loops else self.decode(x, positions)
        return LoopOutput(logits, loop_logits)

    def compile_layers(self) -> "LoopedTransformer":
        """torch.compile each unique layer in place (weights and state-dict names unchanged).

        The loop stays in Python, so one compiled graph per layer serves every loop count; what it fuses
        (layer norms, GELU, softmax, residual adds) is much of an eager step's time at this width
        (`python -m core.bench` measures the training step both ways)."""
        for layer in self.layers:
            layer.compile(dynamic=False)
        return self

    def _loop_until(self, x: torch.Tensor, loops: int, until: Callable, on_loop: Callable | None) -> LoopOutput:
        """Per-sample early exit: only the samples still running go through the next loop."""
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        used = torch.full_like(active, loops, dtype=torch.long)
        logits = None
        for i in range(1, loops + 1):
            rows = active.nonzero()[:, 0]
            x = x.index_copy(0, rows, self.block(x[rows]))  # a batch of the running samples only
            new = self.decode(x[rows])
            logits = new if logits is None else logits.index_copy(0, rows, new.to(logits.dtype))
            if on_loop is not None:
                on_loop(i)
            if i == loops:
                break
            stopped = until(i, logits).to(active.device) & active
            used[stopped] = i
            active &= ~stopped
            if not active.any():
                break
        return LoopOutput(logits, None, used)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops(self, loops: int | None = None, batch: int = 1) -> float:
        """Forward FLOPs (multiply-add = 2) for `batch` sequences at `loops` loops.

        Counts the block once per loop (not once per unique layer set): cost is linear in loops.
        """
        return flops(self.config, loops, batch)


def flops(config: ModelConfig, loops: int | None = None, batch: int = 1) -> float:
    c = config
    loops = c.max_loops if loops is None else loops
    S, D = c.seq_len, c.width
    per_layer = 2 * S * (3 * D * D + D * D + 2 * c.mlp_ratio * D * D) + 2 * 2 * S * S * D  # matmuls + attn
    head = 2 * c.num_tokens * D * c.vocab_size
    return float(batch * (loops * c.num_layers * per_layer + head))
