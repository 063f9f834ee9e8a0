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

import gzip
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PREFIX = "/studio-static/"
IMMUTABLE = b"public, max-age=31536000, immutable"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # one path segment; no "..", no leading dot, no separators
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}
COMPRESS = (".mjs", ".js", ".wasm", ".json", ".onnx")
MIN_COMPRESS = 1024


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plain_file(folder: Path, name: str) -> Path | None:
    """folder/name if it is a regular file directly inside folder (not a link, not a sub-folder), else None."""
    if not NAME.match(name):
        return None
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        return None
    return path


@dataclass(frozen=True)
class Folder:
    """One served folder. `versioned`: its URLs carry a digest of its whole content (computed once; the folder
    is part of the install and does not change while the app runs). Otherwise each sub-folder is a version
    named by its content (the export cache: one folder per checkpoint weights and export format)."""

    path: Path
    versioned: bool

    def version(self) -> str:
        files = sorted(p for p in self.path.iterdir() if plain_file(self.path, p.name))
        listing = "".join(f"{p.name}\0{file_digest(p)}\n" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


class StaticFiles:
    """ASGI middleware: answers GET/HEAD under PREFIX from the given folders, passes everything else on."""

    def __init__(self, app: Callable, *, folders: dict[str, Folder]) -> None:
        self.app, self.folders = app, folders
        self.versions = {kind: folder.version() for kind, folder in folders.items() if folder.versioned}
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[float, str, bytes | None]] = {}  # path -> (mtime, etag, gzip bytes)

    def url(self, kind: str) -> str:
        """The URL folder (relative to the app's root, with a trailing slash) of a versioned folder."""
        return f"{PREFIX[1:]}{kind}/{self.versions[kind]}/"

    def resolve(self, path: str) -> Path | None:
        parts = path[len(PREFIX):].split("/")
        if len(parts) != 3 or parts[0] not in self.folders:
            return None
        kind, version, name = parts
        folder = self.folders[kind]
        if folder.versioned:
            return plain_file(folder.path, name) if version == self.versions[kind] else None
        if not NAME.match(version):
            return None
        sub = folder.path / version
        if sub.is_symlink() or not sub.is_dir() or sub.resolve().parent != folder.path.resolve():
            return None
        return plain_file(sub, name)

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
        path = self.resolve(scope["path"])
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
