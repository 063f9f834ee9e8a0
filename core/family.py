"""The one place a generator family is chosen: its config type -> model, objectives, data, sampler.

    masked ("maskgit"):   ModelConfig -> LoopedTransformer, masked CE / ILSD, FSQ token ids, maskgit_decode
    diffusion:            DiTConfig   -> LoopedDiT, x0-MSE / ILSD, continuous latents, diffusion_decode

The trainer, the checkpoint loader, the pipeline (and through it sample, evaluate, bench and the app)
ask `family_of(config)` instead of testing types themselves; so do core.export and, through export.json's
`family` and `sampler_module`, the page (the family's `page` record: its graphs and its JS sampler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from core import objectives as obj
from core.config import GENERATOR_CONFIGS, ConfigError, family_name
from core.model import LoopedDiT, LoopedTransformer, dit_flops, flops
from core.sampling import (ExitCriterion, diffusion_decode, diffusion_init, diffusion_step, draws_for, exit_until,
                           gaussians, guided, loop_guided, maskgit_decode, maskgit_init, maskgit_step, own_loop)


@dataclass(frozen=True)
class Family:
    name: str
    module: Callable[[Any], nn.Module]  # model config -> untrained model
    objectives: Mapping[str, Callable]  # TrainConfig.mode -> loss(model, step, cfg) (core.objectives)
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (tokenizer, uint8 pixels) -> training data
    decode: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (tokenizer, sampled data) -> uint8 pixels
    data_shape: Callable[[Any], tuple[int, ...]]  # model config -> one item's encoded shape
    data_dtype: torch.dtype
    tokenizer_mismatch: Callable[[Any, Any], str | None]  # (tokenizer config, model config) -> problem or None
    model_fn: Callable  # (model, loops, all_loops, on_loop, exit, cfg_scale, record) -> the sampler's model function
    discrete: bool  # predicts token ids: loop schedules, adaptive exit (core.sampling.LoopSetting) and the
    #                 per-token settle view apply (a diffusion model's continuous x0 has none of them)
    sample: Callable[..., Iterator]  # (fn, labels, model config, sampler config, generator, init) -> states
    loop_preview: Callable  # (model config, every loop's output (L, …) of one sample, its data before the step
    #                         or None) -> each loop's data to decode for the in-step strip
    flops: Callable[..., float]  # (model config, loops, batch) -> forward FLOPs
    # the per-row sampler (a batch whose rows have their own settings, generators and loop counts, core.batching):
    rows_init: Callable  # (model config, sampler configs (one per row), generators, device) -> rows
    rows_step: Callable  # (model config, rows, all-loops fn, labels, loops (B,), generators) -> (rows, prediction,
    #                      every loop's output (L, B, …): token ids or x0)
    page: "PageExport"  # what the page runs (core.export writes it, assets/browser runs it)

    @property
    def config_type(self) -> type:
        return GENERATOR_CONFIGS[self.name][0]

    @property
    def sampler_type(self) -> type:
        return GENERATOR_CONFIGS[self.name][1]


@dataclass(frozen=True)
class PageExport:
    """A family in the visitor's page: the four ONNX graphs core.export writes (the loop stays outside them, so
    any L runs on the same weights) and the JS module that mirrors its sampler (assets/browser/<sampler>)."""

    sampler: str  # the page's twin of this family's half of core.sampling
    specs: Callable  # (model config, tokenizer config) -> {graph: {"inputs" | "outputs": {name: {shape, dtype}}}}
    graphs: Callable  # (model, tokenizer) -> {graph: (function of the graph's inputs, example inputs)}
    facts: Callable  # model config -> what export.json adds for this family's sampler


GRAPHS = ("embed", "block", "head", "decoder")


def _tensor(shape: list, dtype: str = "float32") -> dict[str, Any]:
    return {"shape": ["batch", *shape], "dtype": dtype}


def _record(record: list | None, loops_used: torch.Tensor | None, rows: int, loops: int) -> None:
    """Append the loops each of `rows` samples ran in one model call (all `loops` without an early exit)."""
    if record is not None:
        record.append(loops_used.cpu() if loops_used is not None else torch.full((rows,), loops))


# -- masked token prediction (MaskGIT) ------------------------------------------------------------------
def _maskgit_fn(model: nn.Module, loops: int, all_loops: bool, on_loop, exit: ExitCriterion | None = None,
                cfg_scale: float = 0.0, record: list | None = None):
    """exit: adaptive exit per sample with `loops` as the cap (cfg_scale: the guidance the sampler applies,
    so the criterion judges guided logits); each call appends the loops used (rows,) to record."""
    if exit is not None and all_loops:
        raise ValueError("adaptive exit returns the last loop only (no all_loops)")
    mask_id = model.config.mask_id

    def fn(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # the prepared copy runs in the runtime's dtype; guidance arithmetic is done in fp32
        until = None if exit is None else exit_until(exit, tokens == mask_id, cfg_scale)
        out = model(tokens, labels, loops=loops, return_loops="all" if all_loops else (), on_loop=on_loop,
                    until=until)
        _record(record, out.loops_used, len(tokens), loops)
        return (out.loop_logits if all_loops else out.logits).float()
    return fn


def _maskgit_sample(fn, labels, config, sampler, generator, init=None):
    return maskgit_decode(fn, labels, num_tokens=config.num_tokens, mask_id=config.mask_id,
                          null_label=config.null_class, config=sampler, generator=generator, init=init)


def _maskgit_rows_init(config, samplers, generators, device):
    return maskgit_init(samplers, batch=len(samplers), num_tokens=config.num_tokens, mask_id=config.mask_id,
                        device=device)


def _maskgit_rows_step(config, rows, fn, labels, loops, generators):
    logits = guided(fn, rows.tokens, labels, config.null_class, rows.cfg_scale).float()  # (L, B, T, V)
    rows, sampled, _ = maskgit_step(rows, own_loop(logits, loops),
                                    draws_for(generators, len(labels), config.num_tokens, labels.device))
    return rows, sampled, logits.argmax(-1)


def _maskgit_loop_preview(config, loops: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
    """Loop i's prediction where the step started masked; tokens known before the step stay as they were."""
    loops = loops.cpu()
    return loops if before is None else torch.where(before == config.mask_id, loops, before)


def _maskgit_decode(tokenizer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return tokenizer.decode(tokens.clamp(0, tokenizer.config.codebook_size - 1))  # a still-masked id decodes as code 0


def _maskgit_mismatch(tok, model) -> str | None:
    if tok.codebook_size != model.vocab_size or tok.token_grid != model.token_grid:
        return (f"codebook {tok.codebook_size}, grid {tok.token_grid}) does not match the model (vocab "
                f"{model.vocab_size}, grid {model.token_grid})")
    return None


def _pixels(tokenizer) -> dict[str, Any]:
    """The decoder's output: uint8 (B, H, W, 3), a video tokenizer's every frame (B, F, H, W, 3)."""
    frames = [tokenizer.num_frames] if tokenizer.is_video else []
    return _tensor([*frames, tokenizer.image_size, tokenizer.image_size, 3], "uint8")


def _maskgit_specs(config, tokenizer) -> dict[str, dict]:
    # a clip's T'·H'·W' tokens are one sequence, so only the decoder knows it is a clip
    T, hidden = config.num_tokens, _tensor([config.seq_len, config.width])
    return {"embed": {"inputs": {"tokens": _tensor([T], "int32"), "labels": _tensor([], "int32")},
                      "outputs": {"hidden": hidden}},
            "block": {"inputs": {"hidden": hidden}, "outputs": {"hidden_out": hidden}},
            "head": {"inputs": {"hidden": hidden}, "outputs": {"logits": _tensor([T, config.vocab_size])}},
            "decoder": {"inputs": {"tokens": _tensor([T], "int32")}, "outputs": {"pixels": _pixels(tokenizer)}}}


def _maskgit_graphs(model: nn.Module, tokenizer: nn.Module) -> dict[str, tuple[Callable, tuple]]:
    c = model.config
    tokens = torch.full((2, c.num_tokens), c.mask_id, dtype=torch.int32)
    tokens[0, ::3] = 1  # some known tokens, so nothing is folded for an all-mask input
    labels = torch.tensor([0, c.null_class], dtype=torch.int32)
    hidden = model.embed(tokens.long(), labels.long()).detach()
    return {"embed": (lambda tokens, labels: model.embed(tokens.long(), labels.long()), (tokens, labels)),
            "block": (model.block, (hidden,)),
            "head": (lambda hidden: model.decode(hidden).float(), (hidden,)),
            "decoder": (lambda ids: _maskgit_decode(tokenizer, ids.long()), (torch.zeros_like(tokens),))}


def _maskgit_facts(config) -> dict[str, Any]:
    return {"mask_id": config.mask_id, "vocab_size": config.vocab_size, "token_grid": list(config.token_grid),
            "num_tokens": config.num_tokens}


# -- diffusion (DiT) ----------------------------------------------------------------------------------------
def _dit_fn(model: nn.Module, loops: int, all_loops: bool, on_loop, exit: ExitCriterion | None = None,
            cfg_scale: float = 0.0, record: list | None = None):
    if exit is not None:
        raise ConfigError(NO_LOOP_SETTINGS)
    dtype = next(model.parameters()).dtype

    def fn(x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x.to(dtype), t, labels, loops=loops, return_loops="all" if all_loops else (), on_loop=on_loop)
        _record(record, None, len(x), loops)
        return (out.loop_x0 if all_loops else out.x0).float()
    return fn


NO_LOOP_SETTINGS = ("adaptive exit and loop schedules (--adaptive, --loops-schedule) are MaskGIT options; "
                    "a diffusion (DiT) checkpoint runs a fixed loop count at every step (--loops)")


def _dit_sample(fn, labels, config, sampler, generator, init=None):
    if init is not None:
        raise ConfigError("continuing given tokens (init) is a MaskGIT option; a diffusion model starts from noise")
    return diffusion_decode(fn, labels, shape=_dit_shape(config), null_label=config.null_class, config=sampler,
                            shift=config.schedule_shift,
                            generator=generator)


def _dit_rows_init(config, samplers, generators, device):
    return diffusion_init(samplers, batch=len(samplers), shape=_dit_shape(config), generator=generators, device=device)


def _dit_rows_step(config, rows, fn, labels, loops, generators):
    cfg = torch.where(rows.guide_loop > 0, 0.0, rows.cfg_scale)  # loop-guided rows: the conditional pass only
    x0 = guided(fn, rows.x, labels, config.null_class, cfg, rows.t.to(labels.device)).float()  # (L, B, T, C)
    own = loop_guided(x0, rows.guide_loop, rows.cfg_scale, loops)
    noise = (gaussians(generators, len(labels), _dit_shape(config), labels.device, rows.needs_noise)
             if rows.needs_noise.any() else None)
    return diffusion_step(rows, own, noise, config.schedule_shift), own, x0


def _dit_shape(config) -> tuple[int, int]:
    """(T, C) of one latent."""
    return config.latent_grid[0] * config.latent_grid[1] * config.latent_grid[2], config.latent_channels


def _dit_specs(config, tokenizer) -> dict[str, dict]:
    latent, hidden = _tensor(list(_dit_shape(config))), _tensor([config.seq_len, config.width])
    cond = _tensor([config.width])  # the adaLN conditioning (time and class), read by every layer and the head
    return {"embed": {"inputs": {"latents": latent, "t": _tensor([]), "labels": _tensor([], "int32")},
                      "outputs": {"hidden": hidden, "cond": cond}},
            "block": {"inputs": {"hidden": hidden, "cond": cond}, "outputs": {"hidden_out": hidden}},
            "head": {"inputs": {"hidden": hidden, "cond": cond}, "outputs": {"x0": latent}},
            "decoder": {"inputs": {"latents": latent}, "outputs": {"pixels": _pixels(tokenizer)}}}


def _dit_graphs(model: nn.Module, tokenizer: nn.Module) -> dict[str, tuple[Callable, tuple]]:
    """LoopedDiT.forward cut at its loop: the conditioning vector travels beside the hidden state."""
    c = model.config
    x = torch.randn((2, *_dit_shape(c)), generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([0.25, 0.75]), torch.tensor([0, c.null_class], dtype=torch.int32)

    def embed(x, t, labels):
        return model.patch_embed(model.patchify(x)) + model.pos_embed, model.condition(t, labels.long())

    def block(hidden, cond):
        for layer in model.layers:
            hidden = layer(hidden, cond)
        return hidden

    hidden, cond = (v.detach() for v in embed(x, t, labels))
    return {"embed": (embed, (x, t, labels)), "block": (block, (hidden, cond)),
            "head": (lambda hidden, cond: model.unpatchify(model.final(hidden, cond)).float(), (hidden, cond)),
            "decoder": (tokenizer.decode_latent, (x,))}


def _dit_facts(config) -> dict[str, Any]:
    return {"latent_shape": list(_dit_shape(config)), "latent_grid": list(config.latent_grid),
            "patch_size": config.patch_size, "schedule_shift": config.schedule_shift}


def _dit_mismatch(tok, model) -> str | None:
    if len(tok.levels) != model.latent_channels or tok.token_grid != model.latent_grid:
        return (f"latent {len(tok.levels)} channels, grid {tok.token_grid}) does not match the model "
                f"({model.latent_channels} channels, grid {model.latent_grid})")
    return None


FAMILIES: dict[str, Family] = {
    "maskgit": Family(
        "maskgit", LoopedTransformer,
        {"ilsd": obj.ilsd_objective, "vanilla": obj.vanilla_objective, "dense": obj.vanilla_objective},
        encode=lambda tokenizer, pixels: tokenizer.encode(pixels), decode=_maskgit_decode,
        data_shape=lambda c: (c.num_tokens,), data_dtype=torch.int32, tokenizer_mismatch=_maskgit_mismatch,
        model_fn=_maskgit_fn, discrete=True, sample=_maskgit_sample, loop_preview=_maskgit_loop_preview, flops=flops,
        rows_init=_maskgit_rows_init, rows_step=_maskgit_rows_step,
        page=PageExport("maskgit.js", _maskgit_specs, _maskgit_graphs, _maskgit_facts)),
    "diffusion": Family(
        "diffusion", LoopedDiT,
        {"ilsd": obj.diffusion_ilsd_objective, "vanilla": obj.diffusion_vanilla_objective,
         "dense": obj.diffusion_vanilla_objective},
        encode=lambda tokenizer, pixels: tokenizer.encode_latent(pixels),
        decode=lambda tokenizer, latents: tokenizer.decode_latent(latents),
        data_shape=_dit_shape,
        data_dtype=torch.float32, tokenizer_mismatch=_dit_mismatch, model_fn=_dit_fn, discrete=False,
        sample=_dit_sample,
        loop_preview=lambda config, loops, before: loops.cpu(),  # each loop's x0
        flops=dit_flops, rows_init=_dit_rows_init, rows_step=_dit_rows_step,
        page=PageExport("diffusion.js", _dit_specs, _dit_graphs, _dit_facts)),
}


def family_of(config: Any) -> Family:
    """The family of a generator model config (ModelConfig or DiTConfig)."""
    return FAMILIES[family_name(config)]


def loss_function(experiment) -> Callable:
    """The training loss of an experiment: its task's, or for a generator its family's objective for its mode."""
    if experiment.train.task != "generator":
        return obj.COMPONENT_LOSSES[experiment.train.task]
    return family_of(experiment.model).objectives[experiment.train.mode]
