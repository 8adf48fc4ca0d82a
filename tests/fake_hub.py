"""A real HTTP server on loopback playing the Hugging Face hub: the endpoints huggingface_hub and our
downloader call (`/api/models` search, `/api/models/<repo>/revision/<rev>?blobs=true`, `/<repo>/resolve/
<rev>/<file>` with Range), plus faults to inject: a connection closed or reset mid-file, 5xx answers,
stalls, corrupt bytes, a throttled link. It logs every byte range it sends, so tests can prove a resume
did not start over.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

SEND_BLOCK = 64 * 1024


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Fault:
    """One injected failure on the next request for `file` that gets past byte `after`."""
    file: str
    kind: str  # close | reset | status | stall
    after: int = 0
    status: int = 500
    stall_s: float = 5.0


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    downloads: int = 0
    lfs_min: int = 10_000  # files at least this big are "LFS" (sha256), like the hub's weights

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        s = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
        if len(data) >= self.lfs_min:
            s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return s


@dataclass
class Sent:
    file: str
    start: int
    nbytes: int
    status: int


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    rate: float | None = None  # bytes per second for file bodies (None: as fast as loopback goes)
    token: str = "hf_test_token"

    def __post_init__(self):
        self.log: list[Sent] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bytes_sent(self, file: str) -> int:
        with self.lock:
            return sum(s.nbytes for s in self.log if s.file == file)

    def resent(self, file: str) -> int:
        """Bytes of `file` sent more than once (the first repo holding a file of that name sizes it)."""
        size = len(next(r for r in self.repos.values() if file in r.files).files[file])
        return self.bytes_sent(file) - size

    def requests_for(self, file: str) -> list[Sent]:
        with self.lock:
            return [s for s in self.log if s.file == file]

    def _take_fault(self, file: str, start: int, end: int) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.file == file and start <= f.after < end:
                    self.faults.remove(f)
                    return f
        return None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):  # quiet: pytest shows the assertions, not an access log
            pass

        def _json(self, obj, status=200, headers=None):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status, code, message):
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            path = unquote(url.path)
            if path == "/api/models":
                return self._search(parse_qs(url.query))
            if path.startswith("/api/models/"):
                return self._info(path[len("/api/models/"):])
            if "/resolve/" in path:
                return self._resolve(path.lstrip("/"), head=False)
            self._error(404, "EntryNotFound", f"no route {path}")

        def do_HEAD(self):  # noqa: N802
            path = unquote(urlparse(self.path).path)
            if "/resolve/" in path:
                return self._resolve(path.lstrip("/"), head=True)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _search(self, q):
            text = q.get("search", [""])[0].lower()
            limit = int(q.get("limit", ["50"])[0])
            hits = [{"id": rid, "downloads": r.downloads, "likes": 1, "pipeline_tag": "text-generation",
                     "lastModified": "2026-11-01T10:00:00.000Z", "private": False}
                    for rid, r in sorted(hub.repos.items(), key=lambda kv: -kv[1].downloads)
                    if text in rid.lower()]
            self._json(hits[:limit])

        def _info(self, rest):
            repo_id, _, rev = rest.partition("/revision/")
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            if rev and rev not in ("main", repo.commit):
                return self._error(404, "RevisionNotFound", f"Revision {rev} not found")
            self._json({"id": repo_id, "sha": repo.commit, "gated": "manual" if repo.gated else False,
                        "private": False, "downloads": repo.downloads,
                        "siblings": [repo.sibling(n) for n in sorted(repo.files)]})

        def _resolve(self, rest, head):
            repo_part, _, tail = rest.partition("/resolve/")
            rev, _, name = tail.partition("/")
            repo = hub.repos.get(repo_part)
            if repo is None or name not in repo.files:
                return self._error(404, "EntryNotFound", f"{rest} not found")
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "GatedRepo", f"Access to {repo_part} is restricted")
            data = repo.files[name]
            if name in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            fault = hub._take_fault(name, start, len(data))
            if fault is not None and fault.kind == "status":
                with hub.lock:
                    hub.log.append(Sent(name, start, 0, fault.status))
                return self._error(fault.status, "ServerError", "injected failure")
            status = 206 if rng else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hashlib.sha256(repo.files[name]).hexdigest()}"')
            self.send_header("X-Repo-Commit", repo.commit)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            entry = Sent(name, start, 0, status)
            with hub.lock:
                hub.log.append(entry)
            pos = start
            try:
                while pos < len(data):
                    end = min(len(data), pos + SEND_BLOCK)
                    if fault is not None and pos <= fault.after < end:
                        end = fault.after
                    if end > pos:
                        self.wfile.write(data[pos:end])
                        self.wfile.flush()
                        with hub.lock:
                            entry.nbytes += end - pos
                        pos = end
                    if fault is not None and pos == fault.after:
                        if fault.kind == "stall":
                            time.sleep(fault.stall_s)
                            fault = None
                            continue
                        self._break(fault.kind)
                        return
                    if hub.rate:
                        time.sleep(SEND_BLOCK / hub.rate)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _break(self, kind):
            self.close_connection = True
            # Let the client read what was written first: an RST makes the client's kernel drop unread
            # bytes, and loopback buffers hold megabytes, so "sent" would count bytes never received.
            time.sleep(0.5)
            if kind == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


def serve_hub(monkeypatch, repos: dict[str, Repo]) -> FakeHub:
    """A started FakeHub that huggingface_hub and our downloader talk to for this test (HF_ENDPOINT, no
    token, online even under the suite's HF_HUB_OFFLINE). The caller stops it."""
    import huggingface_hub.constants

    server = FakeHub(repos).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return server


def repo_from_folder(folder: Path, **kw) -> Repo:
    return Repo({f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if f.is_file()}, **kw)


def make_model_repo(folder: Path, hidden: int = 256, layers: int = 2) -> Path:
    """A real, loadable Llama checkpoint of a few MB (float32 safetensors + a char tokenizer): big enough
    that a mid-file drop and a restart from zero are told apart by the byte log."""
    import torch
    import transformers
    from tiny_models import BASE, save_char_tokenizer

    config = transformers.LlamaConfig(**{**BASE, "hidden_size": hidden, "intermediate_size": 2 * hidden,
                                         "num_hidden_layers": layers})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(str(folder))
    save_char_tokenizer(folder)
    return Path(folder)

