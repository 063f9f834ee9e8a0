"""Per-loop evaluation of a generator checkpoint, and its CLI.

    python -m core.evaluate --checkpoint checkpoints/shapes-elt --loops 1 2 3 4 5 6 --samples 500 --seed 0

For every loop count: GFLOPs per sample, ms per sample, class accuracy of the samples (by the
project's metric classifier) and a Fréchet distance in that classifier's feature space against
held-out real test images.  Labels cycle through the classes; the same seed is used at every L so
the loop count is the only thing that changes.  For clips of a dataset with a per-frame shape classifier
(`moving-shapes-frame-classifier`), also the shape consistency of the clips (core.metrics.shape_consistency), of
as many real test clips and of those clips through the tokenizer and back: the most a generator can reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from core import checkpoint as ckpt
from core.cli import UsageError, add_loop_arguments, check_positive, loop_setting, run
from core.data import dataset_for
from core.metrics import (ClassifierFeatures, FeatureExtractor, TorchScriptFeatures, batched_features,
                          class_accuracy, frame_predictions, frechet_distance, lowest_classes, per_class_accuracy,
                          shape_consistency)
from core.media import gif_bytes, png_bytes, tile
from core.pipeline import Pipeline
from core.runtime import Runtime
from core.sampling import LoopSetting, SamplerConfig
from core.tokenizer import psnr


def reference_dataset(pipeline: Pipeline, split: str = "test"):
    meta = pipeline.generator.meta["dataset"]
    return dataset_for(meta["name"], split, meta.get("root"), pipeline.tokenizer.experiment.model)


def reference_set(pipeline: Pipeline, samples: int, count: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The real test images (or clips) generated samples are scored against, on the runtime's device, and their
    labels: `count` of them, by default as many as the samples and at least 1,000 (as many as there are)."""
    dataset = reference_dataset(pipeline)
    real, labels = dataset.batch(range(min(count or max(samples, 1000), len(dataset))))
    return torch.from_numpy(real).to(pipeline.runtime.device), labels


def load_classifier(pipeline: Pipeline, path: str | Path | None = None) -> ckpt.Checkpoint:
    path = path or pipeline.generator.reference("classifier")
    if path is None:
        raise UsageError("no metric classifier: the checkpoint names none; pass --classifier DIR")
    return ckpt.load(path, device=pipeline.runtime.device)


def frame_classifier_path(dataset: str, beside: str | Path | None = None) -> Path | None:
    """The per-frame shape classifier of a video dataset, the folder `<dataset>-frame-classifier`: beside the
    folder `beside` (a generator's video classifier, a tokenizer), else in ./checkpoints; None where there is none."""
    name = f"{dataset}-frame-classifier"
    for folder in ([Path(beside).parent] if beside else []) + [Path("checkpoints")]:
        if (folder / name / "config.json").is_file():
            return folder / name
    return None


def load_frame_classifier(dataset: str, is_video: bool, path: str | Path | None, beside: str | Path | None,
                          device: torch.device | str = "cpu") -> ckpt.Checkpoint | None:
    """The frame classifier given (`path`) or found (frame_classifier_path) for a checkpoint of clips; None for
    images, or for clips of a dataset that has none."""
    if path is not None and not is_video:
        raise UsageError("--frame-classifier scores the frames of clips; this checkpoint works on images")
    path = path or (frame_classifier_path(dataset, beside) if is_video else None)
    if path is None:
        return None
    checkpoint = ckpt.load(path, device=device)
    if checkpoint.experiment.train.task != "classifier" or checkpoint.experiment.model.is_video:
        raise UsageError(f"{path} is not a per-frame (2-D) classifier; --frame-classifier needs one")
    return checkpoint


@torch.no_grad()
def round_trip(tokenizer, clips: torch.Tensor, batch_size: int = 100) -> tuple[torch.Tensor, float]:
    """Clips through a tokenizer module and back: (reconstructions, PSNR in dB averaged over frames)."""
    recon = torch.cat([tokenizer.decode(tokenizer.encode(clips[i:i + batch_size]))
                       for i in range(0, len(clips), batch_size)])
    return recon, psnr(recon.flatten(0, 1), clips.flatten(0, 1))


def consistency(frame_classifier: ckpt.Checkpoint, clips: torch.Tensor) -> float:
    """Mean shape consistency of uint8 clips (B, T, H, W, 3)."""
    return float(shape_consistency(frame_predictions(frame_classifier.module, clips)).mean())


def real_consistency(pipeline: Pipeline, frame_classifier: ckpt.Checkpoint, real: torch.Tensor,
                     batch_size: int = 100) -> dict[str, Any]:
    """Shape consistency of real clips and of the same clips through the pipeline's tokenizer and back, the
    round trip's PSNR, and the share of the real frames whose shape the classifier recognises."""
    predicted = frame_predictions(frame_classifier.module, real)
    recon, db = round_trip(pipeline.tokenizer.module, real, batch_size)
    report = {"consistency_count": len(real), "consistency": round(float(shape_consistency(predicted).mean()), 4),
              "round_trip_consistency": round(consistency(frame_classifier, recon), 4),
              "round_trip_psnr_db": round(db, 3)}
    shapes = getattr(reference_dataset(pipeline), "shapes", None)
    if shapes is not None:
        truth = torch.from_numpy(shapes(range(len(real)))).to(predicted.device)
        report["frame_accuracy"] = round(float((predicted == truth[:, None]).float().mean()), 4)
    return report


def generate_samples(pipeline: Pipeline, loops: int | LoopSetting, samples: int, seed: int, sampler: SamplerConfig,
                     batch_size: int = 100, on_batch: Callable[[int], None] | None = None,
                     loops_used: list | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The evaluation's samples at one loop count (or loop setting): sample i has class i % classes, and
    the batch starting at i uses seed + i, so two pipelines given the same arguments draw paired samples.
    loops_used, if given, receives a (samples, steps) array of the loops each sample ran at each step.
    Returns (pixels on the runtime's device, labels (N,), seconds spent generating)."""
    labels = [i % len(pipeline.class_names) for i in range(samples)]
    pixels, elapsed, used = [], 0.0, []
    for start in range(0, samples, batch_size):
        batch, per_step = labels[start:start + batch_size], []
        t0 = time.perf_counter()
        pixels.append(pipeline.generate(batch, loops, sampler, seed + start, loops_used=per_step))
        pipeline.runtime.synchronize()
        elapsed += time.perf_counter() - t0
        used.append(np.asarray(per_step).T)  # (batch, steps)
        if on_batch:
            on_batch(start + len(batch))
    if loops_used is not None:
        loops_used.append(np.concatenate(used))
    return torch.from_numpy(np.concatenate(pixels)).to(pipeline.runtime.device), torch.tensor(labels), elapsed


def setting_row(pipeline: Pipeline, setting: LoopSetting, sampler: SamplerConfig, used: np.ndarray) -> dict[str, Any]:
    """What a loop setting is and what it spent: used (samples, steps) loops per sample and step."""
    per_step = used.mean(0)
    row: dict[str, Any] = {"setting": setting.name, "loop_applications": round(float(used.sum(1).mean()), 3),
                           "loops_per_step": [round(float(v), 3) for v in per_step],
                           "gflops": round(pipeline.gflops_of_run(per_step, sampler, setting.exit is not None), 4)}
    if setting.schedule is not None:
        row["schedule"] = list(setting.schedule)
    if setting.exit is not None:
        row.update(adaptive=setting.exit.name, exit_min_loops=setting.exit.min_loops, exit_cap=setting.loops,
                   loop_applications_p90=round(float(np.percentile(used.sum(1), 90)), 3))
    return row


def evaluate(pipeline: Pipeline, loops: Sequence[int], *, samples: int, seed: int, sampler: SamplerConfig,
             classifier: ckpt.Checkpoint, extractor: FeatureExtractor | None = None, batch_size: int = 100,
             reference_count: int | None = None, settings: Sequence[LoopSetting] = (),
             progress: Callable[[int, int, str], None] | None = None,
             frame_classifier: ckpt.Checkpoint | None = None) -> dict[str, Any]:
    """Evaluate at each loop count (`rows`) and each loop setting (`adaptive_rows`: schedules, adaptive
    exit) on the same samples and seeds; every row says its loop applications per sample.  With a frame
    classifier (clips only), every row and the reference also get a shape consistency (real_consistency on
    the first `samples` reference clips).  Returns the metrics.json document."""
    for value in loops:
        check_positive("loops", value)
    check_positive("samples", samples)
    extractor = extractor or ClassifierFeatures(classifier.module, pipeline.generator.meta["dataset"]["name"])
    real_t, real_labels = reference_set(pipeline, samples, reference_count)
    reference_count = len(real_t)
    real_features = batched_features(extractor, real_t).cpu().numpy()
    real_accuracy = class_accuracy(classifier.module.predict(real_t).cpu(), torch.from_numpy(real_labels))
    floor, floor_count = fd_floor(pipeline, extractor, real_features, samples)
    reference = {"split": "test", "count": reference_count, "accuracy": round(real_accuracy, 4),
                 "fd_floor": round(floor, 3), "fd_floor_train_count": floor_count}
    if frame_classifier is not None:
        reference.update(real_consistency(pipeline, frame_classifier, real_t[:samples], batch_size))

    rows, adaptive_rows = [], []
    runs = [LoopSetting(L) for L in loops] + list(settings)
    total = len(runs) * samples
    for li, setting in enumerate(runs):
        what = f"loops={setting.loops}" if setting.fixed else setting.name
        on_batch = (lambda done, li=li, what=what: progress(li * samples + done, total, what)) if progress else None
        used: list[np.ndarray] = []
        gen, labels, elapsed = generate_samples(pipeline, setting, samples, seed, sampler, batch_size, on_batch,
                                                used)
        predicted = classifier.module.predict(gen).cpu()
        fd = frechet_distance(batched_features(extractor, gen).cpu().numpy(), real_features)
        quality = {"ms_per_sample": round(1000 * elapsed / samples, 3),
                   "accuracy": round(class_accuracy(predicted, labels), 4), "fd": round(fd, 3),
                   "class_accuracy": per_class_accuracy(predicted, labels, len(pipeline.class_names))}
        if frame_classifier is not None:
            quality["consistency"] = round(consistency(frame_classifier, gen), 4)
        if setting.fixed:
            rows.append({"loops": setting.loops, "gflops": round(pipeline.gflops_per_sample(setting.loops, sampler), 4),
                         "loop_applications": setting.loops * sampler.steps, **quality})
        else:
            adaptive_rows.append({**setting_row(pipeline, setting, sampler, used[0]), **quality})
    model = pipeline.generator
    extra = {"adaptive_rows": adaptive_rows} if adaptive_rows else {}
    return {
        "checkpoint": model.path.name, "fd_name": extractor.name, "samples": samples, "seed": seed,
        "sampler": asdict(sampler), "precision": pipeline.runtime.precision,
        "device": str(pipeline.runtime.device), "max_loops": pipeline.config.max_loops,
        "num_params": model.module.num_params(), "trained_steps": model.meta.get("trained_steps"),
        "min_loops": model.experiment.train.min_loops,
        "reference": reference,
        "class_names": list(pipeline.class_names), "rows": rows, **extra,
    }


def fd_floor(pipeline: Pipeline, extractor: FeatureExtractor, real_features: np.ndarray,
             samples: int) -> tuple[float, int]:
    """The FD a perfect generator would get: as many *training* images as generated samples (spread
    evenly over the train split) against the held-out reference features.  Returns (fd, count)."""
    train = reference_dataset(pipeline, "train")
    count = min(samples, len(train))
    pixels, _ = train.batch(np.linspace(0, len(train) - 1, count).round().astype(int))
    features = batched_features(extractor, torch.from_numpy(pixels).to(pipeline.runtime.device)).cpu().numpy()
    return frechet_distance(features, real_features), count


def format_table(report: dict[str, Any]) -> str:
    """One row per loop count; then, per loop count, the three classes with the lowest accuracy; then
    the loop settings (schedules, adaptive exit) against loop applications per sample."""
    ref = report.get("reference", {})
    shape = "consistency" in ref  # clips scored frame by frame: a consistency column before the FD
    column = lambda row: f" {row['consistency']:>11.3f}" if shape else ""  # noqa: E731
    head = (f"{'loops':>5} {'GFLOPs/sample':>13} {'ms/sample':>10} {'accuracy':>9}"
            + (f" {'consistency':>11}" if shape else "") + f" {report['fd_name']:>16}")
    lines = [head] + [f"{r['loops']:>5} {r['gflops']:>13.3f} {r['ms_per_sample']:>10.2f} {r['accuracy']:>9.3f}"
                      f"{column(r)} {r['fd']:>16.3f}" for r in report["rows"]]
    if "fd_floor" in ref:  # the real held-out images as if generated: the best a generator can score
        lines.append(f"{'real':>5} {'':>13} {'':>10} {ref['accuracy']:>9.3f}{column(ref)} {ref['fd_floor']:>16.3f}")
    if shape:
        lines.append(f"shape consistency of {ref['consistency_count']} real test clips {ref['consistency']:.3f} "
                     f"(frames recognised {ref.get('frame_accuracy', float('nan')):.3f}); through the tokenizer and "
                     f"back {ref['round_trip_consistency']:.3f} at {ref['round_trip_psnr_db']:.2f} dB PSNR")
    lines += [f"lowest class accuracy at L = {r['loops']}: {lowest_classes(report, r)}" for r in report["rows"]]
    if report.get("adaptive_rows"):
        lines.append(f"{'loop applications/sample':>24} {'accuracy':>9} {report['fd_name']:>13} {'ms/sample':>10}  "
                     "setting")
        rows = [(r["loop_applications"], r["accuracy"], r["fd"], r["ms_per_sample"], f"L={r['loops']}")
                for r in report["rows"]]
        rows += [(r["loop_applications"], r["accuracy"], r["fd"], r["ms_per_sample"], r["setting"])
                 for r in report["adaptive_rows"]]
        lines += [f"{a:>24.1f} {acc:>9.3f} {fd:>13.3f} {ms:>10.2f}  {name}" for a, acc, fd, ms, name in sorted(rows)]
    return "\n".join(lines)


def _labelled(grid: np.ndarray, columns: Sequence[str], rows: Sequence[str], cell_h: int, cell_w: int) -> np.ndarray:
    """A white margin with column titles on top and row names on the left of one grid image."""
    left, top = 90, 18
    canvas = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(columns):
        draw.text((left + j * cell_w + 4, 3), title, fill="black")
    for i, name in enumerate(rows):
        draw.text((3, top + i * cell_h + cell_h // 2 - 6), name[:14], fill="black")
    return np.asarray(canvas)


def sample_grid(pipeline: Pipeline, loops: Sequence[int], sampler: SamplerConfig, seed: int,
                scale: int = 2) -> np.ndarray:
    """Rows = classes, columns = loop counts, same seed everywhere, labelled.

    uint8 (H, W, 3) for images; (T, H, W, 3) frames of one animated grid for clips.
    """
    names = pipeline.class_names
    columns = [pipeline.generate(list(range(len(names))), L, sampler, seed) for L in loops]  # every class at once
    images = np.stack(columns, axis=1).reshape(-1, *columns[0].shape[1:])  # (classes·loops, [T,] H, W, 3)
    images = images.repeat(scale, -3).repeat(scale, -2)
    grid = tile(images, columns=len(loops))
    max_loops = pipeline.config.max_loops
    titles = [f"L={L}" + ("*" if L > max_loops else "") for L in loops]
    cell = (images.shape[-3] + 2, images.shape[-2] + 2)
    frames = [_labelled(frame, titles, names, *cell) for frame in (grid if pipeline.is_video else grid[None])]
    return np.stack(frames) if pipeline.is_video else frames[0]


def contact_sheet(pipeline: Pipeline, loops: int, sampler: SamplerConfig, seed: int, scale: int = 2) -> np.ndarray:
    """One generated clip per class laid out as frames: rows = classes, columns = time (uint8 (H, W, 3))."""
    names = pipeline.class_names
    clips = pipeline.generate(list(range(len(names))), loops, sampler, seed)  # (classes, T, H, W, 3)
    frames = clips.reshape(-1, *clips.shape[2:]).repeat(scale, -3).repeat(scale, -2)
    sheet = tile(frames, columns=clips.shape[1])
    return _labelled(sheet, [f"t={t}" for t in range(clips.shape[1])], names, frames.shape[-3] + 2,
                     frames.shape[-2] + 2)


@torch.no_grad()
def evaluate_component(checkpoint: ckpt.Checkpoint, samples: int, batch_size: int = 250,
                       frame_classifier: ckpt.Checkpoint | None = None) -> dict[str, Any]:
    """Tokenizer: reconstruction PSNR (per frame for clips) and codebook usage, and with a frame classifier the
    shape consistency of the real clips and of their reconstructions; classifier: accuracy.

    Measured on the first `samples` items of the held-out test split.
    """
    task, meta = checkpoint.experiment.train.task, checkpoint.meta["dataset"]
    dataset = dataset_for(meta["name"], "test", meta.get("root"), checkpoint.experiment.model)
    count = min(samples, len(dataset))
    module = checkpoint.module
    psnrs, correct, codes, kept = [], 0, set(), {"consistency": [], "round_trip_consistency": []}
    for start in range(0, count, batch_size):
        pixels_np, labels = dataset.batch(range(start, min(start + batch_size, count)))
        pixels = torch.from_numpy(pixels_np)
        if task == "tokenizer":
            tokens = module.encode(pixels)
            codes.update(tokens.unique().tolist())
            recon = module.decode(tokens)
            frames = pixels.flatten(0, 1) if pixels.dim() == 5 else pixels  # PSNR per frame for clips
            psnrs.append(psnr(recon.flatten(0, 1) if recon.dim() == 5 else recon, frames) * len(pixels_np))
            if frame_classifier is not None:
                kept["consistency"].append(consistency(frame_classifier, pixels) * len(pixels_np))
                kept["round_trip_consistency"].append(consistency(frame_classifier, recon) * len(pixels_np))
        else:
            correct += int((module.predict(pixels) == torch.from_numpy(labels)).sum())
    report = {"checkpoint": checkpoint.path.name, "task": task, "split": "test", "samples": count}
    if task == "tokenizer":
        report.update(psnr_db=round(sum(psnrs) / count, 3), codebook_size=module.config.codebook_size,
                      codes_used=len(codes))
        if frame_classifier is not None:
            report.update({key: round(sum(values) / count, 4) for key, values in kept.items()})
    else:
        report.update(accuracy=round(correct / count, 4))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.evaluate",
                                description="Evaluate a generator checkpoint at several loop counts: GFLOPs, "
                                            "ms per sample, class accuracy and a classifier-feature FD.")
    p.add_argument("--checkpoint", required=True,
                   help="generator checkpoint folder (a tokenizer or classifier folder gets PSNR / accuracy)")
    p.add_argument("--loops", type=int, nargs="+", default=None,
                   help="loop counts to evaluate (default: 1 … max_loops + 2)")
    p.add_argument("--samples", type=int, default=500, help="samples per loop count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps: MaskGIT steps or diffusion solver steps (default: the checkpoint's)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="guidance scale, 0 = off (default: the checkpoint's, its config.json 'sampler')")
    add_loop_arguments(p, many=True)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--sampler", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other settings of the checkpoint family's sampler, e.g. method=ddpm (diffusion) or "
                        "choice_temperature=3 (MaskGIT)")
    p.add_argument("--reference-count", type=int, default=None, metavar="N",
                   help="real test images (clips) the FD compares with (default: max(samples, 1000))")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    p.add_argument("--weights", default="model", choices=["model", "ema"])
    p.add_argument("--backend", default="torch", choices=["torch", "jax"],
                   help="runtime of the transformer (jax: TPU / GPU / CPU via JAX, same weights)")
    p.add_argument("--classifier", default=None, help="metric classifier folder (default: the one the checkpoint names)")
    p.add_argument("--frame-classifier", default=None, metavar="DIR",
                   help="per-frame shape classifier for the shape consistency of clips (default: "
                        "<dataset>-frame-classifier beside the video classifier or tokenizer, else in ./checkpoints)")
    p.add_argument("--feature-extractor", default=None, metavar="FILE.pt",
                   help="TorchScript feature extractor (e.g. Inception pool3 for true FID) instead of the classifier's")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--write-metrics", action="store_true",
                   help="store the report in the checkpoint's metrics.json (replacing it); with --steps other than "
                        "the checkpoint's, add its rows to metrics.json's rows_at_steps instead (the latency-budget "
                        "planner's measured runs at fewer steps)")
    p.add_argument("--grid", default=None, metavar="FILE.png",
                   help="also write a classes × loops sample grid (.png); for video an animated .gif, or with .png "
                        "a contact sheet of one clip per class at max_loops (columns = frames)")
    return p


def loop_settings(pipeline: Pipeline, sampler: SamplerConfig, args: argparse.Namespace) -> list[LoopSetting]:
    """Every --loops-schedule, and every --adaptive (capped at --exit-cap, default L_max)."""
    schedules = [loop_setting(pipeline, sampler.steps, schedule=text) for text in args.loops_schedule or ()]
    adaptive = [loop_setting(pipeline, sampler.steps, adaptive=text, min_loops=args.exit_min_loops,
                             cap=args.exit_cap) for text in args.adaptive or ()]
    return schedules + adaptive


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("samples", "steps", "batch_size", "reference_count"):
        if getattr(args, name) is not None:
            check_positive(name.replace("_", "-"), getattr(args, name))
    if args.cfg_scale is not None and args.cfg_scale < 0:
        raise UsageError(f"cfg-scale must be >= 0, got {args.cfg_scale}")
    if args.seed < 0:
        raise UsageError(f"seed must be >= 0, got {args.seed}")
    task = ckpt.read_config(args.checkpoint)["experiment"]["train"]["task"]
    if task != "generator":  # tokenizer / classifier: one summary line (fp32, CPU)
        component, frame_classifier = ckpt.load(args.checkpoint), None
        if task == "tokenizer":
            frame_classifier = load_frame_classifier(component.meta["dataset"]["name"],
                                                     component.experiment.model.is_video, args.frame_classifier,
                                                     args.checkpoint)
        elif args.frame_classifier:
            raise UsageError("--frame-classifier applies to generators and video tokenizers")
        report = evaluate_component(component, args.samples, frame_classifier=frame_classifier)
        print(json.dumps(report))
        if args.write_metrics:
            ckpt.write_json(Path(args.checkpoint) / "metrics.json", report)
        return 0
    runtime = Runtime.create(args.device, args.precision)
    pipeline = Pipeline.load(args.checkpoint, runtime, weights=args.weights, backend=args.backend,
                             precision=args.precision)
    loops = args.loops or list(range(1, pipeline.config.max_loops + 3))
    for value in loops:
        check_positive("loops", value)
    sampler = pipeline.sampler(args.steps, args.cfg_scale, args.sampler)
    settings = loop_settings(pipeline, sampler, args)
    own = pipeline.sampler()
    at_other_steps = args.write_metrics and sampler.steps != own.steps
    metrics_file = Path(args.checkpoint) / "metrics.json"
    if at_other_steps and (replace(sampler, steps=own.steps) != own or settings or not metrics_file.is_file()):
        raise UsageError(f"--write-metrics at {sampler.steps} steps adds fixed-L rows to an existing metrics.json, "
                         "at the checkpoint's other sampler settings: evaluate at its own steps first, and give no "
                         "--cfg-scale / --sampler / loop schedule / adaptive setting")
    classifier = load_classifier(pipeline, args.classifier)
    frame_classifier = load_frame_classifier(pipeline.generator.meta["dataset"]["name"], pipeline.is_video,
                                             args.frame_classifier, classifier.path, pipeline.runtime.device)
    extractor = TorchScriptFeatures(args.feature_extractor) if args.feature_extractor else None
    print(f"evaluating {args.checkpoint}: loops {loops} + {len(settings)} loop settings, {args.samples} samples "
          f"per loop, seed {args.seed}, "
          f"steps {sampler.steps}, cfg {sampler.cfg_scale}, {runtime.precision} on {runtime.device}", file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=(len(loops) + len(settings)) * args.samples, unit="sample", dynamic_ncols=True)
    report = evaluate(pipeline, loops, samples=args.samples, seed=args.seed, sampler=sampler,
                      classifier=classifier, extractor=extractor, batch_size=args.batch_size, settings=settings,
                      reference_count=args.reference_count, frame_classifier=frame_classifier,
                      progress=lambda done, total, what: (bar.update(done - bar.n), bar.set_postfix_str(what)))
    bar.close()
    report["backend"] = args.backend
    print(f"# {report['checkpoint']}: {report['num_params']:,} params, seed {args.seed}, {args.samples} samples/loop, "
          f"reference: {report['reference']['count']} real test {'clips' if pipeline.is_video else 'images'} "
          f"(classifier accuracy {report['reference']['accuracy']:.3f}); FD floor "
          f"{report['reference']['fd_floor']:.3f} ({report['reference']['fd_floor_train_count']} real train "
          f"vs those test)")
    print(format_table(report))
    if args.json:
        ckpt.write_json(args.json, report)
    if at_other_steps:
        metrics = json.loads(metrics_file.read_text())
        metrics.setdefault("rows_at_steps", {})[str(sampler.steps)] = report["rows"]
        ckpt.write_json(metrics_file, metrics)
    elif args.write_metrics:
        ckpt.write_json(metrics_file, report)
    if args.grid and pipeline.is_video and not args.grid.lower().endswith(".gif"):
        ckpt.write_bytes(args.grid, png_bytes(contact_sheet(pipeline, pipeline.config.max_loops, sampler, args.seed)))
    elif args.grid:
        grid = sample_grid(pipeline, loops, sampler, args.seed)
        ckpt.write_bytes(args.grid, (gif_bytes if grid.ndim == 4 else png_bytes)(grid))
    return 0


if __name__ == "__main__":
    run(main)
