"""Generator ILSD training-step time for the moving-shapes levers (issue 33), all variants interleaved in one
process; docs/EXPERIMENTS.md, "Video step cost".

    python scripts/video_step/stepbench.py eager --rounds 4 --threads 1     # tokens, vocabulary, batch
    python scripts/video_step/stepbench.py wall --threads 2                 # 3-way 2-thread wall comparison
    python scripts/video_step/stepbench.py frames --rounds 3 --threads 1    # per-frame token grids (issue 44)

The step mirrors core.train's: ILSD objective, backward, grad clip 1.0, AdamW with the trainer's decay groups,
fp32 (no autocast), random tokens.  The phases eager / compile / vocab / confirm / vanilla time each variant
as process CPU time (min of --rounds after a warm-up round) and report MFU against a best-of-12 fp32
1024^3 GEMM; `wall` (formerly quick2.py) interleaves today's 4x8x8 / 1,000 codes, 2x8x8 / 4,375 codes and
2x8x8 / 1,000 codes at batch 32 and reports wall time only.  Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.config import get_preset  # noqa: E402
from core.family import family_of  # noqa: E402
from core.model import LoopedTransformer, flops  # noqa: E402
from core.objectives import Step  # noqa: E402

EXP = get_preset("moving-shapes-elt")
BASE = EXP.model
TCFG = EXP.train
PHASES = ("eager", "compile", "vocab", "confirm", "vanilla", "wall", "frames")


def setup(threads: int) -> None:
    """Thread count for the whole process, and the header every log starts with."""
    torch.set_num_threads(threads)
    print("threads", threads, "timing: process CPU time")
    print("base", BASE, "min_loops", TCFG.min_loops, flush=True)


def make_step(config, batch, compiled=False, mode="ilsd"):
    """(model, step): one call of step() is one optimizer step of core.train's generator loop."""
    family = family_of(config)
    torch.manual_seed(0)
    model = family.module(config).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TCFG.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, betas=TCFG.betas)
    if compiled:
        model.compile_layers()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (batch, config.num_tokens), generator=g)
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)
    counter = itertools.count()
    objective = family.objectives[mode]

    def step():
        i = next(counter)
        s = Step(3000, 7000, torch.Generator().manual_seed(1000 + i), batch, slice(0, None, 1), None, labels, tokens)
        terms = objective(model, s, TCFG)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return model, step


def cfg(grid, vocab):
    return replace(BASE, token_grid=grid, vocab_size=vocab)


def model_flops(config, batch):
    return 3 * flops(config, batch=batch)  # core.bench's convention: fwd+bwd ≈ 3 × forward at L_max


def variants(phase: str) -> dict:
    """name -> (config, batch[, compiled[, mode]]) of one phase."""
    if phase == "eager":
        return {
            "A 4x8x8 V1000 b32": (cfg((4, 8, 8), 1000), 32),
            "B 2x8x8 V1000 b32": (cfg((2, 8, 8), 1000), 32),
            "C 2x8x8 V4096 b32": (cfg((2, 8, 8), 4096), 32),
            "D 2x8x8 V8000 b32": (cfg((2, 8, 8), 8000), 32),
            "E 2x8x8 V12800 b32": (cfg((2, 8, 8), 12800), 32),
            "A 4x8x8 V1000 b16": (cfg((4, 8, 8), 1000), 16),
            "B 2x8x8 V1000 b16": (cfg((2, 8, 8), 1000), 16),
        }
    if phase == "compile":
        return {
            "A eager b32": (cfg((4, 8, 8), 1000), 32, False),
            "A compiled b32": (cfg((4, 8, 8), 1000), 32, True),
            "C eager b32": (cfg((2, 8, 8), 4096), 32, False),
            "C compiled b32": (cfg((2, 8, 8), 4096), 32, True),
        }
    if phase == "vocab":
        return {
            "A 4x8x8 V1000 b32": (cfg((4, 8, 8), 1000), 32),
            "B 2x8x8 V1000 b32": (cfg((2, 8, 8), 1000), 32),
            "F 2x8x8 V4375 b32": (cfg((2, 8, 8), 4375), 32),
            "F 2x8x8 V4375 b16": (cfg((2, 8, 8), 4375), 16),
            "A 4x8x8 V1000 b32 vanilla": (cfg((4, 8, 8), 1000), 32, False, "vanilla"),
            "F 2x8x8 V4375 b32 vanilla": (cfg((2, 8, 8), 4375), 32, False, "vanilla"),
        }
    if phase == "confirm":
        return {
            "A 4x8x8 V1000 b32": (cfg((4, 8, 8), 1000), 32),
            "F 2x8x8 V4375 b32": (cfg((2, 8, 8), 4375), 32),
            "F 2x8x8 V4375 b32 compiled": (cfg((2, 8, 8), 4375), 32, True),
            "A 4x8x8 V1000 b16": (cfg((4, 8, 8), 1000), 16),
        }
    if phase == "vanilla":
        return {
            "A ilsd b32": (cfg((4, 8, 8), 1000), 32, False, "ilsd"),
            "A vanilla b32": (cfg((4, 8, 8), 1000), 32, False, "vanilla"),
            "D ilsd b32": (cfg((2, 8, 8), 8000), 32, False, "ilsd"),
            "D vanilla b32": (cfg((2, 8, 8), 8000), 32, False, "vanilla"),
        }
    if phase == "wall":
        return {
            "A 4x8x8 V1000 b32": (cfg((4, 8, 8), 1000), 32),
            "F 2x8x8 V4375 b32": (cfg((2, 8, 8), 4375), 32),
            "B 2x8x8 V1000 b32": (cfg((2, 8, 8), 1000), 32),
        }
    if phase == "frames":  # issue 44: per-frame 2-D tokenizers against today's 4 frames per token, batch 16
        return {
            "F 2x8x8 V4375 b16 (today)": (cfg((2, 8, 8), 4375), 16),
            "G 8x4x4 V4375 b16 (2-D, stride 8)": (cfg((8, 4, 4), 4375), 16),
            "H 8x8x8 V1000 b16 (2-D, stride 4)": (cfg((8, 8, 8), 1000), 16),
            "H 8x8x8 V1000 b8 (2-D, stride 4)": (cfg((8, 8, 8), 1000), 8),
        }
    raise ValueError(f"unknown phase {phase!r}; accepted: {', '.join(PHASES)}")


def gemm_peak(threads: int) -> float:
    """fp32 FLOP/s of a 1024^3 GEMM: best of 12 in process CPU time, per thread × threads."""
    a_, b_ = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = []
    for _ in range(12):
        t0 = time.process_time(); a_ @ b_; best.append(time.process_time() - t0)
    return 2 * 1024**3 / min(best) * threads  # per-thread CPU-time peak x threads


def cpu_time(phase: str, rounds: int, threads: int) -> dict:
    """One phase, interleaved: min / median process CPU time and wall time per variant, MFU, params."""
    peak = gemm_peak(threads)
    print(f"fp32 GEMM 1024^3 peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    fns, meta = {}, {}
    for name, (config, batch, *rest) in variants(phase).items():
        t0 = time.perf_counter()
        _, fns[name] = make_step(config, batch, *rest)
        meta[name] = (config, batch)
        if rest and rest[0]:
            fns[name]()  # first call compiles
            print(f"{name}: first (compiling) step {time.perf_counter() - t0:.1f} s", flush=True)
    times = {k: [] for k in fns}
    walls = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            t0 = time.process_time(); w0 = time.perf_counter(); fn(); dt = time.process_time() - t0
            if r >= 1:
                times[k].append(dt); walls[k].append(time.perf_counter() - w0)
    t = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {}
    for name, s in t.items():
        config, batch = meta[name]
        f = model_flops(config, batch)
        rows[name] = {"s_step": s, "ms_sample": 1000 * s / batch, "gflops_step": f / 1e9,
                      "gflop_s": f / s / 1e9, "mfu_fp32": f / s / peak,
                      "params_M": LoopedTransformer(config).num_params() / 1e6}
        print(f"{name:24s} min {s:.3f} s/step  {1000 * s / batch:6.1f} ms/sample  {f / 1e9:6.1f} GFLOP  "
              f"{f / s / 1e9:6.1f} GFLOP/s  MFU(fp32) {100 * f / s / peak:5.1f}%  params {rows[name]['params_M']:.2f}M",
              flush=True)
    keys = list(times)
    for k in keys[1:]:
        r = [a / b for a, b in zip(walls[keys[0]], walls[k])]
        print(f"wall ratio {keys[0]} / {k}: per round " + " ".join(f"{x:.2f}" for x in r)
              + f"  median {statistics.median(r):.2f}")
    for name in t:
        print(f"{name:24s} wall min {min(walls[name]):.3f}  median {statistics.median(walls[name]):.3f}")
        rows[name]["median_s"] = med[name]; rows[name]["all_s"] = times[name]; rows[name]["wall_s"] = walls[name]
        print(f"{name:24s} min {t[name]:.3f}  median {med[name]:.3f}  all " + " ".join(f"{x:.2f}" for x in times[name]))
    return {"phase": phase, "threads": threads, "peak_gflops": peak / 1e9, "rounds": rounds, "rows": rows}


def wall_time(rounds: int, threads: int) -> dict:
    """Today's step, the 4,375-code step and the 1,000-code 2x8x8 step interleaved; wall time per round
    (first round dropped) and the per-round ratio today / 4,375 codes.  Formerly quick2.py (run at 2 threads)."""
    fns = {name: make_step(config, batch)[1] for name, (config, batch) in variants("wall").items()}
    res = {k: [] for k in fns}
    for _ in range(rounds + 1):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); res[k].append(time.perf_counter() - t)
    res = {k: v[1:] for k, v in res.items()}
    for k, v in res.items():
        print(f"{k:24s} wall min {min(v):.3f} ", " ".join(f"{x:.2f}" for x in v))
    today, s4 = list(res)[:2]
    ratios = [x / y for x, y in zip(res[today], res[s4])]
    print(f"per-round {today} / {s4}", " ".join(f"{x:.2f}" for x in ratios), f" median {statistics.median(ratios):.2f}")
    return {"phase": "wall", "threads": threads, "rounds": rounds,
            "rows": {k: {"wall_min_s": min(v), "wall_s": v} for k, v in res.items()},
            "ratio_today_over_s4": ratios}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=PHASES,
                        help="eager: token grid, vocabulary, batch; compile: Looped.compile_layers vs eager; "
                             "vocab: the 4,375-code tokenizer and vanilla steps; confirm: the chosen setup (run at "
                             "2 threads); vanilla: ILSD vs vanilla; wall: 3-way wall-time check (formerly quick2.py)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after one warm-up round (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None,
                        help="result JSON (default /tmp/video_step/step_PHASE_tTHREADS.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads must be at least 1")
    out = Path(args.out or f"/tmp/video_step/step_{args.phase}_t{args.threads}.json")
    setup(args.threads)
    if args.phase == "wall":
        result = wall_time(args.rounds, args.threads)
    else:
        result = cpu_time(args.phase, args.rounds, args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
