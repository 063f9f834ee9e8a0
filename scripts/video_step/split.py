"""Where an ILSD step's time goes (issue 33; docs/EXPERIMENTS.md, "Video step cost"): fwd + bwd of one
component (attention, MLP, head + ILSD loss) at batch 32 in process CPU time, and the whole step with
F.scaled_dot_product_attention instead of core.model's explicit CPU attention.  Min / median of --rounds
after a warm-up round, all interleaved in one process.

    python scripts/video_step/split.py --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import model as M  # noqa: E402


def load_stepbench():
    """stepbench.py beside this file (scripts/ holds files, not packages)."""
    spec = importlib.util.spec_from_file_location("stepbench", Path(__file__).resolve().with_name("stepbench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sb = load_stepbench()


def attn_sdpa(self, x):
    B, S, D = x.shape
    qkv = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)
    return self.proj(y.transpose(1, 2).reshape(B, S, D))


explicit = M.Attention.forward


def with_sdpa(fn):
    """fn run with SDPA attention in place of the model's explicit attention."""
    def run():
        M.Attention.forward = attn_sdpa
        try:
            fn()
        finally:
            M.Attention.forward = explicit
    return run


def bench(fns, rounds):
    times = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            t0 = time.process_time(); fn(); dt = time.process_time() - t0
            if r:
                times[k].append(dt)
    return {k: min(v) for k, v in times.items()}, {k: statistics.median(v) for k, v in times.items()}


def components(config, batch):
    torch.manual_seed(0)
    layer = M.Layer(config.width, config.num_heads, config.mlp_ratio)
    S, D = config.seq_len, config.width
    x = torch.randn(batch, S, D, requires_grad=True)
    n_masked = int(0.64 * config.num_tokens * batch)  # mean masked fraction of MaskGIT's cosine schedule ≈ 2/π
    h = torch.randn(2, n_masked, D, requires_grad=True)
    head = torch.nn.Linear(D, config.vocab_size)
    norm = torch.nn.LayerNorm(D)
    targets = torch.randint(0, config.vocab_size, (batch, config.num_tokens))
    mask = torch.zeros(batch, config.num_tokens, dtype=torch.bool).flatten()
    mask[:n_masked] = True
    mask = mask.view(batch, config.num_tokens)

    def attn_part():
        (x + layer.attn(layer.norm1(x))).sum().backward()

    def mlp_part():
        (x + layer.mlp(layer.norm2(x))).sum().backward()

    def head_part():
        logits = head(norm(h))  # student and teacher rows at the masked positions
        lt = F.log_softmax(logits[1], -1)
        ls = F.log_softmax(logits[0], -1)
        tg = targets[mask]
        loss = F.nll_loss(lt, tg) + F.nll_loss(ls, tg) - (lt.detach().exp() * ls).sum(-1).mean()
        loss.backward()

    return {"attn": attn_part, "mlp": mlp_part, "head+loss": head_part}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds after one warm-up round (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="result JSON (default /tmp/video_step/split_tTHREADS.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads must be at least 1")
    out = Path(args.out or f"/tmp/video_step/split_t{args.threads}.json")
    sb.setup(args.threads)
    configs = {"A 4x8x8 V1000": sb.cfg((4, 8, 8), 1000), "B 2x8x8 V1000": sb.cfg((2, 8, 8), 1000),
               "D 2x8x8 V8000": sb.cfg((2, 8, 8), 8000)}
    fns = {}
    for name, c in configs.items():
        for part, fn in components(c, 32).items():
            fns[f"{name} {part}"] = fn
        M.Attention.forward = attn_sdpa
        sd = components(c, 32)["attn"]
        M.Attention.forward = explicit
        fns[f"{name} attn(SDPA)"] = with_sdpa(sd)
    best, med = bench(fns, args.rounds)
    result = {"threads": args.threads, "rounds": args.rounds, "components": {}, "steps": {}}
    for k in fns:
        print(f"{k:32s} min {best[k]:.4f}  median {med[k]:.4f}", flush=True)
        result["components"][k] = {"min_s": best[k], "median_s": med[k]}
    # whole steps, explicit vs SDPA
    steps = {}
    for name in ("A 4x8x8 V1000", "B 2x8x8 V1000"):
        _, steps[f"{name} step explicit"] = sb.make_step(configs[name], 32)
        _, f = sb.make_step(configs[name], 32)
        steps[f"{name} step SDPA"] = with_sdpa(f)
    best, med = bench(steps, args.rounds)
    for k in steps:
        print(f"{k:32s} min {best[k]:.4f}  median {med[k]:.4f}", flush=True)
        result["steps"][k] = {"min_s": best[k], "median_s": med[k]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
