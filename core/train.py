"""Training: tokenizer, metric classifier and looped generator (ILSD / vanilla / dense).

The loop is boring on purpose: data -> loss -> backward -> clip -> step -> EMA -> log -> checkpoint.
What differs between tasks and objectives is the loss function picked from LOSSES by config.

Randomness is a pure function of (seed, step): every step seeds its own generator, draws the global
batch's indices, masks and label dropout, and each data-parallel rank takes its slice.  So a resumed
run continues exactly, and N ranks see the same global batch as one process.

    python -m core.train --preset shapes-elt --out checkpoints/shapes-elt
    torchrun --nproc_per_node=2 -m core.train --preset shapes-elt --out runs/elt
    python -m core.train --init-from checkpoints/shapes-elt --dataset digits --steps 500 --out runs/digits
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core import checkpoint as ckpt
from core.cli import UsageError, run
from core.config import PRESETS, Experiment, TrainConfig, get_preset
from core.data import Dataset, get_dataset
from core.losses import (cosine_lr, ilsd_lambda, ilsd_loss, masked_ce, random_mask,
                         sample_student_loops)


@dataclass
class Step:
    """Everything a loss function may need for one step on this rank."""

    index: int
    total: int
    generator: torch.Generator  # seeded by (seed, step); identical on every rank
    global_batch: int
    shard: slice  # this rank's rows of the global batch
    pixels: torch.Tensor  # uint8 (b, [T,] H, W, 3) — this rank's rows
    labels: torch.Tensor  # (b,)
    tokens: torch.Tensor | None  # (b, T) generator task only


def _global_rand(step: Step, *shape: int) -> torch.Tensor:
    """Uniform noise drawn for the global batch, sliced to this rank's rows."""
    return torch.rand(step.global_batch, *shape, generator=step.generator)[step.shard]


# -- losses ----------------------------------------------------------------------------------------
def tokenizer_loss(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    x = model.module.to_input(step.pixels) if hasattr(model, "module") else model.to_input(step.pixels)
    recon, _ = model(x)
    recon = recon.float()
    mse = F.mse_loss(recon, x)
    return {"loss": mse + 0.1 * F.l1_loss(recon, x), "mse": mse}


def classifier_loss(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    logits = model(step.pixels).float()
    return {"loss": F.cross_entropy(logits, step.labels),
            "accuracy": (logits.argmax(-1) == step.labels).float().mean()}


def _masked_inputs(step: Step, cfg: TrainConfig, mask_id: int, null_class: int):
    tokens = step.tokens
    masked, mask = random_mask(tokens, mask_id, _global_rand(step), _global_rand(step, tokens.shape[1]))
    drop = _global_rand(step) < cfg.label_dropout  # classifier-free guidance training
    labels = torch.where(drop, null_class, step.labels)
    return masked, labels, mask


def ilsd_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """PAPER.md §3: one pass to L_max, student = the prefix at L_int, distilled to sg[teacher]."""
    mc = _config(model)
    masked, labels, mask = _masked_inputs(step, cfg, mc.mask_id, mc.null_class)
    student_loops = sample_student_loops(cfg.min_loops, mc.max_loops, step.generator)
    out = model(masked, labels, loops=mc.max_loops, return_loops=(student_loops, mc.max_loops), positions=mask)
    student, teacher = out.loop_logits
    lam = ilsd_lambda(step.index, step.total, cfg.lambda_schedule)
    terms = ilsd_loss(teacher, student, step.tokens, mask, lam)
    return {**terms, "lambda": torch.tensor(lam), "student_loops": torch.tensor(float(student_loops)),
            "masked_tokens": mask.sum()}


def vanilla_objective(model: nn.Module, step: Step, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Ground truth at L_max only (for `dense`, L_max = 1 over N·L unique layers)."""
    mc = _config(model)
    masked, labels, mask = _masked_inputs(step, cfg, mc.mask_id, mc.null_class)
    logits = model(masked, labels, positions=mask).logits  # the head runs on masked tokens only
    return {"loss": masked_ce(logits, step.tokens, mask), "masked_tokens": mask.sum()}


LOSSES: dict[str, Callable] = {"tokenizer": tokenizer_loss, "classifier": classifier_loss,
                               "ilsd": ilsd_objective, "vanilla": vanilla_objective,
                               "dense": vanilla_objective}


def _config(model: nn.Module):
    return (model.module if hasattr(model, "module") else model).config


# -- data ------------------------------------------------------------------------------------------
class TokenCache:
    """Tokens (and labels) of dataset items, encoded by the frozen tokenizer on first use, kept in
    memory; ``core.token_cache.DiskTokenCache`` is the same interface over a prebuilt file."""

    def __init__(self, tokenizer: nn.Module, dataset: Dataset, num_tokens: int, device: torch.device):
        self.tokenizer, self.dataset, self.device = tokenizer, dataset, device
        self.tokens = torch.full((len(dataset), num_tokens), -1, dtype=torch.int32)
        self.labels = torch.zeros(len(dataset), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (b,) -> tokens (b, T) int64, labels (b,) int64."""
        missing = indices[self.tokens[indices, 0] < 0].unique()
        if len(missing):
            pixels, labels = self.dataset.batch(missing.tolist())
            tokens = self.tokenizer.encode(torch.from_numpy(pixels).to(self.device))  # fp32: exact codes
            self.tokens[missing] = tokens.int().cpu()
            self.labels[missing] = torch.from_numpy(labels)
        return self.tokens[indices].long(), self.labels[indices]


def dataset_for(name: str, split: str, root: str | None, data_cfg, seed: int = 0) -> Dataset:
    """The dataset at the resolution (and clip length) of a tokenizer / classifier config."""
    frames = data_cfg.num_frames if data_cfg.is_video else 16
    return get_dataset(name, split, root=root, image_size=data_cfg.image_size, num_frames=frames, seed=seed)


# -- distributed -----------------------------------------------------------------------------------
def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world) — from torchrun's environment; NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def rank_share(masked_tokens: torch.Tensor | None, world: int) -> float:
    """This rank's weight in the global batch mean: its share of the masked tokens, else 1/world.

    Token losses are means over the shard's masked tokens, whose count differs between ranks, so
    plain averaging of shard means (what DDP does to gradients) is not the global mean.
    """
    if world == 1:
        return 1.0
    if masked_tokens is None:
        return 1.0 / world
    total = masked_tokens.detach().float().clone()
    dist.all_reduce(total)
    return float(masked_tokens) / float(total)


def global_terms(terms: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """The global batch's value of every logged term (all ranks must call this together)."""
    values = torch.stack([v.detach().float() for v in terms.values()]) * share
    dist.all_reduce(values)
    return dict(zip(terms, values))


def _logged_step(line: str) -> int | None:
    """The step of one train_log.jsonl line; None for a line cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def pick_device(name: str | None = None) -> torch.device:
    from core.runtime import select_device

    return select_device(name)


# -- fine-tuning -----------------------------------------------------------------------------------
INIT_FROM_RULE = ("weights, tokenizer, metric classifier and sampling defaults come from the checkpoint; "
                  "a dataset whose class list differs from the checkpoint's (names and order) gets a new, "
                  "freshly initialised class embedding sized to its classes, every other tensor is loaded and "
                  "must match in shape (L_max and the objective may change, widths and depths may not)")


def base_experiment(init_from: str | Path, out: str | Path) -> Experiment:
    """The experiment a fine-tune of the generator checkpoint `init_from` starts from (before overrides)."""
    meta = ckpt.read_config(init_from)
    experiment = Experiment.from_dict(meta["experiment"])
    if experiment.train.task != "generator":
        raise UsageError(f"--init-from {init_from} is a {experiment.train.task}; fine-tuning needs a generator")
    base = ckpt.Checkpoint(Path(init_from), experiment, meta, module=None)
    references = {key: os.path.relpath(base.reference(key)) if base.reference(key) else None  # as presets name them
                  for key in ("tokenizer", "classifier")}
    return replace(experiment, name=Path(out).name, description=f"fine-tuned from {Path(init_from).name}",
                   train=replace(experiment.train, **references))


def load_init_weights(model: nn.Module, init_from: str | Path, same_classes: bool) -> None:
    """Copy a checkpoint's weights into `model` (INIT_FROM_RULE); shapes that differ are one CheckpointError."""
    state = ckpt.read_tensors(Path(init_from) / "model.safetensors")
    if not same_classes:
        state["class_embed.weight"] = model.state_dict()["class_embed.weight"]  # a new class list: fresh rows
    ckpt.check_state(model, state, f"--init-from {init_from}")
    model.load_state_dict(state)


# -- the loop --------------------------------------------------------------------------------------
def train(experiment: Experiment, out: str | Path, *, resume: bool = True, device: str | None = None,
          max_steps: int | None = None, compile: bool = False, init_from: str | Path | None = None,
          token_cache: str | Path | None = None, rebuild_token_cache: bool = False,
          cache_workers: int | None = None) -> Path:
    """Train `experiment` into the checkpoint folder `out`; resumes from it unless resume=False.

    max_steps stops early (e.g. to test resumption) without changing the schedule's length.
    compile: torch.compile the generator's layers (a speed choice; the checkpoint is the same).
    init_from starts from a generator checkpoint's weights (INIT_FROM_RULE); a resumed run continues
    from its own checkpoint instead.
    token_cache (generators only) is a folder of the dataset's tokens, built once by rank 0 with
    `cache_workers` decoding processes and reused by later runs and the other ranks (core.token_cache).
    """
    out = Path(out)
    cfg = experiment.train
    dev = pick_device(device)
    rank, world = init_distributed(dev)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if cfg.batch_size % world:
        raise UsageError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")

    model_cfg = experiment.model
    tokenizer = None
    extra: dict = {}
    if cfg.task == "generator":
        if not cfg.tokenizer:
            raise UsageError("a generator needs --tokenizer DIR (a trained tokenizer checkpoint)")
        tok = ckpt.load(cfg.tokenizer, device=dev)
        tokenizer = tok.module
        data_cfg = tok.experiment.model
        if tokenizer.config.codebook_size != model_cfg.vocab_size or tokenizer.config.token_grid != model_cfg.token_grid:
            raise UsageError(f"tokenizer {cfg.tokenizer} (codebook {tokenizer.config.codebook_size}, grid "
                             f"{tokenizer.config.token_grid}) does not match the model (vocab "
                             f"{model_cfg.vocab_size}, grid {model_cfg.token_grid})")
        extra["tokenizer"] = ckpt.relative_reference(cfg.tokenizer, out)
        extra["classifier"] = ckpt.relative_reference(cfg.classifier, out) if cfg.classifier else None
    else:
        data_cfg = model_cfg
    dataset = dataset_for(cfg.dataset, "train", cfg.data_root, data_cfg, cfg.seed)
    if dataset.is_video != data_cfg.is_video:
        raise UsageError(f"dataset {cfg.dataset!r} holds {'clips' if dataset.is_video else 'images'} but the "
                         f"{'tokenizer' if tokenizer else 'model'} takes {'clips' if data_cfg.is_video else 'images'}")
    same_classes = True
    if init_from is not None:
        base_classes = ckpt.read_config(init_from)["class_names"]
        same_classes = list(base_classes) == list(dataset.class_names)
        if not same_classes:
            model_cfg = replace(model_cfg, num_classes=len(dataset.class_names))
            experiment = replace(experiment, model=model_cfg)
        extra["init_from"] = ckpt.relative_reference(init_from, out)
    num_classes = getattr(model_cfg, "num_classes", len(dataset.class_names))
    if cfg.task != "tokenizer" and num_classes != len(dataset.class_names):
        raise UsageError(f"the model has {num_classes} classes but dataset {cfg.dataset!r} has "
                         f"{len(dataset.class_names)}; set num_classes={len(dataset.class_names)}")
    extra["dataset"] = {"name": cfg.dataset, "root": cfg.data_root, "is_video": dataset.is_video,
                        "sample_shape": list(dataset.sample_shape)}

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = ckpt.build_module(experiment)
    if init_from is not None:
        load_init_weights(model, init_from, same_classes)
    model = model.to(dev)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)

    start = 0
    if (out / "config.json").exists():
        saved = Experiment.from_dict(ckpt.read_config(out)["experiment"])
        if resume and replace(saved, sampler=experiment.sampler) != experiment:  # sampling does not touch training
            raise UsageError(f"{out} holds a different experiment ({saved.name}); "
                             "pass --no-resume to start over there, or choose another --out")
    if resume and (out / "train_state.safetensors").exists():
        start = ckpt.load_train_state(out, model, optimizer, ema)
    if compile:
        if cfg.task != "generator":
            raise UsageError("--compile applies to generators (their looped layers) only")
        model.compile_layers()

    wrapped: nn.Module = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if token_cache is not None and tokenizer is None:
        raise UsageError("--token-cache only applies to generators (a tokenizer's codes are what it stores)")
    if token_cache is not None:
        from core.token_cache import open_cache

        cache = open_cache(token_cache, dataset, cfg.tokenizer, lambda px: tokenizer.encode(px.to(dev)),
                           num_tokens=model_cfg.num_tokens, vocab_size=model_cfg.vocab_size, rank=rank,
                           rebuild=rebuild_token_cache, workers=cache_workers, log=lambda msg: print(msg, flush=True))
    else:
        cache = TokenCache(tokenizer, dataset, model_cfg.num_tokens, dev) if tokenizer else None
    items = len(cache) if cache is not None else len(dataset)  # a disk cache leaves out unreadable files
    loss_fn = LOSSES[cfg.mode if cfg.task == "generator" else cfg.task]
    log_path = out / "train_log.jsonl"
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if log_path.exists():  # a fresh run starts a fresh log; a resumed one drops the steps after its checkpoint
            kept = [line for line in log_path.read_text().splitlines()
                    if start and (step := _logged_step(line)) is not None and step <= start]
            ckpt.write_bytes(log_path, "".join(line + "\n" for line in kept).encode())

    def save_checkpoint(step: int) -> None:
        if rank != 0:
            return
        ckpt.save_train_state(out, step, model, optimizer, ema)
        ckpt.save(out, experiment, model, class_names=list(dataset.class_names), ema=ema,
                  extra={**extra, "trained_steps": step})

    progress = tqdm(range(start, end), initial=start, total=end, desc=experiment.name, disable=rank != 0,
                    dynamic_ncols=True)
    model.train()
    for index in progress:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
        indices = torch.randint(items, (cfg.batch_size,), generator=g)
        shard = slice(rank, None, world)
        mine = indices[shard]
        if cache is not None:
            tokens, labels = cache.get(mine)
            pixels, tokens = None, tokens.to(dev)
        else:
            pixels_np, labels_np = dataset.batch(mine.tolist())
            pixels, labels, tokens = torch.from_numpy(pixels_np).to(dev), torch.from_numpy(labels_np), None
        step = Step(index, cfg.steps, g, cfg.batch_size, shard, pixels, labels.to(dev), tokens)

        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * cosine_lr(index, cfg.steps, cfg.warmup_steps)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            terms = loss_fn(wrapped, step, cfg)
        share = rank_share(terms.pop("masked_tokens", None), world)
        optimizer.zero_grad(set_to_none=True)
        (terms["loss"] * (share * world)).backward()  # DDP divides the summed gradients by world
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - cfg.ema_decay)

        done = index + 1
        if world > 1 and (done % cfg.log_every == 0 or done == end):  # log the global batch, not rank 0's rows
            terms = global_terms(terms, share)
        if rank == 0 and (done % cfg.log_every == 0 or done == end):
            record = {"step": done, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                      "step_s": time.perf_counter() - t0, **{k: float(v.detach()) for k, v in terms.items()}}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{record['loss']:.4f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            save_checkpoint(done)
    progress.close()
    if world > 1:
        dist.barrier()
    return out


# -- CLI -------------------------------------------------------------------------------------------
def _parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) for v in text.split(","))
    if current is None:
        return text
    return type(current)(text)


def apply_overrides(obj, pairs: list[str]):
    """dataclasses.replace from KEY=VALUE strings; unknown keys are errors."""
    names = {f.name: f for f in fields(obj)}
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in names:
            raise UsageError(f"unknown setting {pair!r} for {type(obj).__name__}; accepted keys: "
                             f"{', '.join(names)}")
        try:
            changes[key] = _parse_value(value, getattr(obj, key))
        except ValueError as error:
            raise UsageError(f"bad value for {key}: {error}") from None
    return replace(obj, **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a tokenizer, metric classifier or looped generator (ILSD / vanilla / dense). "
                    "Resumes from --out by default after an interruption.",
        epilog="presets: " + ", ".join(PRESETS))
    parser.add_argument("--preset", default=None, help="named experiment (see list below); required "
                                                          "unless --init-from is given")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT_DIR",
                        help="fine-tune a generator checkpoint: " + INIT_FROM_RULE + ". Its config is the "
                             "starting experiment; the other options override it")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (and resume from)")
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if --out has a run")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this step (schedule unchanged)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the generator's layers: same checkpoint, faster steps where a C++ "
                             "compiler is present (`python -m core.bench` measures the gain on this machine)")
    parser.add_argument("--token-cache", default=None, metavar="DIR",
                        help="generators: tokenize the dataset once into DIR (memory-mapped) and train from it; "
                             "reused by later runs and every DDP rank, refused if built from another tokenizer "
                             "or dataset")
    parser.add_argument("--rebuild-token-cache", action="store_true",
                        help="replace the cache files in --token-cache DIR instead of refusing")
    parser.add_argument("--cache-workers", type=int, default=None,
                        help="decoding processes when building the token cache (default: CPU count, at most 8)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override model config fields, e.g. --set width=64 num_layers=1")
    parser.add_argument("--sampler", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the sampling defaults the checkpoint carries (config.json 'sampler'), "
                             "e.g. --sampler steps=16 cfg_scale=3")
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f"train_{f.name}", default=None,
                            metavar=f.name.upper(), help=f"override train.{f.name}")
    return parser


def experiment_from_args(args: argparse.Namespace) -> Experiment:
    if args.init_from is not None:
        if args.preset is not None:
            raise UsageError("give --preset or --init-from, not both (--init-from takes the checkpoint's config)")
        experiment = base_experiment(args.init_from, args.out)
    elif args.preset is None:
        raise UsageError("give --preset NAME (a new run) or --init-from CHECKPOINT_DIR (a fine-tune)")
    else:
        experiment = get_preset(args.preset)
    pairs = [f"{f.name}={getattr(args, 'train_' + f.name)}" for f in fields(TrainConfig)
             if getattr(args, "train_" + f.name) is not None]
    train_cfg = apply_overrides(experiment.train, pairs)
    model_cfg = apply_overrides(experiment.model, args.set)
    sampler = apply_overrides(experiment.sampler, args.sampler)
    return replace(experiment, train=train_cfg, model=model_cfg, sampler=sampler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    experiment = experiment_from_args(args)
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError("--max-steps must be >= 1")
    if args.cache_workers is not None and args.cache_workers < 0:
        raise UsageError("--cache-workers must be >= 0")
    out = train(experiment, args.out, resume=not args.no_resume, device=args.device, max_steps=args.max_steps,
                compile=args.compile, init_from=args.init_from, token_cache=args.token_cache,
                rebuild_token_cache=args.rebuild_token_cache, cache_workers=args.cache_workers)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    run(main)
