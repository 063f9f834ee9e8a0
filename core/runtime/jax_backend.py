"""The JAX runtime: the same looped models (core/model.py, MaskGIT and DiT) in JAX, on the same weights.

Parameters are a nested dict whose paths are the torch parameter names ("layers.0.attn.qkv.weight"
-> params["layers"][0]["attn"]["qkv"]["weight"]); the only conversion is that nn.Linear weights
are stored (out, in) by torch and transposed once at load to (in, out).  The loop count is a traced
argument of the jitted function (a `lax.fori_loop` with a dynamic bound), so changing L never
recompiles and compile time does not grow with L.  `JaxGenerator.logits_fn` has the signature of
`Pipeline.logits_fn`, so the one pure sampler (core.sampling.maskgit_decode) drives both backends
with the same torch.Generator: same seed, same tokens.

On a TPU VM:

    pip install -U "jax[tpu]"            # or "jax[cuda12]" on an NVIDIA GPU; plain "jax" for CPU
    python -m core.sample --backend jax --checkpoint checkpoints/shapes-elt --label star --out star.png
    python -m core.evaluate --backend jax --checkpoint checkpoints/shapes-elt --loops 1 2 3 4

Only the transformer runs in JAX; the sampler's bookkeeping and the tokenizer's decode stay in torch
(on CPU on a TPU host), and each sampling step moves one (B, T) token array in and its logits out.
The loops run inside one compiled computation, so per-loop timings (Pipeline.stream(timed=True))
are not reported on this backend.
`--precision fp32` runs matmuls at full fp32 ("highest"); `bf16` and, on TPU/GPU, `auto` use the
platform's fast default (bf16 passes on TPU, TF32 on recent NVIDIA GPUs).  A full-JAX MaskGIT
loop (no host round trip per step) is not implemented: the shared torch sampler keeps both backends
bit-compatible in their randomness.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

try:  # guarded: `import core.runtime` never imports this module, and this one works without JAX
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:  # pragma: no cover - exercised only where JAX is absent
    jax = jnp = lax = None

from core.config import DiTConfig, ModelConfig
from core.usage import UsageError

JAX_MISSING = "the jax backend needs JAX: pip install jax (or jax[tpu] / jax[cuda12])"
EMBEDDINGS = ("token_embed", "class_embed")  # nn.Embedding: (rows, width) kept; every other 2-D weight is an
#                                            nn.Linear's (out, in) -> (in, out)
LN_EPS = 1e-5  # torch nn.LayerNorm default
PRECISIONS = ("highest", "high", "default")
TRACES = {"last": 0, "all": 0, "until": 0, "dit": 0}  # incremented while tracing: a test can check that L never retraces

Params = dict[str, Any]


def require_jax() -> None:
    if jax is None:
        raise ImportError(JAX_MISSING)


# -- weights ------------------------------------------------------------------------------------------
def params_from_state(state: Mapping[str, torch.Tensor], device=None) -> Params:
    """Torch state dict (prefix-free names) -> nested params on `device` (default jax.devices()[0])."""
    require_jax()
    tree: dict = {}
    for key, value in state.items():
        *path, leaf = key.split(".")
        array = value.detach().float().cpu().numpy()
        if leaf == "weight" and array.ndim == 2 and path[-1] not in EMBEDDINGS:
            array = array.T  # (out, in) -> (in, out): x @ W in the forward
        node = tree
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = np.ascontiguousarray(array)
    layers = tree["layers"]
    tree["layers"] = [layers[str(i)] for i in range(len(layers))]  # "0", "1", ... -> a list in order
    return jax.device_put(tree, device or jax.devices()[0])


def load_params(checkpoint_dir: str | Path, weights: str = "model", device=None) -> tuple[ModelConfig, Params]:
    """(ModelConfig, params) of a generator checkpoint folder; weights = "model" or "ema".

    Reads through core.checkpoint (prefix handling, shape validation against config.json).
    """
    from core import checkpoint as ckpt

    require_jax()
    loaded = ckpt.load(checkpoint_dir, weights=weights)
    if loaded.experiment.train.task != "generator":
        raise ckpt.CheckpointError(f"{checkpoint_dir} is a {loaded.experiment.train.task} checkpoint, "
                                   "not a generator")
    return loaded.experiment.model, params_from_state(loaded.module.state_dict(), device)


# -- the model (same order of operations as core/model.py) ------------------------------------------------
def _linear(p: Params, x, precision):
    return jnp.matmul(x, p["weight"], precision=precision) + p["bias"]


def _layer_norm(p: Params, x):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)  # biased, as torch
    return (x - mean) * lax.rsqrt(var + LN_EPS) * p["weight"] + p["bias"]


def _attention(p: Params, x, num_heads: int, precision):
    B, S, D = x.shape
    qkv = _linear(p["qkv"], x, precision).reshape(B, S, 3, num_heads, D // num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, S, H, D/H)
    attn = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision) * (D // num_heads) ** -0.5  # (B, H, S, S)
    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(attn, axis=-1), v, precision=precision)  # bidirectional
    return _linear(p["proj"], y.reshape(B, S, D), precision)


def _mlp(p: Params, x, precision):
    return _linear(p["fc2"], jax.nn.gelu(_linear(p["fc1"], x, precision), approximate=False), precision)


def _block(params: Params, x, config: ModelConfig, precision):
    """One loop: the N unique pre-norm layers in order."""
    for layer in params["layers"]:
        x = x + _attention(layer["attn"], _layer_norm(layer["norm1"], x), config.num_heads, precision)
        x = x + _mlp(layer["mlp"], _layer_norm(layer["norm2"], x), precision)
    return x


def _embed(params: Params, tokens, labels):
    """tokens (B, T) int, labels (B,) int -> hidden (B, 1 + T, D)."""
    x = jnp.concatenate([params["class_embed"]["weight"][labels][:, None],
                         params["token_embed"]["weight"][tokens]], axis=1)
    return x + params["pos_embed"]  # pos_embed keeps torch's (1, 1 + T, D)


def _decode(params: Params, x, precision):
    """Shared head: hidden (B, 1 + T, D) -> logits (B, T, V); the class slot is dropped."""
    return _linear(params["head"], _layer_norm(params["norm"], x[:, 1:]), precision)


def _forward_last(params, tokens, labels, loops, *, config: ModelConfig, precision: str):
    TRACES["last"] += 1
    prec = lax.Precision(precision)
    x = lax.fori_loop(0, loops, lambda i, x: _block(params, x, config, prec), _embed(params, tokens, labels))
    return _decode(params, x, prec)


def _forward_all(params, tokens, labels, loops, *, config: ModelConfig, precision: str, max_len: int):
    """Every loop's logits into a (max_len, B, T, V) buffer; rows >= loops stay zero (never computed)."""
    TRACES["all"] += 1
    prec = lax.Precision(precision)
    B, T = tokens.shape
    buffer = jnp.zeros((max_len, B, T, config.vocab_size), jnp.float32)

    def body(i, carry):
        x, buffer = carry
        x = _block(params, x, config, prec)
        return x, lax.dynamic_update_index_in_dim(buffer, _decode(params, x, prec), i, 0)

    return lax.fori_loop(0, loops, body, (_embed(params, tokens, labels), buffer))[1]


def _converged(kind: str, previous, current, masked, threshold):
    """core.sampling.ExitCriterion.converged in JAX: (B, T, V) twice, bool (B, T) -> bool (B,)."""
    count = masked.sum(-1)
    if kind == "agree":
        same = (previous.argmax(-1) == current.argmax(-1)) & masked
        held = same.sum(-1) / jnp.maximum(count, 1) >= threshold
    else:
        log_p, log_q = jax.nn.log_softmax(current, -1), jax.nn.log_softmax(previous, -1)
        kl = (jnp.exp(log_p) * (log_p - log_q)).sum(-1)
        held = (kl * masked).sum(-1) / jnp.maximum(count, 1) < threshold
    return held | (count == 0)


def _forward_until(params, tokens, labels, masked, cap, min_loops, threshold, cfg_scale, *, config: ModelConfig,
                   precision: str, kind: str, guided: bool):
    """Adaptive exit per sample in one `lax.while_loop` (same rule as LoopedTransformer.forward's `until`
    with core.sampling.exit_until): after loop i (min_loops <= i < cap, i >= 2) a sample whose
    prediction converged is frozen; the loop ends when every sample has stopped or at the cap.
    With `guided` the rows are [conditional; unconditional] and a sample's two rows stop together.
    Returns (logits (B, T, V), loops used (B,))."""
    TRACES["until"] += 1
    prec = lax.Precision(precision)
    rows = tokens.shape[0]

    def judged(logits):
        if not guided:
            return logits
        cond, uncond = logits[: rows // 2], logits[rows // 2:]
        return uncond + cfg_scale * (cond - uncond)

    x = _block(params, _embed(params, tokens, labels), config, prec)
    logits = _decode(params, x, prec)
    mask = masked[: rows // 2] if guided else masked
    init = (jnp.int32(1), x, logits, judged(logits), jnp.zeros(rows, bool), jnp.full(rows, cap, jnp.int32))

    def running(carry):
        i, _, _, _, done, _ = carry
        return (i < cap) & ~done.all()

    def body(carry):
        i, x, logits, previous, done, used = carry
        i = i + 1
        keep = done[:, None, None]
        x_new = _block(params, x, config, prec)
        x = jnp.where(keep, x, x_new)
        logits = jnp.where(keep, logits, _decode(params, x_new, prec))
        current = judged(logits)
        stop = _converged(kind, previous, current, mask, threshold) & (i >= min_loops) & (i < cap)
        stop = jnp.concatenate([stop, stop]) if guided else stop
        newly = stop & ~done
        return i, x, logits, current, done | newly, jnp.where(newly, i, used)

    _, _, logits, _, _, used = lax.while_loop(running, body, init)
    return logits, used


@functools.cache
def _jitted() -> tuple[Callable, Callable, Callable]:
    require_jax()
    return (jax.jit(_forward_last, static_argnames=("config", "precision")),
            jax.jit(_forward_all, static_argnames=("config", "precision", "max_len")),
            jax.jit(_forward_until, static_argnames=("config", "precision", "kind", "guided")))


def buffer_length(loops: int, max_loops: int) -> int:
    """Static length of the all-loops buffer: max_loops, or the next power of two above it.

    Shapes must be static under jit, so returning every loop uses a fixed-length buffer written
    inside the dynamic loop; bucketing by powers of two bounds recompiles to one per bucket
    (L <= max_loops: one compile; L = 5..8: another; ...) while unused rows cost only memory.
    """
    return max_loops if loops <= max_loops else 1 << (loops - 1).bit_length()


def forward(params: Params, config: ModelConfig, tokens, labels, loops: int | None = None,
            return_all_loops: bool = False, precision: str = "highest"):
    """tokens (B, T) int, labels (B,) int -> logits (B, T, V), or (loops, B, T, V) for every loop.

    `loops` defaults to config.max_loops and may exceed it (extrapolation); it is traced, so every
    loop count reuses one compiled function.
    """
    require_jax()
    loops = config.max_loops if loops is None else int(loops)
    if loops < 1:
        raise ValueError(f"loops must be >= 1, got {loops}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    last, every, _ = _jitted()
    tokens, labels, count = jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32), np.int32(loops)
    if not return_all_loops:
        return last(params, tokens, labels, count, config=config, precision=precision)
    buffer = every(params, tokens, labels, count, config=config, precision=precision,
                   max_len=buffer_length(loops, config.max_loops))
    return buffer[:loops]


# -- the looped DiT (same order of operations as core.model.LoopedDiT) -------------------------------------
def _plain_norm(x):
    """LayerNorm without affine (adaLN supplies scale and shift)."""
    mean = x.mean(-1, keepdims=True)
    return (x - mean) * lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + LN_EPS)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _dit_condition(params: Params, t, labels, width: int, precision):
    half = width // 2
    freqs = jnp.exp(-np.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000 * t.astype(jnp.float32)[:, None] * freqs[None]
    code = jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)
    h = _linear(params["time_embed"]["2"], jax.nn.silu(_linear(params["time_embed"]["0"], code, precision)), precision)
    return h + params["class_embed"]["weight"][labels]


def _dit_block(params: Params, x, c, config: DiTConfig, precision):
    for layer in params["layers"]:
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(
            _linear(layer["modulation"], jax.nn.silu(c), precision), 6, -1)
        x = x + gate1[:, None] * _attention(layer["attn"], _modulate(_plain_norm(x), shift1, scale1),
                                            config.num_heads, precision)
        x = x + gate2[:, None] * _mlp(layer["mlp"], _modulate(_plain_norm(x), shift2, scale2), precision)
    return x


def _dit_patches(x, config: DiTConfig):
    (T, H, W), p, C = config.latent_grid, config.patch_size, config.latent_channels
    x = x.reshape(-1, T, H // p, p, W // p, p, C).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(x.shape[0], -1, p * p * C)


def _dit_final(params: Params, x, c, config: DiTConfig, precision):
    """Shared final layer + unpatchify: hidden (B, tokens, D) -> x0 (B, T'·H'·W', C)."""
    shift, scale = jnp.split(_linear(params["final"]["modulation"], jax.nn.silu(c), precision), 2, -1)
    y = _linear(params["final"]["linear"], _modulate(_plain_norm(x), shift, scale), precision)
    (T, H, W), p, C = config.latent_grid, config.patch_size, config.latent_channels
    y = y.reshape(-1, T, H // p, W // p, p, p, C).transpose(0, 1, 2, 4, 3, 5, 6)
    return y.reshape(y.shape[0], T * H * W, C)


def _dit_forward_all(params, x, t, labels, loops, *, config: DiTConfig, precision: str, max_len: int):
    """Every loop's x0 into a (max_len, B, T, C) buffer (rows >= loops stay zero); as _forward_all."""
    TRACES["dit"] += 1
    prec = lax.Precision(precision)
    c = _dit_condition(params, t, labels, config.width, prec)
    h = _linear(params["patch_embed"], _dit_patches(x, config), prec) + params["pos_embed"]
    buffer = jnp.zeros((max_len, *x.shape), jnp.float32)

    def body(i, carry):
        h, buffer = carry
        h = _dit_block(params, h, c, config, prec)
        return h, lax.dynamic_update_index_in_dim(buffer, _dit_final(params, h, c, config, prec), i, 0)

    return lax.fori_loop(0, loops, body, (h, buffer))[1]


@functools.cache
def _dit_jitted() -> Callable:
    require_jax()
    return jax.jit(_dit_forward_all, static_argnames=("config", "precision", "max_len"))


class JaxDiT:
    """A looped DiT in JAX with the torch-facing denoise_fn of core.pipeline.Pipeline.logits_fn.

    One compiled function returns every loop's x0 (a fixed-length buffer, as JaxGenerator's all-loops
    path); the last loop's row is the prediction, so L never recompiles below the buffer length.
    """

    def __init__(self, config: DiTConfig, params: Params, precision: str = "highest"):
        require_jax()
        self.config, self.params, self.precision = config, params, precision

    @classmethod
    def from_module(cls, module: torch.nn.Module, precision: str = "highest", device=None) -> "JaxDiT":
        return cls(module.config, params_from_state(module.state_dict(), device), precision)

    def forward(self, x, t, labels, loops: int | None = None, return_all_loops: bool = False):
        loops = self.config.max_loops if loops is None else int(loops)
        if loops < 1:
            raise ValueError(f"loops must be >= 1, got {loops}")
        every = _dit_jitted()(self.params, jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32),
                              jnp.asarray(labels, jnp.int32), np.int32(loops), config=self.config,
                              precision=self.precision, max_len=buffer_length(loops, self.config.max_loops))
        return every[:loops] if return_all_loops else every[loops - 1]

    def logits_fn(self, loops: int, all_loops: bool = False, mark: Callable[[str], None] | None = None,
                  exit=None, cfg_scale: float = 0.0, record: list | None = None):
        """fn(x (B, T, C), labels (B,), t (B,)) -> float32 torch x0 (B, T, C) or (L, B, T, C); `mark` unused.
        A DiT has no adaptive exit (exit must be None); record receives the loops each row ran."""
        if exit is not None:
            raise ValueError("adaptive exit is a MaskGIT option; a DiT runs a fixed loop count")

        def fn(x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self.forward(x.float().cpu().numpy(), t.cpu().numpy(), labels.cpu().numpy(), loops, all_loops)
            if record is not None:
                record.append(torch.full((len(x),), loops))
            return torch.from_numpy(np.array(out)).to(x.device)

        return fn


def forward_until(params: Params, config: ModelConfig, tokens, labels, masked, cap: int, exit,
                  cfg_scale: float = 0.0, precision: str = "highest"):
    """Adaptive exit (exit: a core.sampling.ExitCriterion) up to `cap` loops -> (logits (B, T, V), used (B,)).

    masked: bool (B, T) still-masked tokens; cfg_scale > 0 means the rows are [cond; uncond]."""
    require_jax()
    until = _jitted()[2]
    return until(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32), jnp.asarray(masked, bool),
                 np.int32(cap), np.int32(max(exit.min_loops, 2)), np.float32(exit.threshold), np.float32(cfg_scale),
                 config=config, precision=precision, kind=exit.kind, guided=cfg_scale > 0)


def matmul_precision(precision: str) -> str:
    """Runtime precision ("auto" | "bf16" | "fp32") -> JAX matmul precision on the default device."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; use auto, bf16 or fp32")
    require_jax()
    if precision == "auto":
        return "default" if jax.devices()[0].platform in ("tpu", "gpu") else "highest"
    return "highest" if precision == "fp32" else "default"


# -- the sampler's view -------------------------------------------------------------------------------------
class JaxGenerator:
    """A looped generator in JAX with the torch-facing `logits_fn` of core.pipeline.Pipeline."""

    def __init__(self, config: ModelConfig, params: Params, precision: str = "highest"):
        require_jax()
        self.config, self.params, self.precision = config, params, precision

    @classmethod
    def from_checkpoint(cls, path: str | Path, weights: str = "model", precision: str = "highest",
                        device=None) -> "JaxGenerator":
        return cls(*load_params(path, weights, device), precision=precision)

    @classmethod
    def from_module(cls, module: torch.nn.Module, precision: str = "highest", device=None) -> "JaxGenerator":
        """From a loaded torch LoopedTransformer (same weights, no second read from disk)."""
        return cls(module.config, params_from_state(module.state_dict(), device), precision)

    @property
    def device(self):
        return next(iter(jax.tree_util.tree_leaves(self.params))).devices().pop()

    def forward(self, tokens, labels, loops: int | None = None, return_all_loops: bool = False):
        return forward(self.params, self.config, tokens, labels, loops, return_all_loops, self.precision)

    def logits_fn(self, loops: int, all_loops: bool = False, mark: Callable[[str], None] | None = None,
                  exit=None, cfg_scale: float = 0.0, record: list | None = None):
        """fn(tokens (B, T) int64, labels (B,)) -> float32 torch logits (B, T, V) or (L, B, T, V).

        The result lives on the device of `tokens`.  `mark` is accepted for signature compatibility
        with Pipeline.logits_fn but never called: the loops run inside one compiled computation, so
        per-loop timings do not exist here.  exit / cfg_scale / record: adaptive exit, as there.
        """
        def fn(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            tokens_np, labels_np = tokens.cpu().numpy(), labels.cpu().numpy()
            if exit is None:
                out = self.forward(tokens_np, labels_np, loops, all_loops)
                used = np.full(len(tokens_np), loops)
            else:
                out, used = forward_until(self.params, self.config, tokens_np, labels_np,
                                          tokens_np == self.config.mask_id, loops, exit, cfg_scale, self.precision)
            if record is not None:
                record.append(torch.from_numpy(np.array(used)))
            return torch.from_numpy(np.array(out)).to(tokens.device)  # np.array: a writable host copy

        return fn


def use_jax(pipeline, precision: str = "auto"):
    """Run a core.pipeline.Pipeline's transformer in JAX from now on (tokenizer and sampler stay torch)."""
    if jax is None:
        raise UsageError(JAX_MISSING)
    backend = JaxDiT if isinstance(pipeline.config, DiTConfig) else JaxGenerator
    pipeline.backend = backend.from_module(pipeline.generator.module, matmul_precision(precision))
    return pipeline

