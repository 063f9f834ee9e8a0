"""app/static.py: content-addressed static files for the page, and nothing else."""

import gzip
import os

import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from app.static import Folder, Site, StaticFiles


async def fallthrough(scope, receive, send):
    await PlainTextResponse("app")(scope, receive, send)


@pytest.fixture
def served(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "ort.wasm.min.mjs").write_text("export const x = 1;\n" * 200)
    (runtime / "ort.wasm").write_bytes(bytes(range(256)) * 64)
    exports = tmp_path / "exports"
    (exports / "shapes-elt-0123abcd-v1").mkdir(parents=True)
    (exports / "shapes-elt-0123abcd-v1" / "export.json").write_text('{"family": "maskgit"}')
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    os.symlink(secret, exports / "shapes-elt-0123abcd-v1" / "leak.json")  # planted in the export cache
    os.symlink(tmp_path, exports / "linked-v1")
    site = Site({"runtime": Folder(runtime, versioned=True), "export": Folder(exports, versioned=False)})
    return site, TestClient(StaticFiles(fallthrough, site=site)), str(tmp_path)


def test_serves_by_content_with_long_cache_and_etag(served):
    site, client, _ = served
    url = "/" + site.url("runtime") + "ort.wasm.min.mjs"
    first = client.get(url, headers={"accept-encoding": "identity"})
    assert first.status_code == 200 and first.text.startswith("export const")
    assert first.headers["content-type"].startswith("text/javascript")
    assert "immutable" in first.headers["cache-control"] and "max-age=31536000" in first.headers["cache-control"]
    again = client.get(url, headers={"if-none-match": first.headers["etag"], "accept-encoding": "identity"})
    assert again.status_code == 304 and again.content == b""
    packed = client.get(url, headers={"accept-encoding": "gzip"})  # the client decodes it
    assert packed.headers["content-encoding"] == "gzip" and packed.text == first.text
    assert packed.headers["etag"] != first.headers["etag"]
    export = client.get("/" + site.file_url("export", site.folders["export"].path
                                                  / "shapes-elt-0123abcd-v1" / "export.json"))
    assert export.json() == {"family": "maskgit"}
    assert client.get("/other").text == "app"  # everything else goes to the app


def test_a_new_file_version_gets_a_new_url(served, tmp_path):
    site, _, _ = served
    before = site.url("runtime")
    (tmp_path / "runtime" / "ort.wasm").write_bytes(b"changed")
    assert Site(site.folders).url("runtime") != before


@pytest.mark.parametrize("path", [
    "/studio-static/runtime/{v}/../secret.txt",
    "/studio-static/runtime/{v}/%2e%2e/secret.txt",
    "/studio-static/runtime/{v}/%2e%2e%2fsecret.txt",
    "/studio-static/runtime/{v}/..%2fsecret.txt",
    "/studio-static/runtime/{v}/{root}/secret.txt",
    "/studio-static/runtime/{v}//etc/passwd",
    "/studio-static/runtime/0000000000000000/ort.wasm.min.mjs",  # an unknown hash
    "/studio-static/runtime/{v}/missing.mjs",
    "/studio-static/export/shapes-elt-0123abcd-v1/leak.json",  # a symlink planted in the export cache
    "/studio-static/export/linked-v1/secret.txt",  # a linked folder
    "/studio-static/export/../secret.txt",
    "/studio-static/export/%2e%2e/secret.txt",
    "/studio-static/export/shapes-elt-0123abcd-v1/.hidden",
    "/studio-static/elsewhere/x/y",
])
def test_refuses_everything_outside_the_served_files(served, path):
    site, client, root = served
    path = path.format(v=site.versions["runtime"], root=root.lstrip("/"))
    answer = client.get(path)
    assert answer.status_code == 404, path
    assert root not in answer.text and "password" not in answer.text


def test_only_reads(served):
    site, client, _ = served
    assert client.post("/" + site.url("runtime") + "ort.wasm").status_code == 405
