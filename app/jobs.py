"""Fine-tuning runs as background OS processes, one at a time, that survive page reloads and app restarts.

A run lives in `runs/<name>/`, which is also its checkpoint folder (what `--out` names):

    run.json          the validated request (written once)
    status.json       state, pid, queue time, errors — rewritten atomically on every change
    output.log        stdout + stderr of the training and evaluation processes
    train_log.jsonl   one record per step, written by core.train
    config.json, model.safetensors, train_state.safetensors   the resumable checkpoint (core.train)
    metrics.json      the small per-loop evaluation (core.evaluate) after training
    loop_strip.png    the current weights at L = 1 … L_max (fixed class and seed), once per checkpoint

The training process runs exactly `python -m core.train --init-from BASE --out runs/<name> …` with
OMP_NUM_THREADS = `threads` (1 by default, so visitors keep generating) at a lower CPU priority.
States: queued → running → evaluating → finished; or failed (non-zero exit: the log's last lines are
kept), stopped (Stop), interrupted (the process died, e.g. killed or the app restarted without it).
Stopped, interrupted and failed runs resume from their last checkpoint (core.train resumes from `--out`).
No Gradio here: plain Python in, plain data out; bad input raises StudioError naming the accepted values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import checkpoint as ckpt
from core.config import LAMBDA_SCHEDULES

from app.service import STRIP_SIZE, Studio, StudioError, as_float, as_int, enlarge, labelled_strip, middle_frames

ROOT = Path(__file__).resolve().parent.parent
STATES = ("queued", "running", "evaluating", "finished", "failed", "stopped", "interrupted")
ACTIVE = ("running", "evaluating")
RESUMABLE = ("stopped", "interrupted", "failed")
BUILTIN_DATASETS = {"shapes": False, "digits": False, "moving-shapes": True}  # name -> clips?
FOLDER_DATASETS = {"imagefolder": False, "videofolder": True}
DATASETS = (*BUILTIN_DATASETS, *FOLDER_DATASETS)
OBJECTIVES = ("ilsd", "vanilla")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_STEPS, MAX_BATCH, MAX_LOOPS = 100_000, 1024, 16
LOG_TAIL = 15


@dataclass(frozen=True)
class RunRequest:
    """A validated fine-tuning request (run.json)."""

    name: str
    base: str  # checkpoint name as the app lists it
    base_path: str
    dataset: str
    folder: str | None  # relative to the data root (folder datasets only)
    objective: str
    steps: int
    batch_size: int
    lr: float
    min_loops: int
    max_loops: int
    lambda_schedule: str
    checkpoint_every: int


def _pid_alive(pid: int | None, marker: str) -> bool:
    """A live process whose command line names `marker` (a pid reused by another program is not ours)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    return marker in cmdline and ") Z " not in stat  # a zombie has finished


def tail_lines(text: str, lines: int = LOG_TAIL) -> str:
    """The last lines of a log; progress bars' carriage-return updates count as lines, blanks do not."""
    parts = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(parts[-lines:])


class JobManager:
    """Queue, processes and files of the fine-tuning runs under `runs_dir`; a thread watches the processes."""

    def __init__(self, studio: Studio, runs_dir: str | Path, *, data_root: str | Path | None = None,
                 threads: int = 1, eval_samples: int = 20, poll_s: float = 0.5, nice: int = 10,
                 python: str = sys.executable):
        self.studio = studio
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.threads, self.eval_samples, self.nice, self.python = threads, eval_samples, nice, python
        self.device = studio.runtime.device.type
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping: set[str] = set()
        self._closed = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._watch, args=(poll_s,), name="elt-jobs", daemon=True)
        self._thread.start()

    # -- files ---------------------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.runs_dir / name

    def request(self, name: str) -> RunRequest:
        return RunRequest(**json.loads((self.folder(name) / "run.json").read_text()))

    def _status(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.folder(name) / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"state": "failed", "error": "status.json is missing or corrupt"}

    def _set(self, name: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            status = {**self._status(name), **changes, "updated": time.time()}
            ckpt.write_json(self.folder(name) / "status.json", status)
        return status

    def names(self) -> list[str]:
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / "run.json").is_file()
                      and (p / "status.json").is_file())

    def records(self, name: str) -> list[dict[str, Any]]:
        """train_log.jsonl as records (a line cut short by a kill is skipped)."""
        path = self.folder(name) / "train_log.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def log_tail(self, name: str, lines: int = LOG_TAIL) -> str:
        path = self.folder(name) / "output.log"
        if not path.is_file():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 16_000))
            return tail_lines(f.read().decode(errors="replace"), lines)

    def trained_steps(self, name: str) -> int:
        try:
            return int(ckpt.read_config(self.folder(name)).get("trained_steps", 0))
        except ckpt.CheckpointError:
            return 0

    # -- what the tab shows --------------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        """State, progress (step / total, ETA) and queue position of one run."""
        if name not in self.names():
            raise StudioError(f"unknown run {name!r}; runs: {', '.join(self.names()) or 'none yet'}")
        status, req = self._status(name), self.request(name)
        records = self.records(name)
        step = records[-1]["step"] if records else 0
        recent = [r["step_s"] for r in records[-20:] if "step_s" in r]
        eta = (sum(recent) / len(recent)) * (req.steps - step) if recent and status["state"] == "running" else None
        queue = self.queue()
        return {**status, "name": name, "step": step, "total": req.steps, "eta_s": eta,
                "checkpoint_step": self.trained_steps(name),
                "queue_position": queue.index(name) + 1 if name in queue else None}

    def queue(self) -> list[str]:
        """Queued runs, first to start first."""
        queued = [(self._status(n).get("queued_at", 0), n) for n in self.names()]
        return [n for _, n in sorted(q for q in queued if self._status(q[1])["state"] == "queued")]

    def runs(self) -> list[dict[str, Any]]:
        """One row per run for the runs table, newest first."""
        rows = []
        for name in self.names():
            s, req = self.status(name), self.request(name)
            rows.append({"run": name, "state": s["state"] + (f" (#{s['queue_position']})" if s["queue_position"] else ""),
                         "step": f"{s['step']}/{s['total']}", "base": req.base,
                         "dataset": req.dataset + (f" ({req.folder})" if req.folder else ""),
                         "objective": req.objective, "published": "yes" if s.get("published") else "",
                         "created": s.get("created", 0)})
        return sorted(rows, key=lambda r: -r["created"])

    # -- validation ----------------------------------------------------------------------------------
    def data_folders(self) -> list[str]:
        """The folders directly under the data root (what a folder dataset may name)."""
        if self.data_root is None or not self.data_root.is_dir():
            return []
        return sorted(p.name for p in self.data_root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _folder_under_root(self, dataset: str, folder: Any) -> tuple[str, Path]:
        accepted = f"folders under the data root: {', '.join(self.data_folders()) or 'none'}"
        if self.data_root is None:
            raise StudioError(f"dataset {dataset!r} needs a data root, and the server was started without "
                              f"--admin-data-root; use a built-in dataset: {', '.join(BUILTIN_DATASETS)}")
        text = folder.strip() if isinstance(folder, str) else ""
        if not text:
            raise StudioError(f"dataset {dataset!r} needs a folder; {accepted}")
        relative = Path(text)
        if relative.is_absolute() or text.startswith("~"):
            raise StudioError(f"folder {text!r}: absolute paths are not accepted; give a folder relative to the "
                              f"data root ({accepted})")
        if ".." in relative.parts:
            raise StudioError(f"folder {text!r}: '..' is not accepted; {accepted}")
        resolved = (self.data_root / relative).resolve()
        if not resolved.is_relative_to(self.data_root):
            raise StudioError(f"folder {text!r} leaves the data root (a symbolic link?); {accepted}")
        if not resolved.is_dir():
            raise StudioError(f"folder {text!r} does not exist under the data root; {accepted}")
        for top, dirs, files in os.walk(resolved):
            for item in (*dirs, *files):
                path = Path(top) / item
                if path.is_symlink() and not path.resolve().is_relative_to(self.data_root):
                    raise StudioError(f"folder {text!r} holds a symbolic link leaving the data root "
                                      f"({path.relative_to(self.data_root)}); nothing was started")
        if not any(resolved.iterdir()):
            raise StudioError(f"folder {text!r} is empty; {dataset} expects one sub-folder of files per class")
        return relative.as_posix(), resolved

    def validate(self, *, name: Any, base: Any, dataset: Any, folder: Any = None, objective: Any = "ilsd",
                 steps: Any = 200, batch_size: Any = 32, lr: Any = 1e-4, min_loops: Any = 1, max_loops: Any = None,
                 lambda_schedule: Any = "linear", checkpoint_every: Any = 50) -> RunRequest:
        """A RunRequest from raw form values, or StudioError naming the problem and the accepted values."""
        if not isinstance(name, str) or not name.strip():
            raise StudioError("run name is empty; use letters, digits, '.', '_' or '-' (up to 64)")
        name = name.strip()
        if "/" in name or "\\" in name:
            raise StudioError(f"run name {name!r} holds a '/'; use letters, digits, '.', '_' or '-' (up to 64)")
        if not NAME.fullmatch(name):
            raise StudioError(f"run name {name!r} is not accepted; use letters, digits, '.', '_' or '-' "
                              "(up to 64, starting with a letter or digit)")
        if self.folder(name).exists():
            raise StudioError(f"a run named {name!r} exists already; choose another name (existing: "
                              f"{', '.join(self.names())})")
        if name in self.studio.entries:
            raise StudioError(f"{name!r} is the name of a checkpoint the app lists; choose another run name")
        if base not in self.studio.generators:
            raise StudioError(f"unknown base checkpoint {base!r}; generators: {', '.join(self.studio.generators)}")
        entry = self.studio.entry(base)
        if dataset not in DATASETS:
            raise StudioError(f"unknown dataset {dataset!r}; accepted: {', '.join(DATASETS)}")
        video = {**BUILTIN_DATASETS, **FOLDER_DATASETS}[dataset]
        if video != entry.is_video:
            kind = "a video" if entry.is_video else "an image"
            fits = [d for d, v in {**BUILTIN_DATASETS, **FOLDER_DATASETS}.items() if v == entry.is_video]
            raise StudioError(f"{base} is {kind} generator; dataset {dataset!r} does not fit it "
                              f"(accepted: {', '.join(fits)})")
        relative = None
        if dataset in FOLDER_DATASETS:
            relative, resolved = self._folder_under_root(dataset, folder)
            self._check_dataset(dataset, resolved, entry)
        if objective not in OBJECTIVES:
            raise StudioError(f"unknown objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
        steps = as_int("steps", steps, 1, MAX_STEPS)
        base_loops = entry.experiment.model.max_loops
        max_loops = as_int("L_max", base_loops if max_loops in (None, "") else max_loops, 1, MAX_LOOPS)
        min_loops = as_int("L_min", min_loops, 1, MAX_LOOPS)
        if objective == "ilsd" and not min_loops < max_loops:
            raise StudioError(f"ILSD needs L_min < L_max (students at L_min … L_max − 1), got L_min {min_loops}, "
                              f"L_max {max_loops}")
        if lambda_schedule not in LAMBDA_SCHEDULES:
            raise StudioError(f"unknown λ schedule {lambda_schedule!r}; accepted: {', '.join(LAMBDA_SCHEDULES)}")
        return RunRequest(name=name, base=base, base_path=str(entry.path), dataset=dataset, folder=relative,
                          objective=objective, steps=steps, batch_size=as_int("batch size", batch_size, 1, MAX_BATCH),
                          lr=as_float("learning rate", lr, 1e-7, 1.0), min_loops=min_loops, max_loops=max_loops,
                          lambda_schedule=lambda_schedule,
                          checkpoint_every=as_int("checkpoint interval", checkpoint_every, 1, steps,
                                                  " (steps; at most the run's steps)"))

    @staticmethod
    def _check_dataset(dataset: str, folder: Path, entry) -> None:
        from core.data import DatasetError, get_dataset

        try:
            data = get_dataset(dataset, "train", root=str(folder))
            if len(data) == 0:
                raise DatasetError("no files found")
        except DatasetError as error:
            raise StudioError(f"folder {folder.name!r} is not a usable {dataset}: {error}") from None

    # -- actions -------------------------------------------------------------------------------------
    def submit(self, **form: Any) -> str:
        """Validate and queue a run; it starts when no other run is active.  Returns its name."""
        with self._lock:
            req = self.validate(**form)
            folder = self.folder(req.name)
            folder.mkdir(parents=True)
            ckpt.write_json(folder / "run.json", asdict(req))
            now = time.time()
            ckpt.write_json(folder / "status.json", {"state": "queued", "pid": None, "created": now,
                                                      "queued_at": now, "updated": now, "published": False})
        self._tick()
        return req.name

    def _require(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.names():
            raise StudioError(f"unknown run {name!r}; runs: {', '.join(self.names()) or 'none yet'}")
        return name

    def stop(self, name: Any) -> str:
        """End a run's process (it resumes from its last checkpoint) or take it off the queue."""
        with self._lock:
            name = self._require(name)
            state = self._status(name)["state"]
            if state == "queued":
                self._set(name, state="stopped")
                return "stopped"
            if state not in ACTIVE:
                raise StudioError(f"run {name!r} is {state}; only a queued, running or evaluating run can be stopped")
            self._stopping.add(name)
            proc = self._procs.get(name)
            pid = proc.pid if proc else self._status(name).get("pid")
            try:
                os.killpg(pid, signal.SIGTERM)  # its own process group: the process and any children
            except (OSError, TypeError):
                pass
            if proc is None:  # adopted after a restart: no handle to wait on
                self._set(name, state="stopped", pid=None)
                self._stopping.discard(name)
        return "stopping"

    def resume(self, name: Any) -> None:
        """Queue a stopped, interrupted or failed run again; it continues from its last checkpoint."""
        with self._lock:
            name = self._require(name)
            state = self._status(name)["state"]
            if state not in RESUMABLE:
                raise StudioError(f"run {name!r} is {state}; only {', '.join(RESUMABLE)} runs can be resumed")
            self._set(name, state="queued", queued_at=time.time(), error=None)
        self._tick()

    def delete(self, name: Any, confirm: Any) -> None:
        """Delete a run's folder; `confirm` must repeat its name; an active run must be stopped first."""
        with self._lock:
            name = self._require(name)
            if confirm != name:
                raise StudioError(f"to delete run {name!r}, type its name exactly in the confirmation box")
            state = self._status(name)["state"]
            if state in ACTIVE:
                raise StudioError(f"run {name!r} is {state}; stop it before deleting it")
            if self._status(name).get("published"):
                self.studio.remove_root(self.folder(name))
            shutil.rmtree(self.folder(name))

    def publish(self, name: Any, published: bool = True) -> str:
        """Show (or hide) a finished run's checkpoint in Generate, Compare and Checkpoints for every visitor."""
        with self._lock:
            name = self._require(name)
            state = self._status(name)["state"]
            if published and state != "finished":
                raise StudioError(f"run {name!r} is {state}; only a finished run can be published")
            if published and name in self.studio.entries and not self._status(name).get("published"):
                raise StudioError(f"a checkpoint named {name!r} is listed already; delete this run or rename it")
            self._set(name, published=published)
            if published:
                self.studio.add_root(self.folder(name))
                entry = self.studio.entries.get(name)
                if entry is None or entry.error:
                    self.studio.remove_root(self.folder(name))
                    self._set(name, published=False)
                    raise StudioError(f"run {name!r} cannot be published: {entry.error if entry else 'not found'}")
            else:
                self.studio.remove_root(self.folder(name))
        return name

    # -- processes -----------------------------------------------------------------------------------
    def train_command(self, req: RunRequest) -> list[str]:
        """Exactly what the run executes (and what a terminal would)."""
        command = [self.python, "-m", "core.train", "--init-from", req.base_path, "--out", str(self.folder(req.name)),
                   "--device", self.device, "--dataset", req.dataset, "--mode", req.objective,
                   "--steps", str(req.steps), "--batch-size", str(req.batch_size), "--lr", repr(req.lr),
                   "--min-loops", str(req.min_loops), "--lambda-schedule", req.lambda_schedule,
                   "--checkpoint-every", str(req.checkpoint_every), "--log-every", "1",
                   "--warmup-steps", str(max(1, req.steps // 20))]
        if req.folder is not None:
            command += ["--data-root", str(self.data_root / req.folder)]
        return command + ["--set", f"max_loops={req.max_loops}"]

    def eval_command(self, req: RunRequest) -> list[str]:
        samples = str(self.eval_samples)
        return [self.python, "-m", "core.evaluate", "--checkpoint", str(self.folder(req.name)), "--samples", samples,
                "--batch-size", samples, "--reference-count", str(min(1000, max(100, 10 * self.eval_samples))),
                "--device", self.device, "--write-metrics",
                "--loops", *map(str, range(1, req.max_loops + 1))]

    def _spawn(self, name: str, command: list[str], state: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TQDM_MININTERVAL": "2", "PYTHONUNBUFFERED": "1"}
        env.pop("ELT_ADMIN_PASSWORD", None)  # the secret never reaches a child process
        with (self.folder(name) / "output.log").open("ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, self.nice)  # visitors' requests come first
        except (OSError, AttributeError):
            pass
        self._procs[name] = proc
        self._set(name, state=state, pid=proc.pid, **{f"{state}_since": time.time()})

    def _recover(self) -> None:
        """After a restart: an active run whose process is gone is interrupted; published runs are listed."""
        for name in self.names():
            status = self._status(name)
            if status["state"] in ACTIVE and not _pid_alive(status.get("pid"), str(self.folder(name))):
                self._set(name, state="interrupted", pid=None)
            if status.get("published"):
                self.studio.add_root(self.folder(name))

    def _ended(self, name: str, state: str, code: int) -> None:
        """A process of run `name` exited with `code` while the run was `state`."""
        if name in self._stopping:
            self._stopping.discard(name)
            self._set(name, state="stopped", pid=None)
        elif code < 0 or code in (130, 137, 143):  # killed by a signal: resumable
            self._set(name, state="interrupted", pid=None)
        elif state == "running" and code == 0:
            self._spawn(name, self.eval_command(self.request(name)), "evaluating")
        elif state == "running":
            self._set(name, state="failed", pid=None, error=self.log_tail(name))
        else:  # evaluation: the checkpoint is complete whatever happened
            self._set(name, state="finished", pid=None, finished=time.time(),
                      eval_error=None if code == 0 else self.log_tail(name, 5))

    def _tick(self) -> None:
        with self._lock:
            for name, proc in list(self._procs.items()):
                code = proc.poll()
                if code is not None:
                    del self._procs[name]
                    self._ended(name, self._status(name)["state"], code)
            active = False
            for name in self.names():
                status = self._status(name)
                if status["state"] in ACTIVE:
                    if name in self._procs or _pid_alive(status.get("pid"), str(self.folder(name))):
                        active = True  # a process adopted after a restart counts until it is gone
                    else:
                        self._set(name, state="interrupted", pid=None)
            queue = self.queue()
            if not active and queue and not self._closed.is_set():
                self._spawn(queue[0], self.train_command(self.request(queue[0])), "running")

    def _watch(self, poll_s: float) -> None:
        while not self._closed.wait(poll_s):
            try:
                self._tick()
            except Exception as error:  # noqa: BLE001 — the watcher must outlive one bad run folder
                print(f"jobs: {error}", file=sys.stderr)

    def close(self, stop_runs: bool = True) -> None:
        """Stop watching; running processes are ended (their runs show `interrupted`, resumable)."""
        self._closed.set()
        self._thread.join(timeout=5)
        with self._lock:
            for name, proc in list(self._procs.items()):
                if stop_runs:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    self._set(name, state="interrupted", pid=None)
            self._procs.clear()

    # -- the current weights at every loop count -----------------------------------------------------
    def loop_strip(self, name: str, class_index: int = 0, seed: int = 0, steps: int = 8) -> Path | None:
        """PNG of the last checkpoint at L = 1 … L_max (fixed class and seed); redrawn once per checkpoint."""
        step = self.trained_steps(name)
        folder = self.folder(name)
        image = folder / "loop_strip.png"
        if not step:
            return None
        if image.is_file() and self._status(name).get("strip_step") == step:
            return image
        from core.media import png_bytes
        from core.pipeline import Pipeline

        try:
            pipeline = Pipeline.load(folder, self.studio.runtime)
        except Exception:  # noqa: BLE001 — a checkpoint mid-write: the previous strip stays
            return image if image.is_file() else None
        sampler = pipeline.sampler(steps=min(steps, pipeline.sampler().steps))
        top = pipeline.config.max_loops
        tiles = [middle_frames(pipeline.generate([class_index], loops, sampler, seed))[0] for loops in range(1, top + 1)]
        import numpy as np

        strip = labelled_strip(enlarge(np.stack(tiles), STRIP_SIZE), [f"L={L}" for L in range(1, top + 1)], top,
                               f"step {step}: {pipeline.class_names[class_index]}, seed {seed}, {sampler.steps} steps")
        ckpt.write_bytes(image, png_bytes(strip))
        self._set(name, strip_step=step)
        return image
