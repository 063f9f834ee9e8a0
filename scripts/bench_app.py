"""Latency of the web app as a user sees it, measured through gradio_client against a launched app.

    python scripts/bench_app.py                                  # launches `python app.py`, shapes-elt
    python scripts/bench_app.py --checkpoint tiny-elt --checkpoints /tmp/tiny
    python scripts/bench_app.py --url http://127.0.0.1:7860/     # an app that is already running

Per run: time from submitting /generate to the first streamed image, and to the final image (at
L_max and the default sampling steps unless told otherwise), after one warm-up run.  Targets
(issue #3, 2 CPU cores, shipped image model, warm): first image <= 0.5 s, final image <= 2 s.

Two clients are timed: one that takes each image as the URL the server streams (what a browser gets
before it paints; this is the number held to the targets), and one that also downloads every streamed
file before reading the next update (gradio_client's default: adds a round trip per file).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_IMAGE_TARGET_S, FINAL_TARGET_S = 0.5, 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(checkpoints: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port)]
    for folder in checkpoints:
        command += ["--checkpoints", folder]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return process, url
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                sys.exit(f"error: the app did not start; see {log_path}")
            time.sleep(0.3)


def one_run(client, args, seed: int) -> dict[str, float]:
    """Seconds to the first streamed image and to the final result, plus the server's own numbers."""
    t0 = time.perf_counter()
    job = client.submit(args.checkpoint, args.label, args.loops, args.steps, args.cfg_scale, seed, False,
                        args.num_samples, api_name="/generate")
    first = None
    for output in job:  # one item per streamed update, in order
        if first is None and isinstance(output[0], (str, dict)):  # the preview image of a step
            first = time.perf_counter() - t0
    final = time.perf_counter() - t0
    details = job.outputs()[-1][-1]
    if not details.get("final") or details.get("stopped"):
        sys.exit(f"error: the run did not finish: {details}")
    return {"first_s": first if first is not None else final, "final_s": final,
            "model_ms": details["model_ms"], "wall_ms": details["wall_ms"], "loops": details["loops"],
            "steps": details["steps"], "gflops": details["gflops_per_sample"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="an app that is already running (default: launch app.py)")
    p.add_argument("--checkpoints", action="append", default=[], metavar="DIR", help="passed on to app.py")
    p.add_argument("--checkpoint", default="shapes-elt")
    p.add_argument("--label", default="star")
    p.add_argument("--loops", type=int, default=None, help="default: the checkpoint's L_max")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()

    from gradio_client import Client

    process = None
    if args.url is None:
        process, args.url = launch(args.checkpoints, Path("/tmp") / "bench_app.log")
    try:
        client = Client(args.url, verbose=False, download_files=False)
        downloading = Client(args.url, verbose=False)
        listing = client.predict(api_name="/checkpoints")
        if listing.get(args.checkpoint, {}).get("task") != "generator" or listing[args.checkpoint]["error"]:
            sys.exit(f"error: {args.checkpoint!r} is not a usable generator here: {listing.get(args.checkpoint)}")
        args.loops = args.loops or listing[args.checkpoint]["max_loops"]
        one_run(client, args, seed=12345)  # warm-up: not counted
        runs = [one_run(client, args, seed) for seed in range(args.runs)]
        with_downloads = [one_run(downloading, args, seed) for seed in range(args.runs)]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    def summary(key: str, runs=runs) -> str:
        values = sorted(r[key] for r in runs)
        return (f"median {statistics.median(values):.3f}  p90 {values[int(0.9 * (len(values) - 1))]:.3f}  "
                f"max {values[-1]:.3f}")

    first = statistics.median(r["first_s"] for r in runs)
    final = statistics.median(r["final_s"] for r in runs)
    print(f"# {args.checkpoint}: class {args.label}, L={args.loops}, {args.steps} steps, guidance {args.cfg_scale}, "
          f"{args.num_samples} sample(s), {runs[0]['gflops']:.3f} GFLOPs/sample; {args.runs} warm runs through "
          f"gradio_client, {os.cpu_count()} CPU cores")
    print(f"first streamed image  s   {summary('first_s')}   target <= {FIRST_IMAGE_TARGET_S}: "
          f"{'PASS' if first <= FIRST_IMAGE_TARGET_S else 'FAIL'}")
    print(f"final image           s   {summary('final_s')}   target <= {FINAL_TARGET_S}: "
          f"{'PASS' if final <= FINAL_TARGET_S else 'FAIL'}")
    print(f"  with file downloads s   first {summary('first_s', with_downloads)}")
    print(f"  with file downloads s   final {summary('final_s', with_downloads)}")
    print(f"server: model time   ms   {summary('model_ms')}")
    print(f"server: request wall ms   {summary('wall_ms')}")
    return 0 if first <= FIRST_IMAGE_TARGET_S and final <= FINAL_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
