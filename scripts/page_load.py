"""docs/PAGE_LOAD.md: what a visitor's browser downloads to generate with each shipped checkpoint, generated.

    python scripts/page_load.py                     # every generator the page can run, ≈ 3 min on 2 cores
    python scripts/page_load.py --checkpoints shapes-elt --out /tmp/PAGE_LOAD.md

For each generator: a fresh browser profile opens the app (as app.py serves it) and makes one image or clip in the
page (L = 1, one step; the first class, seed 0).  Reported from the page's own Resource Timing entries:

- first visit: bytes over the wire for the runtime (onnxruntime-web's module and WASM, `/studio-static/runtime/`)
  and for the checkpoint's export (`/studio-static/export/`), and the time from the request to the finished sample
  (download, session creation, one short run);
- second visit (the same profile, the page reloaded): bytes of those files again, which content-addressed URLs
  with long cache lifetimes keep at 0.

The export is made on the server before the page is opened (once per weights, as the app does on first use), so
its time is not counted here.  A request to any other host stops the report.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from browser_report import CHROMIUM, launch  # noqa: E402

VISIT = """async ({checkpoint, label}) => {
  const started = performance.now();
  const r = await window.eltStudio.generate({checkpoint, label, loops: 1, steps: 1, seed: 0});
  const ms = performance.now() - started;
  const files = performance.getEntriesByType("resource").filter((e) => e.name.includes("/studio-static/"))
    .map((e) => ({url: e.name, transfer: e.transferSize, body: e.decodedBodySize}));
  return {ms, files, backend: r.backend};
}"""


def visit(playwright, url: str, profile: Path, checkpoint: str, label: str) -> dict:
    """One visit in `profile` (kept between visits: the browser's HTTP cache): the page's sample and its downloads."""
    host = url.split("/")[2]
    context = playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                           args=["--no-sandbox", "--disable-gpu"])
    elsewhere = []  # requests are watched, not routed: Playwright's request routing turns the HTTP cache off
    try:
        page = context.new_page()
        page.on("request", lambda request: None if request.url.split("/")[2] == host
                or request.url.startswith(("data:", "blob:")) else elsewhere.append(request.url))
        page.set_default_timeout(600_000)
        page.goto(url)
        page.wait_for_function("window.eltStudio !== undefined")
        result = page.evaluate(VISIT, {"checkpoint": checkpoint, "label": label})
    finally:
        context.close()
    if elsewhere:
        raise SystemExit(f"the page asked another host for {elsewhere[:3]}: it must need nothing but the app")
    return result


def kind(url: str) -> str:
    return "runtime" if "/studio-static/runtime/" in url else "export" if "/studio-static/export/" in url else "page"


def measure(checkpoints: list[str] | None) -> tuple[list[dict], str]:
    from playwright.sync_api import sync_playwright

    from app.service import Studio

    studio = Studio([ROOT / "checkpoints"])
    studio.checkpoints.export_cache = Path(tempfile.mkdtemp(prefix="elt-page-load-"))
    catalog = studio.browser_catalog()
    names = checkpoints or [name for name, entry in catalog.items() if not entry.get("server_only")]
    unknown = sorted(set(names) - set(catalog))
    if unknown:
        raise SystemExit(f"unknown checkpoint(s) {', '.join(unknown)}; accepted: {', '.join(catalog)}")
    for name in names:
        studio.browser_export(name)
    demo, url = launch(studio, isolated=False)
    rows = []
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profiles:
            for name in names:
                profile = Path(profiles) / name
                label = catalog[name]["classes"][0]
                first = visit(p, url, profile, name, label)
                second = visit(p, url, profile, name, label)
                row = {"checkpoint": name, "first_ms": first["ms"], "backend": first["backend"]}
                for when, result in (("first", first), ("second", second)):
                    for part in ("runtime", "export"):
                        files = [f for f in result["files"] if kind(f["url"]) == part]
                        row[f"{when}_{part}"] = sum(f["transfer"] for f in files)
                        row[f"{when}_{part}_files"] = len(files)
                    if when == "first":
                        row["export_body"] = sum(f["body"] for f in result["files"] if kind(f["url"]) == "export")
                rows.append(row)
                print(f"{name}: first visit {row['first_runtime'] + row['first_export']:,} bytes in "
                      f"{row['first_ms']:.0f} ms; second visit {row['second_runtime'] + row['second_export']:,} bytes",
                      flush=True)
    finally:
        demo.close()
        studio.close()
    return rows, url


def render(rows: list[dict]) -> str:
    mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    lines = [
        "# What a visitor downloads: first and second visit per checkpoint",
        "",
        f"Generated by `python scripts/page_load.py` on {time.strftime('%Y-%m-%d')} ({cpu}, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f} at the end), headless Chromium, each checkpoint in a fresh profile. "
        "One sample in the page (L = 1, one step). Bytes are over the wire (Resource Timing `transferSize`; gzip "
        "where the server compresses); the time runs from the request to the finished sample and includes the "
        "downloads and the ONNX sessions' creation, on this machine's loopback network.",
        "",
        "| checkpoint | backend | runtime, first visit | export, first visit (unpacked) | first sample after | "
        "runtime + export, second visit |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        second = r["second_runtime"] + r["second_export"]
        lines.append(f"| {r['checkpoint']} | {r['backend']} | {mb(r['first_runtime'])} ({r['first_runtime_files']} files) "
                     f"| {mb(r['first_export'])} ({mb(r['export_body'])}) | {r['first_ms']:.0f} ms | "
                     f"{second:,} bytes ({r['second_runtime_files'] + r['second_export_files']} files from the cache) |")
    again = [r["checkpoint"] for r in rows if r["second_runtime"] + r["second_export"]]
    lines += ["", "A second visit downloads none of the runtime or export files again: their URLs carry the content's "
              "hash and are served with a year-long, immutable cache lifetime (app/static.py)." if not again else
              f"A second visit downloads runtime or export files again for {', '.join(again)}: the cache did not "
              "keep them.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="*", default=None, help="default: every generator the page can run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "PAGE_LOAD.md"))
    args = parser.parse_args(argv)
    rows, _ = measure(args.checkpoints)
    Path(args.out).write_text(render(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
