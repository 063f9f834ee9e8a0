"""The admin app: fine-tuning runs from the browser, at /admin, only when the server has an admin secret.

Protection is on the server, twice over: the admin Blocks is a separate Gradio app mounted at `/admin`
with its own `auth=` (Gradio's login page and session cookie), and every one of its handlers is wrapped
by `Gate.guard`, which checks the request's authenticated user itself and fails closed — so a direct
HTTP call or a `gradio_client` call without a valid session is refused whatever route or fn index it
uses.  Its events are `api_visibility="undocumented"` (callable by a logged-in `gradio_client`, listed
nowhere) or "private"; the public app's API listing has none of them (they are not in the public Blocks).
Without a secret `attach` is never called and nothing exists.

The work is done by `app.jobs.JobManager` (processes, files, validation); this module is layout and wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app import charts
from app.jobs import DATASETS, FOLDER_DATASETS, OBJECTIVES, JobManager
from app.service import Studio, StudioError
from app.ui import THEME, Blocks, as_gradio_errors, css
from core.config import LAMBDA_SCHEDULES

ADMIN_PATH = "/admin"
ADMIN_USER = "admin"
PASSWORD_ENV = "ELT_ADMIN_PASSWORD"
TICK_S = 1.0
log = logging.getLogger("elt.admin")


class AdminConfigError(ValueError):
    """The admin secret is configured but unusable (empty, unreadable file)."""


def load_secret(password_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The admin password from --admin-password-file, else $ELT_ADMIN_PASSWORD (removed from the environment
    so no child process inherits it); None when neither is set (admin off)."""
    environ = os.environ if environ is None else environ
    if password_file:
        try:
            secret = Path(password_file).read_text().strip("\r\n")
        except OSError as error:
            raise AdminConfigError(f"--admin-password-file {password_file}: cannot read it "
                                   f"({error.strerror})") from None
        environ.pop(PASSWORD_ENV, None)
        if not secret:
            raise AdminConfigError(f"--admin-password-file {password_file} is empty")
        return secret
    secret = environ.pop(PASSWORD_ENV, None)
    if secret is not None and not secret:
        raise AdminConfigError(f"${PASSWORD_ENV} is set but empty")
    return secret


def _digest(text: Any) -> bytes:
    return hashlib.sha256(str(text if text is not None else "").encode()).digest()


class Gate:
    """Login check (Gradio's `auth=` callable) and the server-side check of every admin handler."""

    def __init__(self, password: str, user: str = ADMIN_USER, fail_delay_s: float = 1.0):
        if not password:
            raise AdminConfigError("the admin password is empty")
        self.user = user
        self._user, self._password = _digest(user), _digest(password)
        self.fail_delay_s = fail_delay_s

    def check(self, username: str, password: str) -> bool:
        """Constant-time comparison of digests; a failure is logged with the username only, never the password."""
        user_ok = hmac.compare_digest(_digest(username), self._user)
        password_ok = hmac.compare_digest(_digest(password), self._password)
        if user_ok and password_ok:
            log.info("admin login: %r", username)
            return True
        log.warning("failed admin login for user %r", username)
        return False

    async def auth(self, username: str, password: str) -> bool:
        """Gradio's `auth=`: `check`, and a failure answers only after a delay (without blocking the server)."""
        if self.check(username, password):
            return True
        await asyncio.sleep(self.fail_delay_s)
        return False

    def allowed(self, request: Any) -> bool:
        username = getattr(request, "username", None)
        return isinstance(request, gr.Request) and isinstance(username, str) and \
            hmac.compare_digest(_digest(username), self._user)

    def guard(self, fn: Callable) -> Callable:
        """`fn` (which takes a `request: gr.Request`) runs only for the logged-in admin; else gr.Error, nothing done."""
        checked = as_gradio_errors(fn)

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
            if not self.allowed(request):
                log.warning("refused admin call %s without an admin session", fn.__name__)
                raise gr.Error("not authorised: log in at /admin", title="Refused")
            return checked(*args, **kwargs)

        return guarded


# -- layout ------------------------------------------------------------------------------------------------
def base_defaults(studio: Studio, name: Any) -> dict[str, int] | None:
    """The form's L_min and L_max for fine-tuning base checkpoint `name`: the base's own (config.json's training
    `min_loops`, its model's `max_loops`), L_min kept below L_max as ILSD needs; None when it is no generator."""
    if name not in studio.generators:
        return None
    experiment = studio.entry(name).experiment
    max_loops = experiment.model.max_loops
    return {"min_loops": max(1, min(experiment.train.min_loops, max_loops - 1)), "max_loops": max_loops}


def progress_text(s: dict[str, Any]) -> str:
    eta = f" · ETA {s['eta_s']:.0f} s" if s.get("eta_s") is not None else ""
    queue = f" · #{s['queue_position']} in the queue" if s.get("queue_position") else ""
    published = " · **published**" if s.get("published") else ""
    lines = [f"**{s['name']}** — `{s['state']}`{queue}{published}  \nstep {s['step']} / {s['total']}{eta} · "
             f"last checkpoint at step {s['checkpoint_step']}"]
    if s.get("error"):
        lines.append("\n**Failed** — last log lines below.")
    if s.get("eval_error"):
        lines.append("\nThe evaluation failed (the checkpoint is complete): see the log.")
    return "\n".join(lines)


def build_admin(studio: Studio, jobs: JobManager, gate: Gate) -> gr.Blocks:
    guard = gate.guard
    hidden = dict(api_visibility="private")  # page-only wiring (dataset → folder box)
    api = dict(api_visibility="undocumented")  # callable by a logged-in client (scripts/bench_app.py), never listed
    generators = studio.generators
    first = studio.default_generator
    defaults = base_defaults(studio, first) or {"min_loops": 1, "max_loops": None}
    with Blocks(title="ELT Studio admin", analytics_enabled=False) as admin:
        gr.Markdown("# ELT Studio — admin: fine-tuning runs\nFine-tune a checkpoint on a dataset, watch it train "
                    "loop by loop, publish it into the demo. One run trains at a time; the others wait in the queue.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                base = gr.Dropdown(generators, value=first, label="Base checkpoint", elem_id="admin-base")
                dataset = gr.Dropdown(list(DATASETS), value="shapes", label="Dataset", elem_id="admin-dataset")
                folder = gr.Dropdown(jobs.data_folders(), value=None, allow_custom_value=True,
                                     label=f"Folder under the data root ({' / '.join(FOLDER_DATASETS)} only)",
                                     visible=False)
                objective = gr.Radio(list(OBJECTIVES), value="ilsd", label="Objective")
                with gr.Row():
                    steps = gr.Number(200, precision=0, label="Steps", elem_id="admin-steps")
                    batch = gr.Number(32, precision=0, label="Batch size", elem_id="admin-batch")
                    lr = gr.Number(1e-4, label="Learning rate", elem_id="admin-lr")
                with gr.Row():
                    min_loops = gr.Number(defaults["min_loops"], precision=0,
                                          label="L_min (ILSD students; the base's by default)", elem_id="admin-lmin")
                    max_loops = gr.Number(defaults["max_loops"], precision=0, label="L_max (the base's by default)",
                                          elem_id="admin-lmax")
                schedule = gr.Dropdown(list(LAMBDA_SCHEDULES), value="linear", label="λ schedule (ILSD)")
                every = gr.Number(50, precision=0, label="Checkpoint every N steps", elem_id="admin-every")
                name = gr.Textbox(label="Run name", placeholder="letters, digits, . _ -", elem_id="admin-name")
                start = gr.Button("Start run", variant="primary", elem_id="admin-start")
                message = gr.Markdown(elem_id="admin-message")
            with gr.Column(scale=2):
                table = gr.Dataframe(pd.DataFrame(jobs.runs()), label="Runs (newest first)", interactive=False,
                                     elem_id="admin-runs")
                names = jobs.names()
                run = gr.Dropdown(names, value=names[0] if names else None, label="Run", elem_id="admin-run")
                progress = gr.Markdown(elem_id="admin-progress")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", elem_id="admin-stop")
                    resume = gr.Button("Resume", elem_id="admin-resume")
                    publish = gr.Button("Publish", elem_id="admin-publish")
                    unpublish = gr.Button("Unpublish", elem_id="admin-unpublish")
                with gr.Row():
                    confirm = gr.Textbox(label="To delete, type the run name", scale=3, elem_id="admin-confirm")
                    delete = gr.Button("Delete run", variant="stop", scale=1, elem_id="admin-delete")
                curves = gr.Plot(label="Training curves", elem_id="admin-curves")
                strip = gr.Image(label="Loop strip of the last checkpoint (L = 1 … L_max)", format="png",
                                 interactive=False, elem_id="admin-strip")
                logs = gr.Textbox(label="Last log lines", lines=10, max_lines=10, elem_id="admin-log")
        seen = gr.State({})
        timer = gr.Timer(TICK_S)

        def runs_frame() -> pd.DataFrame:
            rows = jobs.runs()
            return pd.DataFrame([{k: v for k, v in r.items() if k != "created"} for r in rows]) if rows else \
                pd.DataFrame(columns=["run", "state", "step", "base", "dataset", "objective", "published"])

        @guard
        def refresh(selected, memory, request: gr.Request):
            names = jobs.names()
            memory = dict(memory or {})
            run_update = gr.skip()
            if names != memory.get("names"):
                selected = selected if selected in names else (names[0] if names else None)
                run_update = gr.Dropdown(choices=names, value=selected)
                memory["names"] = names
            if selected not in names:
                text = "No run yet: fill in the form and start one."
                return runs_frame(), run_update, text, gr.skip(), None, "", memory
            s = jobs.status(selected)
            records = jobs.records(selected)
            key = (selected, len(records), records[-1]["step"] if records else 0)
            figure = gr.skip()
            if key != memory.get("curve"):
                figure = charts.training_figure(records, s["total"],
                                                title=f"{selected}: step {s['step']} / {s['total']}")
                memory["curve"] = key
            image = gr.skip()
            if (selected, s["checkpoint_step"]) != memory.get("strip"):
                path = jobs.loop_strip(selected)
                image = str(path) if path else None
                memory["strip"] = (selected, s["checkpoint_step"])
            tail = s.get("error") or jobs.log_tail(selected)
            return runs_frame(), run_update, progress_text(s), figure, image, tail, memory

        tick_outputs = [table, run, progress, curves, strip, logs, seen]
        timer.tick(refresh, [run, seen], tick_outputs, concurrency_limit=1, concurrency_id="admin-tick",
                   show_progress="hidden", api_name="admin_refresh", **api)
        admin.load(refresh, [run, seen], tick_outputs, **hidden)

        @guard
        def on_run(memory, request: gr.Request):
            return {k: v for k, v in (memory or {}).items() if k == "names"}  # redraw curves and strip next tick

        run.change(on_run, [seen], [seen], queue=False, **hidden)

        @guard
        def on_dataset(choice, request: gr.Request):
            return gr.Dropdown(visible=choice in FOLDER_DATASETS, choices=jobs.data_folders())

        dataset.change(on_dataset, [dataset], [folder], queue=False, **hidden)

        @guard
        def on_base(choice, request: gr.Request):
            loops = base_defaults(studio, choice)
            return (gr.skip(), gr.skip()) if loops is None else (loops["min_loops"], loops["max_loops"])

        base.change(on_base, [base], [min_loops, max_loops], queue=False, **hidden)

        @guard
        def submit(base, dataset, folder, objective, steps, batch, lr, min_loops, max_loops, schedule, every, name,
                   request: gr.Request):
            run_name = jobs.submit(name=name, base=base, dataset=dataset, folder=folder, objective=objective,
                                   steps=steps, batch_size=batch, lr=lr, min_loops=min_loops, max_loops=max_loops,
                                   lambda_schedule=schedule, checkpoint_every=every)
            log.info("admin %r started run %r", request.username, run_name)
            state = jobs.status(run_name)["state"]
            return (f"Run **{run_name}** is {state}.", gr.Dropdown(choices=jobs.names(), value=run_name), runs_frame())

        start.click(submit, [base, dataset, folder, objective, steps, batch, lr, min_loops, max_loops, schedule, every,
                             name], [message, run, table], concurrency_limit=1, concurrency_id="admin-action",
                    api_name="admin_submit", **api)

        def action(verb: str, fn: Callable[[str], Any]) -> Callable:
            @guard
            def handler(selected, request: gr.Request):
                fn(selected)
                log.info("admin %r: %s %r", request.username, verb, selected)
                return f"{verb.capitalize()}: **{selected}**.", runs_frame()
            handler.__name__ = verb
            return handler

        for button, verb, fn in ((stop, "stop", jobs.stop), (resume, "resume", jobs.resume),
                                 (publish, "publish", jobs.publish),
                                 (unpublish, "unpublish", lambda n: jobs.publish(n, published=False))):
            button.click(action(verb, fn), [run], [message, table], concurrency_limit=1, concurrency_id="admin-action",
                         api_name=f"admin_{verb}", **api)

        @guard
        def remove(selected, typed, request: gr.Request):
            jobs.delete(selected, typed)
            log.info("admin %r deleted run %r", request.username, selected)
            names = jobs.names()
            return (f"Deleted **{selected}**.", gr.Dropdown(choices=names, value=names[0] if names else None), "",
                    runs_frame())

        delete.click(remove, [run, confirm], [message, run, confirm, table], concurrency_limit=1,
                     concurrency_id="admin-action", api_name="admin_delete", **api)
    return admin


# -- serving ---------------------------------------------------------------------------------------------
@dataclass
class Admin:
    app_kwargs: dict[str, Any]  # for demo.launch(app_kwargs=…): mounts the admin app when the server starts
    jobs: JobManager  # close it after the server
    blocks: gr.Blocks
    gate: Gate


def attach(studio: Studio, password: str, runs_dir: str | Path, *, data_root: str | Path | None = None,
           threads: int = 1, eval_samples: int = 20, fail_delay_s: float = 1.0) -> Admin:
    """The admin app, mounted at /admin (behind `auth`) when a server launched with `Admin.app_kwargs` starts."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    gate = Gate(password, fail_delay_s=fail_delay_s)
    jobs = JobManager(studio, runs_dir, data_root=data_root, threads=threads, eval_samples=eval_samples)
    admin = build_admin(studio, jobs, gate)
    admin.queue(max_size=16, default_concurrency_limit=1)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        gr.mount_gradio_app(app, admin, ADMIN_PATH, auth=gate.auth, auth_message="ELT Studio admin: log in as "
                            f"{gate.user!r}", theme=THEME, css=css(), footer_links=[], show_error=True)
        app.router.routes.insert(0, app.router.routes.pop())  # before the public app's catch-all routes
        admin.run_startup_events()
        await admin.run_extra_startup_events()
        yield

    return Admin({"lifespan": lifespan}, jobs, admin, gate)
