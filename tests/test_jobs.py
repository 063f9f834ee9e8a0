"""The fine-tuning job manager: real `python -m core.train` processes on a tiny checkpoint.

Queue and states, kill -9 mid-run (interrupted, resumed with at most one checkpoint interval lost and
every step logged once), an app restart, stop, a failing run, publish / delete, and bad input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from app.jobs import JobManager, tail_lines
from app.service import Studio, StudioError
from conftest import copy_tiny

FORM = dict(base="tiny-elt", dataset="shapes", objective="ilsd", steps=6, batch_size=8, lr=1e-3, min_loops=1,
            lambda_schedule="linear", checkpoint_every=3)


@pytest.fixture
def roots(tiny_checkpoints, tmp_path):
    """A private copy of the tiny checkpoints (some tests break one)."""
    root = copy_tiny(tiny_checkpoints, tmp_path / "checkpoints")
    data = tmp_path / "data"
    (data / "empty").mkdir(parents=True)
    for cls in ("a", "b"):
        (data / "pics" / cls).mkdir(parents=True)
        from PIL import Image

        for i in range(2):
            Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(data / "pics" / cls / f"{i}.png")
    outside = tmp_path / "outside"
    (outside / "c").mkdir(parents=True)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    return {"checkpoints": root, "data": data, "runs": tmp_path / "runs"}


@pytest.fixture
def make_jobs(roots):
    made = []

    def make(studio: Studio | None = None) -> JobManager:
        studio = studio or Studio([roots["checkpoints"]], device="cpu")
        jobs = JobManager(studio.checkpoints, roots["runs"],
                          data_root=roots["data"], eval_samples=4, poll_s=0.2)
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.close()


def wait_for(predicate, timeout: float = 900, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def logged_steps(jobs: JobManager, name: str) -> list[int]:
    return [json.loads(line)["step"] for line in (jobs.folder(name) / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("change, message", [
    ({"name": ""}, "run name is empty"),
    ({"name": "a/b"}, "holds a '/'"),
    ({"name": "-x"}, "letters, digits"),
    ({"name": "tiny-elt"}, "name of a checkpoint"),
    ({"base": "nope"}, "unknown base checkpoint 'nope'; generators: tiny-elt"),
    ({"base": "tiny-tokenizer"}, "unknown base checkpoint"),
    ({"dataset": "cifar"}, "unknown dataset 'cifar'; accepted: shapes, digits, moving-shapes, imagefolder"),
    ({"dataset": "moving-shapes"}, "image generator; dataset 'moving-shapes' does not fit it (accepted: shapes"),
    ({"steps": "abc"}, "steps must be a whole number"),
    ({"steps": 0}, "steps must be between 1 and"),
    ({"batch_size": 1.5}, "batch size must be a whole number"),
    ({"lr": -1}, "learning rate must be between"),
    ({"lr": "fast"}, "learning rate must be a number"),
    ({"min_loops": 3, "max_loops": 3}, "ILSD needs L_min < L_max"),
    ({"max_loops": 99}, "L_max must be between 1 and 16"),
    ({"checkpoint_every": 7}, "checkpoint interval must be between 1 and 6"),
    ({"lambda_schedule": "fast"}, "unknown λ schedule 'fast'; accepted: linear, cosine"),
    ({"objective": "dense"}, "unknown objective 'dense'; accepted: ilsd, vanilla"),
    ({"dataset": "imagefolder", "folder": ""}, "needs a folder; folders under the data root: empty, escape, pics"),
    ({"dataset": "imagefolder", "folder": "../outside"}, "'..' is not accepted"),
    ({"dataset": "imagefolder", "folder": "/etc"}, "absolute paths are not accepted"),
    ({"dataset": "imagefolder", "folder": "missing"}, "does not exist under the data root"),
    ({"dataset": "imagefolder", "folder": "empty"}, "is empty"),
    ({"dataset": "imagefolder", "folder": "escape"}, "leaves the data root"),
])
def test_bad_input_is_one_clear_message_and_starts_nothing(make_jobs, roots, change, message):
    jobs = make_jobs()
    with pytest.raises(StudioError, match=None) as error:
        jobs.submit(**{**FORM, "name": "run", **change})
    assert message in str(error.value)
    assert jobs.names() == [] and list(roots["runs"].iterdir()) == []


def test_a_folder_dataset_needs_a_data_root_and_a_symlink_inside_may_not_leave_it(make_jobs, roots, tmp_path):
    jobs = make_jobs()
    (roots["data"] / "pics" / "b" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(StudioError, match="symbolic link leaving the data root"):
        jobs.submit(**{**FORM, "name": "run", "dataset": "imagefolder", "folder": "pics"})
    bare = JobManager(jobs.studio, roots["runs"], data_root=None, poll_s=0.2)
    try:
        with pytest.raises(StudioError, match="without --admin-data-root; use a built-in dataset"):
            bare.submit(**{**FORM, "name": "run", "dataset": "imagefolder", "folder": "pics"})
    finally:
        bare.close()


def test_an_existing_run_name_is_refused_and_kept(make_jobs):
    jobs = make_jobs()
    jobs.submit(**{**FORM, "name": "first", "steps": 3, "checkpoint_every": 3})
    run_json = (jobs.folder("first") / "run.json").read_text()
    with pytest.raises(StudioError, match="a run named 'first' exists already"):
        jobs.submit(**{**FORM, "name": "first", "steps": 50})
    assert (jobs.folder("first") / "run.json").read_text() == run_json


def test_runs_queue_train_in_their_own_process_evaluate_and_publish(make_jobs, roots):
    studio = Studio([roots["checkpoints"]], device="cpu")
    jobs = make_jobs(studio)
    first = jobs.submit(**{**FORM, "name": "first"})
    second = jobs.submit(**{**FORM, "name": "second", "dataset": "digits", "steps": 4, "checkpoint_every": 2,
                            "objective": "vanilla", "max_loops": 2})
    # one run at a time: the second waits, visibly
    assert jobs.status(second)["state"] == "queued" and jobs.status(second)["queue_position"] == 1
    wait_for(lambda: jobs.status(first)["state"] == "running" and jobs.status(first)["pid"], what="first running")
    pid = jobs.status(first)["pid"]
    assert pid != os.getpid()
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert command[1:5] == [b"-m", b"core.train", b"--init-from", str(roots["checkpoints"] / "tiny-elt").encode()]
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    assert environ[b"OMP_NUM_THREADS"] == b"1" and b"ELT_ADMIN_PASSWORD" not in environ
    assert jobs.status(second)["state"] == "queued"
    wait_for(lambda: jobs.status(second)["state"] == "finished", what="both runs finished")
    assert jobs.status(first)["state"] == "finished"
    for name, steps in ((first, 6), (second, 4)):
        assert logged_steps(jobs, name) == list(range(1, steps + 1))
        metrics = json.loads((jobs.folder(name) / "metrics.json").read_text())
        assert [row["loops"] for row in metrics["rows"]] == list(range(1, jobs.request(name).max_loops + 1))
        assert metrics["samples"] == 4
    classes = json.loads((jobs.folder(second) / "config.json").read_text())["class_names"]
    assert classes != json.loads((jobs.folder(first) / "config.json").read_text())["class_names"]  # digits: new list
    strip = jobs.loop_strip(first)
    assert strip is not None and strip.stat().st_size > 500

    with pytest.raises(StudioError, match="only stopped, interrupted, failed runs can be resumed"):
        jobs.resume(first)
    found = jobs.studio  # the app's checkpoints: what the admin publishes to
    assert found is studio.checkpoints and first not in found.generators
    jobs.publish(first)
    assert first in found.generators and found.entries[first].location == first  # no server path
    events = list(studio.generate(first, 0, 2, 2, 1.0, 0))
    assert events[-1].pixels.shape[0] == 1
    # after a restart the published run is listed again
    restarted = make_jobs(Studio([roots["checkpoints"]], device="cpu"))
    assert first in restarted.studio.generators and restarted.status(first)["state"] == "finished"
    jobs.publish(first, published=False)
    assert first not in found.generators

    with pytest.raises(StudioError, match="type its name exactly"):
        jobs.delete(first, "firs")
    assert jobs.folder(first).is_dir()
    jobs.delete(first, first)
    assert not jobs.folder(first).exists() and jobs.names() == [second]


def test_kill_9_mid_run_is_interrupted_and_resumes_from_the_last_checkpoint(make_jobs):
    jobs = make_jobs()
    name = jobs.submit(**{**FORM, "name": "killed", "steps": 14, "checkpoint_every": 3})
    wait_for(lambda: jobs.status(name)["checkpoint_step"] >= 3 and jobs.status(name)["step"] >= 5, what="progress")
    status = jobs.status(name)
    os.kill(status["pid"], signal.SIGKILL)
    wait_for(lambda: jobs.status(name)["state"] == "interrupted", timeout=30, what="interrupted")
    after = jobs.status(name)
    lost = after["step"] - after["checkpoint_step"]
    assert 0 <= lost <= 3 and after["pid"] is None
    jobs.resume(name)
    wait_for(lambda: jobs.status(name)["state"] == "finished", what="resumed run finished")
    assert logged_steps(jobs, name) == list(range(1, 15))  # each step once: the lost steps were re-run, not doubled


def test_stop_ends_the_process_and_a_restart_shows_interrupted(make_jobs, roots):
    jobs = make_jobs()
    name = jobs.submit(**{**FORM, "name": "stopped", "steps": 400, "checkpoint_every": 2})
    wait_for(lambda: jobs.status(name)["step"] >= 2, what="running")
    pid = jobs.status(name)["pid"]
    jobs.stop(name)
    wait_for(lambda: jobs.status(name)["state"] == "stopped", timeout=30, what="stopped")
    assert not Path(f"/proc/{pid}").exists() or b"core.train" not in Path(f"/proc/{pid}/cmdline").read_bytes()

    # an app restart while a run's process is gone: the tab shows it interrupted, resumable
    dead = subprocess.Popen(["true"])
    dead.wait()
    status = json.loads((jobs.folder(name) / "status.json").read_text())
    (jobs.folder(name) / "status.json").write_text(json.dumps({**status, "state": "running", "pid": dead.pid}))
    jobs.close()
    restarted = make_jobs()
    assert restarted.status(name)["state"] == "interrupted"


def test_a_failing_run_shows_failed_with_its_last_log_lines(make_jobs, roots):
    studio = Studio([roots["checkpoints"]], device="cpu")
    (roots["checkpoints"] / "tiny-elt" / "model.safetensors").write_bytes(b"broken")  # after the app scanned it
    jobs = make_jobs(studio)
    name = jobs.submit(**{**FORM, "name": "fails"})
    wait_for(lambda: jobs.status(name)["state"] == "failed", what="failed")
    status = jobs.status(name)
    assert "error: " in status["error"] and "not a readable safetensors file" in status["error"]
    assert (jobs.folder(name) / "run.json").is_file()  # nothing else is lost


def test_tail_lines_counts_progress_bar_updates():
    assert tail_lines("a\rb\r\nc\n\n d \n", 2) == "c\n d"
