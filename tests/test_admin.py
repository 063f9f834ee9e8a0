"""Security of the admin app: off without a secret; with one, refused without credentials whatever the route.

Every admin handler is called without credentials — by plain HTTP POST to the queue and API routes of
both apps, with every fn index, and by gradio_client — and nothing on disk changes.  The public page's
config has no admin component, a wrong password is refused (and logged without the password).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.jobs import _pid_alive
from conftest import copy_tiny, launched_app, load_script
from test_jobs import wait_for

PASSWORD = "correct horse battery staple"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def admin_server(tiny_checkpoints, tmp_path_factory):
    root = copy_tiny(tiny_checkpoints, tmp_path_factory.mktemp("admin-checkpoints"))
    runs = tmp_path_factory.mktemp("admin-runs")
    # a stopped run: resume, delete, publish or stop would each change these files
    request = {"name": "kept", "base": "tiny-elt", "base_path": str(root / "tiny-elt"), "dataset": "shapes",
               "folder": None, "objective": "ilsd", "steps": 4, "batch_size": 8, "lr": 0.001, "min_loops": 1,
               "max_loops": 3, "lambda_schedule": "linear", "checkpoint_every": 2}
    (runs / "kept").mkdir()
    (runs / "kept" / "run.json").write_text(json.dumps(request))
    (runs / "kept" / "status.json").write_text(json.dumps({"state": "stopped", "pid": None, "created": 1.0,
                                                           "queued_at": 1.0, "published": False}))
    with launched_app([root], admin=dict(password=PASSWORD, runs_dir=runs, eval_samples=2, fail_delay_s=0.05)) as app:
        app["runs"] = runs
        yield app


def join(url: str, fn_index: int, data: list, session: str) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                      json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                            "trigger_id": None})


def test_admin_handlers_refuse_calls_without_credentials(admin_server):
    url, runs = admin_server["url"], admin_server["runs"]
    admin = admin_server["admin"]
    before = snapshot(runs)
    admin_url = url + "admin/"
    assert httpx.get(admin_url + "config", timeout=30).status_code in (401, 403)
    count = len(admin.blocks.fns)
    assert count >= 8
    for index, fn in admin.blocks.fns.items():
        data = ["kept"] * len(fn.inputs)  # a run name wherever a value goes: would act on "kept"
        response = join(admin_url, index, data, f"anon{index}")
        assert response.status_code in (401, 403), (index, response.status_code, response.text[:200])
        events = httpx.get(f"{admin_url}gradio_api/queue/data?session_hash=anon{index}", timeout=30)
        assert events.status_code in (401, 403)
        for route in (f"gradio_api/run/{fn.api_name}", f"gradio_api/call/{fn.api_name}", "gradio_api/run/predict"):
            response = httpx.post(admin_url + route, json={"data": data, "fn_index": index}, timeout=30)
            assert response.status_code in (401, 403, 404, 405), (route, response.status_code)
    # the public app's queue knows no admin handler: every fn index past its own is refused
    public = admin_server["demo"]
    for index in range(len(public.fns), len(public.fns) + count):
        response = join(url, index, ["kept"], f"pub{index}")
        assert response.status_code >= 400 or "error" in response.text.lower()
    with pytest.raises(Exception):
        Client(admin_url, verbose=False)
    with pytest.raises(Exception):
        Client(admin_url, auth=("admin", "wrong"), verbose=False)
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    names = {*api["named_endpoints"], *map(str, api["unnamed_endpoints"])}
    assert not any(word in name for name in names for word in ("admin", "submit", "publish", "resume", "delete"))
    time.sleep(1.5)  # a refused call that had started a run would show by now
    assert snapshot(runs) == before
    assert admin.jobs.status("kept")["state"] == "stopped"


def test_the_guard_fails_closed_on_a_request_without_the_admin_user(admin_server):
    import gradio as gr

    gate = admin_server["admin"].gate
    calls = []

    @gate.guard
    def act(name, request: gr.Request):
        calls.append(name)
        return name

    for request in (None, gr.Request(), gr.Request(username="visitor"), gr.Request(username="")):
        with pytest.raises(gr.Error, match="not authorised"):
            act("x", request)
    assert calls == []
    assert act("x", gr.Request(username="admin")) == "x" and calls == ["x"]


def test_the_public_page_has_no_admin_component(admin_server):
    config = httpx.get(admin_server["url"] + "config", timeout=30).json()
    text = json.dumps(config)
    assert "admin-" not in text and "Start run" not in text and "Training curves" not in text
    page = httpx.get(admin_server["url"], timeout=30).text
    assert "admin-start" not in page


def test_visitors_see_checkpoint_names_not_server_paths(admin_server):
    root = admin_server["root"]
    (root / "tiny-elt" / "metrics.json").write_text("{corrupt")
    try:
        summary = Client(admin_server["url"], verbose=False).predict("tiny-elt", api_name="/inspect")[0]
    finally:
        (root / "tiny-elt" / "metrics.json").unlink()
    assert "`tiny-elt`" in summary and "corrupt JSON" in summary
    assert str(root) not in summary and str(root.resolve()) not in summary
    config = Client(admin_server["url"], verbose=False).predict("tiny-elt", api_name="/inspect")[4]
    assert config["experiment"]["name"] and str(root.resolve().parent) not in json.dumps(config)
    found = admin_server["studio"].checkpoints
    published = {"train": {"data_root": "/srv/elt/data/my-folder", "tokenizer": "checkpoints/shapes-tokenizer",
                           "init_from": str(root.resolve() / "tiny-elt")},  # how an admin run's config names them
                 "layers": ["/srv/elt/checkpoints/x", 3]}
    assert found.public_config(published) == {"train": {"data_root": "…/my-folder",
                                                         "tokenizer": "checkpoints/shapes-tokenizer",
                                                         "init_from": "tiny-elt"},
                                               "layers": ["…/x", 3]}
    assert found.public(f"{root}/x/model.safetensors: missing") == "x/model.safetensors: missing"


def test_a_wrong_password_is_refused_and_logged_without_it(admin_server, caplog):
    url = admin_server["url"] + "admin/"
    with caplog.at_level(logging.INFO, logger="elt.admin"), httpx.Client(timeout=30) as session:
        wrong = httpx.post(url + "login", data={"username": "admin", "password": "hunter2"}, timeout=30)
        assert wrong.status_code >= 400
        right = session.post(url + "login", data={"username": "admin", "password": PASSWORD})
        assert right.status_code == 200
        assert session.get(url + "config").status_code == 200  # logged in (session cookie): the admin app is there
    text = caplog.text
    assert "failed admin login for user 'admin'" in text
    assert "hunter2" not in text and PASSWORD not in text


def test_without_a_secret_nothing_admin_exists(tiny_checkpoints):
    with launched_app([tiny_checkpoints["tiny-elt"].parent]) as app:
        for path in ("admin/", "admin/config", "admin/login", "admin/gradio_api/info"):
            assert httpx.get(app["url"] + path, timeout=30).status_code == 404
        text = json.dumps(httpx.get(app["url"] + "config", timeout=30).json())
        assert "admin-" not in text and "Start run" not in text


def test_the_secret_comes_from_a_file_or_the_environment_never_empty(tmp_path):
    from app.admin import PASSWORD_ENV, AdminConfigError, Gate, load_secret

    env = {PASSWORD_ENV: "from-env"}
    assert load_secret(None, env) == "from-env" and PASSWORD_ENV not in env  # popped: children never see it
    assert load_secret(None, {}) is None
    file = tmp_path / "secret"
    file.write_text("from-file\n")
    assert load_secret(str(file), {PASSWORD_ENV: "x"}) == "from-file"
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        if bad.name == "empty":
            bad.write_text("\n")
        with pytest.raises(AdminConfigError):
            load_secret(str(bad), {})
    with pytest.raises(AdminConfigError):
        load_secret(None, {PASSWORD_ENV: ""})
    gate = Gate("pw", fail_delay_s=0)
    assert gate.check("admin", "pw") and not gate.check("admin", "PW") and not gate.check("root", "pw")


def test_stopping_the_server_with_sigterm_ends_its_training_run(tiny_checkpoints, tmp_path):
    root, runs = copy_tiny(tiny_checkpoints, tmp_path / "checkpoints"), tmp_path / "runs"
    process, url = load_script("bench_app").launch([root], tmp_path / "app.log", ["--admin-runs", str(runs)],
                                                   env={"ELT_ADMIN_PASSWORD": PASSWORD}, timeout_s=120)
    status = runs / "long" / "status.json"
    try:
        admin = Client(url + "admin/", auth=("admin", PASSWORD), verbose=False)
        admin.predict("tiny-elt", "shapes", None, "ilsd", 100_000, 8, 1e-4, 1, None, "linear", 1000, "long",
                      api_name="/admin_submit")
        wait_for(lambda: json.loads(status.read_text()).get("pid"), timeout=120, what="the run's process")
        pid = json.loads(status.read_text())["pid"]
    finally:
        process.terminate()  # SIGTERM, as `kill` or a service manager sends it
        process.wait(timeout=60)
    marker = str(runs / "long")
    try:
        wait_for(lambda: not _pid_alive(pid, marker), timeout=30, what="the training process to end with the server")
    finally:
        if _pid_alive(pid, marker):
            os.kill(pid, signal.SIGKILL)
