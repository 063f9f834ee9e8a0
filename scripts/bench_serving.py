"""An audience at once: concurrent gradio_client visitors against `python app.py`, batching off and on.

    python scripts/bench_serving.py --out docs/SERVING.md        # both settings, one run, ≈ 10 min on 2 cores
    python scripts/bench_serving.py --visitors 1 8 --settings 32  # a quick look

For each setting (`--max-batch 1`: one generation at a time, as before batching; `--max-batch N`: the
batching engine, core.batching) the app is launched on its own, warmed up, and then each scenario runs:
V visitors, each with its own client, submit /generate back to back (each reads every streamed update,
image URLs without downloading the files).  Reported per scenario: images/s over the scenario, p50 / p95
latency of a request (submit to final image), p95 time to the first streamed preview, the fewest updates
a request got before its final image, requests turned away, and the server's peak RSS.

Default scenario: shapes-elt "star" at its L_max with its own sampling defaults (16 steps, guidance 2).
Mixed: random shipped image generators (MaskGIT and DiT), classes, seeds and L in 1 … L_max + 2 (at most
2·L_max, the app's limit).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from bench_app import REQUEST_TIMEOUT_S, launch, updates  # noqa: E402

from core.bench import cpu_description  # noqa: E402

MIXED = ["shapes-elt", "shapes-vanilla", "shapes-dense", "shapes-dit-elt", "shapes-dit-vanilla", "digits-elt"]


@dataclass
class Outcome:
    latency_s: float | None = None  # None: refused or failed
    first_preview_s: float | None = None
    updates: int = 0  # streamed updates before the final one
    error: str = ""


@dataclass
class Scenario:
    name: str
    visitors: int
    each: int
    mixed: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the app's process during the scenario
    client_cpu: float = 0.0  # CPU seconds of the visitors (this process), on the same cores


def visit(client, listing: dict, scenario: Scenario, index: int, rng: random.Random) -> list[Outcome]:
    out = []
    for k in range(scenario.each):
        name = rng.choice([m for m in MIXED if m in listing]) if scenario.mixed else "shapes-elt"
        info = listing[name]
        top = min(info["max_loops"] + 2, info["allowed_loops"][1])  # the app's loop range, from /checkpoints
        loops = rng.randint(1, top) if scenario.mixed else info["max_loops"]
        label = rng.choice(info["classes"]) if scenario.mixed else "star"
        sampler = info["default_sampler"]
        outcome, t0 = Outcome(), time.perf_counter()
        try:
            job = client.submit(name, label, loops, sampler["steps"], sampler["cfg_scale"], 1000 * index + k, False,
                                1, api_name="/generate")
            for output in updates(job, REQUEST_TIMEOUT_S):  # every streamed update, in order
                details = output[-1]
                if isinstance(details, dict) and details.get("final"):
                    outcome.latency_s = time.perf_counter() - t0
                    break
                outcome.updates += 1
                if outcome.first_preview_s is None and isinstance(output[0], (str, dict)):
                    outcome.first_preview_s = time.perf_counter() - t0
            if outcome.latency_s is None:
                outcome.error = "no final image"
        except Exception as error:  # a refused or failed request is counted, not fatal
            outcome.error = str(error).splitlines()[0][:120] or type(error).__name__
        out.append(outcome)
    return out


def run_scenario(url: str, listing: dict, scenario: Scenario) -> None:
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(scenario.visitors)]
    results: list[list[Outcome]] = [[] for _ in clients]

    def worker(i: int) -> None:
        results[i] = visit(clients[i], listing, scenario, i, random.Random(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(scenario.visitors)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scenario.seconds = time.perf_counter() - t0
    scenario.outcomes = [o for r in results for o in r]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def measure(setting: str, scenarios: list[Scenario], log: Path) -> tuple[list[Scenario], float]:
    """setting: "MAX_BATCH" or "MAX_BATCH:THREADS" (app.py --max-batch, --threads)."""
    from gradio_client import Client

    max_batch, _, threads = setting.partition(":")
    process, url = launch([], log, ["--max-batch", max_batch, "--threads", threads or "1"])
    try:
        client = Client(url, verbose=False, download_files=False)
        listing = {k: v for k, v in client.predict(api_name="/checkpoints").items()
                   if v.get("task") == "generator" and not v.get("error")}
        warm = Scenario("warm-up", 2, 1, mixed=True)
        run_scenario(url, listing, warm)  # loads the generators the mixed audience uses
        for scenario in scenarios:
            server, client_cpu = cpu_seconds(process.pid), cpu_seconds(os.getpid())
            run_scenario(url, listing, scenario)
            scenario.server_cpu = cpu_seconds(process.pid) - server
            scenario.client_cpu = cpu_seconds(os.getpid()) - client_cpu
            done = [o for o in scenario.outcomes if o.latency_s is not None]
            errors = sorted({o.error for o in scenario.outcomes if o.error})
            print(f"  setting {setting} · {scenario.name}: {len(done)}/{len(scenario.outcomes)} images in "
                  f"{scenario.seconds:.1f} s {errors or ''}", file=sys.stderr)
        return scenarios, peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)


def table(results: dict[str, tuple[list[Scenario], float]]) -> str:
    off = next(iter(results))
    base = {s.name: len([o for o in s.outcomes if o.latency_s]) / s.seconds for s in results[off][0]}
    lines = ["| max batch : threads | scenario | images/s | × off | p50 latency s | p95 latency s | "
             "p95 first preview s | fewest updates before final | turned away / failed | server peak RSS MB | "
             "CPU cores busy: server + visitors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for max_batch, (scenarios, rss) in results.items():
        for s in scenarios:
            done = [o for o in s.outcomes if o.latency_s is not None]
            rate = len(done) / s.seconds
            lat = [o.latency_s for o in done]
            first = [o.first_preview_s for o in done if o.first_preview_s is not None]
            lines.append(f"| {max_batch} | {s.name} | {rate:.2f} | {rate / base[s.name]:.2f} | {pct(lat, 0.5):.2f} | "
                         f"{pct(lat, 0.95):.2f} | {pct(first, 0.95):.2f} | "
                         f"{min((o.updates for o in done), default=0)} | {len(s.outcomes) - len(done)} | {rss:.0f} | "
                         f"{s.server_cpu / s.seconds:.2f} + {s.client_cpu / s.seconds:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["1", "32"], metavar="MAX_BATCH[:THREADS]",
                   help="app.py --max-batch (and --threads, default 1) to compare; the first is the baseline "
                        "(default: 1 32)")
    p.add_argument("--visitors", type=int, nargs="+", default=[1, 8, 24, 48])
    p.add_argument("--out", default=None, metavar="FILE.md", help="write the report here (default: print only)")
    args = p.parse_args()

    def scenarios() -> list[Scenario]:
        each = {1: 6, 8: 3, 24: 2}
        out = [Scenario(f"{v} visitors × {each.get(v, 1)}", v, each.get(v, 1)) for v in args.visitors]
        return out + [Scenario("24 visitors × 2, mixed", 24, 2, mixed=True)]

    results = {}
    for setting in args.settings:
        results[setting] = measure(setting, scenarios(), Path("/tmp") / f"bench_serving_{setting}.log")
    cpu = cpu_description()
    report = "\n".join([
        "# Serving an audience", "",
        f"Generated by `python scripts/bench_serving.py {' '.join(sys.argv[1:])}`; do not edit by hand. "
        f"Machine: {cpu}, {os.cpu_count()} cores; one run, the settings one after the other on the same machine. "
        "Each visitor is its own gradio_client and reads every streamed update; a request is shapes-elt \"star\" "
        "at L_max with its default 16 steps and guidance 2, or in the mixed rows a random shipped image "
        "generator (MaskGIT and DiT), class, seed and L in 1 … L_max + 2. `max batch 1` is one generation at "
        "a time (as before batching); otherwise generations share each step's model call (core.batching); "
        "threads: app.py --threads. × off: images/s against the first setting "
        f"({next(iter(results))}) in the same scenario. CPU cores busy: CPU seconds over the scenario's wall time, "
        "of the app's process and of the visitors' clients, which share the same cores here (a real audience's "
        "browsers do not).", "", table(results), ""])
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
