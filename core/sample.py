"""Sampling CLI: one class, one loop count, one seed -> an image file (settings in a PNG text chunk).

    python -m core.sample --checkpoint checkpoints/shapes-elt --label star --loops 4 --seed 0 --out star.png
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from core import checkpoint as ckpt
from core.cli import UsageError, add_loop_arguments, check_positive, loop_setting, resolve_class, run
from core.media import gif_bytes, mp4_bytes, png_bytes, tile
from core.pipeline import Pipeline
from core.runtime import Runtime

IMAGE_SUFFIXES = (".png",)
VIDEO_SUFFIXES = (".mp4", ".gif")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.sample",
                                description="Generate samples of one class from a looped generator checkpoint.")
    p.add_argument("--checkpoint", required=True, help="generator checkpoint folder")
    p.add_argument("--label", required=True, help="class name (case-insensitive) or index")
    p.add_argument("--loops", type=int, default=None, help="loop count (default: the model's max_loops; more = extrapolation)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps: MaskGIT steps or diffusion solver steps (default: the checkpoint's)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance, 0 = off (default: the checkpoint's, its config.json 'sampler')")
    add_loop_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="samples in one batch (tiled side by side)")
    p.add_argument("--sampler", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other settings of the checkpoint family's sampler, e.g. method=ddpm (diffusion) or "
                        "choice_temperature=3 (MaskGIT)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    p.add_argument("--backend", default="torch", choices=["torch", "jax"],
                   help="runtime of the transformer (jax: TPU / GPU / CPU via JAX, same weights)")
    p.add_argument("--out", required=True, help="output file (.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps is not None:
        check_positive("steps", args.steps)
    check_positive("num-samples", args.num_samples)
    if args.loops is not None:
        check_positive("loops", args.loops)
    if args.seed < 0:
        raise UsageError(f"seed must be >= 0, got {args.seed}")
    if args.cfg_scale is not None and args.cfg_scale < 0:
        raise UsageError(f"cfg-scale must be >= 0, got {args.cfg_scale}")
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise UsageError(f"--out must end in .png (images) or .mp4 / .gif (clips), got {out.name!r}")
    if not out.parent.is_dir():
        raise UsageError(f"output folder {out.parent} does not exist")
    runtime = Runtime.create(args.device, args.precision)
    pipeline = Pipeline.load(args.checkpoint, runtime, backend=args.backend, precision=args.precision)
    suffix = out.suffix.lower()
    if pipeline.is_video != (suffix in VIDEO_SUFFIXES):
        kind = "a video" if pipeline.is_video else "an image"
        raise UsageError(f"{args.checkpoint} is {kind} checkpoint: use --out "
                         f"{'.mp4 or .gif' if pipeline.is_video else '.png'}, not {suffix}")
    label = resolve_class(pipeline.class_names, args.label)
    sampler = pipeline.sampler(args.steps, args.cfg_scale, args.sampler)
    setting = loop_setting(pipeline, sampler.steps, args.loops, args.loops_schedule, args.adaptive,
                           args.exit_min_loops, args.exit_cap)
    loops, used = setting.loops, []
    pixels = pipeline.generate([label] * args.num_samples, setting, sampler, args.seed, loops_used=used)
    settings = {"checkpoint": pipeline.generator.path.name, "class": pipeline.class_names[label],
                "label": label, "seed": args.seed, "loops": loops, **asdict(sampler), "num_samples": args.num_samples,
                "precision": pipeline.runtime.precision, "backend": args.backend}
    if not setting.fixed:
        settings.update(loops_schedule=list(setting.schedule) if setting.schedule else None,
                        adaptive=setting.exit.name if setting.exit else None,
                        loops_used=[list(step) for step in zip(*used)])  # per sample: loops at each step
        print(f"loops used per step (sample 0): {[step[0] for step in used]}, total {sum(s[0] for s in used)}")
    grid = tile(pixels, pad=0) if len(pixels) > 1 else pixels[0]
    encode = {".png": png_bytes, ".mp4": mp4_bytes, ".gif": gif_bytes}[suffix]
    ckpt.write_bytes(out, encode(grid, settings=settings))
    print(f"wrote {out} ({pipeline.class_names[label]}, loops={loops}, steps={sampler.steps}, "
          f"guidance={sampler.cfg_scale:g}, seed={args.seed})")
    return 0


if __name__ == "__main__":
    run(main)
