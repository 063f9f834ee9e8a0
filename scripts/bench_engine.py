"""The batching engine beside the model it serves, in one process and one run: what serving itself costs.

    python scripts/bench_engine.py                        # shapes-elt "star", L = 4, 1 and 2 threads
    python scripts/bench_engine.py --seconds 4 --threads 1 --dit

Rows, each run for about --seconds at each thread count (torch.set_num_threads), fp32:
- one at a time: `Pipeline.generate` with one label, back to back;
- the model's own batch: `Pipeline.generate` with 24 labels (no previews): the batched ceiling;
- the engine (core.batching) with 1 request at a time, and with 24 concurrent requests (each visitor submits
  its next request when its image is done), previews on (the app's cadence: at most --preview-hz per
  request) and off.
Reported per row: images/s, the engine's rate over one at a time and over the batched ceiling, and for the
engine rows the fewest previews a request got before its final image.  The rows of one thread count run
one after the other in the same process, so their ratios hold even on a loaded machine; the load average is
printed beside them.  --dit adds the same rows for shapes-dit-elt at its own sampler.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
import torch  # noqa: E402

from core.batching import BatchRequest, Done, Engine, StepDone  # noqa: E402
from core.bench import cpu_description, md_table  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.runtime import Runtime  # noqa: E402

CONCURRENT = 24
PREVIEW_HZ = 10.0  # a visitor's screen shows about ten frames a second at most (app.service.PREVIEW_HZ caps it)


@dataclass
class Row:
    name: str
    images: int
    seconds: float
    fewest_previews: int | None = None  # engine rows with previews: the fewest a request got before its final

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def timed(seconds: float, once) -> tuple[int, float]:
    """Run once() -> images until `seconds` have passed (at least once); (images, seconds)."""
    images, t0 = 0, time.perf_counter()
    while not images or time.perf_counter() - t0 < seconds:
        images += once()
    return images, time.perf_counter() - t0


def engine_run(p: Pipeline, key: str, label: int, loops: int, sampler, visitors: int, previews: bool,
               seconds: float, preview_hz: float) -> tuple[int, float, list[int]]:
    """`visitors` closed-loop clients: each submits, reads every event, and submits again until time is up.
    (images, seconds, previews each request got before its final image)."""
    engine = Engine(max_batch=32, preview_interval=1.0 / preview_hz)
    deadline = time.perf_counter() + seconds
    counts: list[list[int]] = [[] for _ in range(visitors)]

    def visitor(i: int) -> None:
        seed = 1000 * i
        while time.perf_counter() < deadline:
            ticket = engine.submit(BatchRequest(p, key, (label,), loops, sampler, seed, previews=previews))
            shown = 0
            for event in ticket.events(timeout=120):
                if isinstance(event, StepDone) and event.predicted is not None and event.step < event.steps:
                    shown += 1
                elif isinstance(event, Done):
                    counts[i].append(shown)
            seed += 1

    try:
        threads = [threading.Thread(target=visitor, args=(i,)) for i in range(visitors)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        engine.close()
    done = [c for per in counts for c in per]
    return len(done), elapsed, done


def measure(p: Pipeline, key: str, label: int, loops: int, sampler, seconds: float, preview_hz: float,
            rounds: int) -> list[Row]:
    """Every row, `rounds` times in turn (ABC…ABC…), so a change in the machine's load falls on all of them."""
    p.generate([label], loops, sampler, 0)  # warm-up: first calls allocate
    p.generate([label] * CONCURRENT, loops, sampler, 0)
    seeds = iter(range(10**9))
    runs = [("one at a time (Pipeline.generate, batch 1)", None,
             lambda s: (*timed(s, lambda: len(p.generate([label], loops, sampler, next(seeds)))), None)),
            (f"the model's own batch of {CONCURRENT} (no previews)", None,
             lambda s: (*timed(s, lambda: len(p.generate([label] * CONCURRENT, loops, sampler, next(seeds)))), None))]
    for visitors in (1, CONCURRENT):
        for previews in (True, False):
            runs.append((f"engine, {visitors} request{'s' * (visitors > 1)}, previews {'on' if previews else 'off'}",
                         previews, lambda s, v=visitors, on=previews: engine_run(p, key, label, loops, sampler, v, on,
                                                                                 s, preview_hz)))
    rows = [Row(name, 0, 0.0) for name, _, _ in runs]
    shown: list[list[int]] = [[] for _ in runs]
    for _ in range(rounds):
        for row, per, (_, previews, run) in zip(rows, shown, runs):
            images, elapsed, counts = run(seconds / rounds)
            row.images, row.seconds = row.images + images, row.seconds + elapsed
            per += counts or []
    for row, per, (_, previews, _) in zip(rows, shown, runs):
        row.fewest_previews = min(per) if previews and per else None
    return rows


def table(results: list[tuple[str, int, str, list[Row]]]) -> str:
    lines = []
    for model, threads, load, rows in results:
        one, ceiling = rows[0].rate, rows[1].rate
        lines += [[model, threads, load, r.name, f"{r.rate:.2f}", f"{r.rate / one:.2f}", f"{r.rate / ceiling:.2f}",
                   "–" if r.fewest_previews is None else r.fewest_previews] for r in rows]
    return md_table(["model", "threads", "load avg (1 min)", "row", "images/s", "× one at a time",
                     "× batched ceiling", "fewest previews before final"], lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=5.0, help="per row, all rounds together (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="the rows run in turn this many times (default 2)")
    ap.add_argument("--preview-hz", type=float, default=PREVIEW_HZ)
    ap.add_argument("--dit", action="store_true", help="add shapes-dit-elt rows")
    ap.add_argument("--checkpoints", default=str(Path(__file__).resolve().parent.parent / "checkpoints"))
    ap.add_argument("--out", default=None, metavar="FILE.md")
    args = ap.parse_args()
    if args.seconds <= 0 or args.preview_hz <= 0 or min(args.threads) < 1 or args.rounds < 1:
        ap.error("--seconds, --rounds, --preview-hz and --threads must be positive")

    runtime = Runtime.create("cpu", "fp32")
    models = [("shapes-elt", "star")] + [("shapes-dit-elt", "star")] * args.dit
    results = []
    for name, class_name in models:
        try:
            p = Pipeline.load(Path(args.checkpoints) / name, runtime)
        except Exception as error:  # noqa: BLE001  (a missing or broken checkpoint: one line, not a traceback)
            print(f"error: cannot load {name}: {error}", file=sys.stderr)
            return 2
        label, loops, sampler = p.class_names.index(class_name), p.config.max_loops, p.sampler()
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows = measure(p, name, label, loops, sampler, args.seconds, args.preview_hz, args.rounds)
            load = f"{os.getloadavg()[0]:.2f}"
            results.append((f"{name} L={loops}, {sampler.steps} steps, guidance {sampler.cfg_scale:g}", threads, load,
                            rows))
            for r in rows:
                print(f"  {name} {threads} thread(s) · {r.name}: {r.rate:.2f} images/s", file=sys.stderr)
    report = "\n".join([
        f"Generated by `python scripts/bench_engine.py {' '.join(sys.argv[1:])}`. Machine: {cpu_description()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, fp32; one process, the rows of a thread count one "
        f"after the other in {args.rounds} rounds (~{args.seconds:g} s each in all). Engine rows: "
        f"core.batching.Engine(max_batch=32), previews at most {args.preview_hz:g} per second per request; "
        "concurrent requests are closed-loop visitors that submit again when their image is done.", "", table(results), ""])
    if args.out:  # written before printing: a closed pipe on stdout cannot lose a two-minute measurement
        Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
