"""The page's static files, addressed by content: the runtime builds, the page's JS modules and the exports.

    /studio-static/<kind>/<version>/<file>

`kind` is one of the folders below; `version` names the folder's content (a digest of every file in it for
the runtime and the page's modules; an export folder's own name, which holds its weights' SHA-256 and the
export format, for exports), so a URL's bytes never change and are served with a one-year `immutable`
cache lifetime and a strong ETag: a returning visitor downloads nothing again, and new weights or a new
runtime get new URLs.  The route answers for those folders and nothing else: a name that is not a plain
file directly inside one of them (`..`, encoded or not, absolute paths, sub-folders, symlinks, an unknown
version) gets a bare 404 that names no server path.  Large files go gzip-compressed where the browser
accepts it, compressed once and kept.

An ASGI middleware, so it composes with the app's other middleware (`CrossOriginIsolation`) and needs no
route inside Gradio's app.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PAGE_JS = ASSETS / "browser"  # the page's modules (studio.js and the samplers it imports)
ORT_WEB = ASSETS / "vendor" / "onnxruntime-web"  # the runtime builds (README there)
PREFIX = "/studio-static/"
IMMUTABLE = b"public, max-age=31536000, immutable"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # one path segment; no "..", no leading dot, no separators
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}
COMPRESS = (".mjs", ".js", ".wasm", ".json", ".onnx")
MIN_COMPRESS = 1024


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def direct_child(folder: Path, name: str, *, directory: bool = False) -> Path | None:
    """folder/name if it is a regular file (or, with `directory`, a folder) directly inside folder and not a
    link, else None: the one rule for what the route may answer with."""
    if not NAME.match(name):
        return None
    path = folder / name
    if path.is_symlink() or not (path.is_dir() if directory else path.is_file()):
        return None
    return path if path.resolve().parent == folder.resolve() else None


@dataclass(frozen=True)
class Folder:
    """One served folder. `versioned`: its URLs carry a digest of its whole content (computed once; the folder
    is part of the install and does not change while the app runs). Otherwise each sub-folder is a version
    named by its content (the export cache: one folder per checkpoint weights and export format)."""

    path: Path
    versioned: bool

    def version(self) -> str:
        files = sorted(p for p in self.path.iterdir() if direct_child(self.path, p.name))
        listing = "".join(f"{p.name}\0{file_digest(p)}\n" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


@dataclass
class Site:
    """The served folders and the URLs of their files (relative to the app's root)."""

    folders: dict[str, Folder]
    versions: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.versions = {kind: folder.version() for kind, folder in self.folders.items() if folder.versioned}

    def url(self, kind: str) -> str:
        """The URL folder (with a trailing slash) of a versioned folder."""
        return f"{PREFIX[1:]}{kind}/{self.versions[kind]}/"

    def file_url(self, kind: str, path: Path) -> str:
        """The URL of a file inside a served folder: a versioned folder's file, or a file of one of an
        unversioned folder's sub-folders (an export)."""
        root = self.folders[kind].path.resolve()
        relative = path.resolve().relative_to(root)
        if self.folders[kind].versioned:
            return self.url(kind) + relative.as_posix()
        return f"{PREFIX[1:]}{kind}/{relative.as_posix()}"

    def resolve(self, path: str) -> Path | None:
        parts = path[len(PREFIX):].split("/")
        if len(parts) != 3 or parts[0] not in self.folders:
            return None
        kind, version, name = parts
        folder = self.folders[kind]
        if folder.versioned:
            return direct_child(folder.path, name) if version == self.versions[kind] else None
        sub = direct_child(folder.path, version, directory=True)
        return direct_child(sub, name) if sub else None


@functools.cache
def site(export_cache: Path) -> Site:
    """The app's site: the page's modules, the runtime builds and the export cache (one per cache folder, so
    the UI's URLs and the middleware's versions agree)."""
    return Site({"page": Folder(PAGE_JS, versioned=True), "runtime": Folder(ORT_WEB, versioned=True),
                 "export": Folder(export_cache, versioned=False)})


def app_kwargs(export_cache: Path, *, isolation: bool = False) -> dict[str, Any]:
    """`demo.launch(app_kwargs=…)`: the site for this export cache, and optionally cross-origin isolation."""
    from starlette.middleware import Middleware

    middleware = [Middleware(StaticFiles, site=site(Path(export_cache)))]
    return {"middleware": middleware + ([Middleware(CrossOriginIsolation)] if isolation else [])}


class CrossOriginIsolation:
    """ASGI middleware sending COOP / COEP on every response: the page becomes cross-origin isolated, so
    onnxruntime-web may run WASM threads (SharedArrayBuffer).  Off by default (`python app.py
    --cross-origin-isolation`): the gain needs a free core (docs/BROWSER.md: 1.5× at L_max on a quiet 2-core
    CPU; slower than one thread in runs where other jobs held the second core), and isolation also stops the
    page from embedding anything of another origin."""

    HEADERS = [(b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"require-corp")]

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        return await self.app(scope, receive, with_headers)


class StaticFiles:
    """ASGI middleware: answers GET/HEAD under PREFIX from the site's folders, passes everything else on."""

    def __init__(self, app: Callable, *, site: Site) -> None:
        self.app, self.site = app, site
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[float, str, bytes | None]] = {}  # path -> (mtime, etag, gzip bytes)

    def _entry(self, path: Path) -> tuple[str, bytes | None]:
        """(strong ETag, gzip-compressed bytes or None) of a served file, computed once per file version."""
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        packed = None
        if path.suffix in COMPRESS and len(data) >= MIN_COMPRESS:
            packed = gzip.compress(data, compresslevel=6, mtime=0)
            if len(packed) >= len(data):
                packed = None
        with self._lock:
            self._cache[path] = (mtime, etag, packed)
        return etag, packed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await respond(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
        path = self.site.resolve(scope["path"])
        if path is None:
            return await respond(send, 404, b"not found")
        etag, packed = self._entry(path)
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        gz = packed is not None and b"gzip" in headers.get(b"accept-encoding", b"")
        tag = (etag[:-1] + '-gz"' if gz else etag).encode()
        common = [(b"cache-control", IMMUTABLE), (b"etag", tag), (b"vary", b"accept-encoding"),
                  (b"content-type", TYPES.get(path.suffix, "application/octet-stream").encode())]
        if tag in [t.strip() for t in headers.get(b"if-none-match", b"").split(b",")]:
            return await respond(send, 304, b"", common, head=True)
        body = packed if gz else path.read_bytes()
        if gz:
            common.append((b"content-encoding", b"gzip"))
        await respond(send, 200, body, common, head=scope["method"] == "HEAD")


async def respond(send: Callable, status: int, body: bytes, headers: list | None = None, *, head: bool = False):
    headers = [*(headers or []), (b"content-length", str(len(body)).encode())]
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
