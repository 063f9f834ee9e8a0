"""ELT Studio web app: `python app.py` serves it on http://127.0.0.1:7860 (no public link unless --share).

    python app.py [--host 0.0.0.0] [--port 7860] [--checkpoints DIR ...] [--precision auto|bf16|fp32]
    ELT_ADMIN_PASSWORD=… python app.py --admin-data-root /data     # also serves the admin app at /admin
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline and private: set before gradio loads

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    from app.service import MAX_BATCH, MAX_WAITING

    p = argparse.ArgumentParser(prog="python app.py", description="Serve the ELT Studio web app.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--checkpoints", action="append", default=[], metavar="DIR",
                   help="another folder of checkpoint folders (or one checkpoint folder); repeatable. "
                        f"{ROOT / 'checkpoints'} is always scanned")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="as in `python -m core.sample` (auto = bf16 where the hardware is fast at it)")
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads of a generation (default 1: faster than 2 in the server's worker threads, and the "
                        "other core is left to streaming and an admin run; see app/service.py serve_threads)")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, metavar="N",
                   help="generations sharing one model call per sampling step (default %(default)s; 0 or 1: one "
                        "at a time, as before batching); docs/SERVING.md measures both")
    p.add_argument("--cross-origin-isolation", action="store_true",
                   help="send COOP/COEP headers, so the in-browser runtime (Run in my browser) may use WASM threads "
                        "(docs/BROWSER.md measures the effect)")
    p.add_argument("--max-queue", type=int, default=MAX_WAITING,
                   help="generations waiting for a place in a full batch (default %(default)s); more are told "
                        "the server is busy and when to try again")
    admin = p.add_argument_group(
        "admin (fine-tuning runs from the browser)",
        "Off unless a secret is given: the password of user 'admin', read from --admin-password-file FILE or "
        "the environment variable ELT_ADMIN_PASSWORD (never on the command line). With it, a second app is "
        "served at /admin behind a login; without it, no admin component, route or endpoint exists.")
    admin.add_argument("--admin-password-file", default=None, metavar="FILE",
                       help="file holding the admin password (one line); takes precedence over ELT_ADMIN_PASSWORD")
    admin.add_argument("--admin-data-root", default=None, metavar="DIR",
                       help="image / video folders under DIR may be fine-tuned on (imagefolder / videofolder); "
                            "nothing outside it is accepted (default: built-in datasets only)")
    admin.add_argument("--admin-runs", default=str(ROOT / "runs"), metavar="DIR",
                       help="where runs live, one folder each (default: %(default)s)")
    admin.add_argument("--admin-threads", type=int, default=1, metavar="N",
                       help="CPU threads of a training run (default 1: visitors keep generating)")
    admin.add_argument("--admin-eval-samples", type=int, default=20, metavar="N",
                       help="samples per loop count of the evaluation after a run (default 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_queue < 1 or args.threads < 1 or args.max_batch < 0:
        sys.exit("error: --max-queue and --threads must be >= 1, --max-batch >= 0")
    if not 1 <= args.port <= 65535:
        sys.exit(f"error: --port must be in 1..65535, got {args.port}")

    if args.admin_threads < 1 or args.admin_eval_samples < 1:
        sys.exit("error: --admin-threads and --admin-eval-samples must be >= 1")
    from app.admin import AdminConfigError, attach, load_secret

    try:
        secret = load_secret(args.admin_password_file)
    except AdminConfigError as error:
        sys.exit(f"error: {error}")
    if args.admin_data_root is not None and not Path(args.admin_data_root).is_dir():
        sys.exit(f"error: --admin-data-root {args.admin_data_root} is not a folder")

    from app.service import Studio, serve_threads
    from app.static import app_kwargs as serving_kwargs
    from app.ui import THEME, build_demo, css

    serve_threads(args.threads)
    studio = Studio([ROOT / "checkpoints", *args.checkpoints], precision=args.precision, device=args.device,
                    max_batch=args.max_batch, max_waiting=args.max_queue)
    for name, entry in studio.checkpoints.entries.items():
        print(f"  {'ok ' if entry.error is None else 'BAD'} {name}: {entry.error or entry.task}", file=sys.stderr)
    try:
        studio.checkpoints.warm_up()  # load the default generator once, before the first visitor
    except ValueError as error:  # an unusable default still lets the app start and show why
        print(f"warning: {error}", file=sys.stderr)
    demo = build_demo(studio)
    # Gradio's own line holds what waits for a handler thread; the engine's line (max_waiting) what waits
    # for a place in the model's batch
    demo.queue(max_size=args.max_queue, default_concurrency_limit=4)
    admin = None
    if secret is not None:
        admin = attach(studio.checkpoints, secret, args.admin_runs, data_root=args.admin_data_root, threads=args.admin_threads,
                       eval_samples=args.admin_eval_samples)
        print(f"admin: http://{args.host}:{args.port}/admin (user 'admin'); runs in {args.admin_runs}", file=sys.stderr)
    # SIGTERM (kill, a service manager) shuts down as Ctrl-C does: through the `finally` below, which ends
    # a running admin job's process (its run shows `interrupted`, resumable) instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app_kwargs = {**(admin.app_kwargs if admin else {}),
                  **serving_kwargs(studio.export_cache, isolation=args.cross_origin_isolation)}
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=THEME, css=css(),
                    footer_links=["api", "settings"], app_kwargs=app_kwargs,
                    max_threads=max(40, args.max_batch + args.max_queue + 8))  # batched visitors each hold a thread
    finally:
        if admin is not None:
            admin.jobs.close()
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
