"""Metric-classifier accuracy and PSNR of tokenizer reconstructions on the first N held-out moving-shapes
clips (issue 33; docs/EXPERIMENTS.md, "A stride-4 tokenizer with a bigger codebook"), with the codes used
and per-class accuracy; the classifier's accuracy on the real clips is reported once, with the first tokenizer.

    python scripts/video_step/recon_acc.py 500 checkpoints/moving-shapes-tokenizer runs/mst-s4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import checkpoint as ckpt  # noqa: E402
from core.data import dataset_for  # noqa: E402
from core.tokenizer import psnr  # noqa: E402


def evaluate(n: int, tokenizers: list[str], classifier: str) -> dict:
    clf = ckpt.load(classifier).module
    out = {}
    real_done = False
    for path in tokenizers:
        tok = ckpt.load(path)
        ds = dataset_for("moving-shapes", "test", None, tok.experiment.model)
        correct_real = correct_rec = 0
        psnrs, codes, per_class = [], set(), {}
        with torch.no_grad():
            for start in range(0, n, 100):
                px, labels = ds.batch(range(start, min(start + 100, n)))
                px, labels = torch.from_numpy(px), torch.from_numpy(labels)
                tokens = tok.module.encode(px)
                codes.update(tokens.unique().tolist())
                rec = tok.module.decode(tokens)
                psnrs.append(psnr(rec.flatten(0, 1), px.flatten(0, 1)) * len(px))
                pr = clf.predict(rec)
                correct_rec += int((pr == labels).sum())
                if not real_done:
                    correct_real += int((clf.predict(px) == labels).sum())
                for c, ok in zip(labels.tolist(), (pr == labels).tolist()):
                    per_class.setdefault(ds.class_names[c], []).append(ok)
        row = {"tokenizer": path, "clips": n, "codebook": tok.module.config.codebook_size, "codes_used": len(codes),
               "token_grid": tok.module.config.token_grid, "psnr_db": round(sum(psnrs) / n, 3),
               "classifier_acc_recon": correct_rec / n,
               "per_class": {k: round(sum(v) / len(v), 3) for k, v in per_class.items()}}
        if not real_done:
            row["classifier_acc_real"] = correct_real / n
            real_done = True
        print(json.dumps(row), flush=True)
        out[path] = row
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", type=int, help="the first N clips of the moving-shapes test split")
    parser.add_argument("tokenizers", nargs="+", metavar="TOKENIZER_DIR", help="tokenizer checkpoint folders")
    parser.add_argument("--classifier", default=str(ROOT / "checkpoints" / "moving-shapes-classifier"),
                        help="metric classifier checkpoint (default: the shipped moving-shapes-classifier)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="/tmp/video_step/recon_acc.json",
                        help="result JSON (default /tmp/video_step/recon_acc.json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.clips < 1 or args.threads < 1:
        raise SystemExit("N and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    result = evaluate(args.clips, args.tokenizers, args.classifier)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
