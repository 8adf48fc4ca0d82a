"""Which web pages and hosts the API server answers (engine.server): plain standard library, so the app's
settings dialog checks an origin without importing torch."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# Web pages allowed to call the API from a browser without being named (as Ollama allows): this machine's
# own pages and desktop shells' schemes. Any other origin is refused: the app's server has no API key, so
# an arbitrary website could otherwise use the model (or, through requests a browser sends without asking,
# keep it busy).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
APP_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")


def normalized_origin(origin: str) -> str:
    """scheme://host[:port] as a browser sends it: lower case, no default port, no path."""
    try:
        parts = urlsplit(origin.strip())
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return origin.strip().lower()
    if not parts.scheme or not host:  # "null" (a sandboxed page, a data: URL) or not an origin: as it is
        return origin.strip().lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


def is_origin(text: str) -> bool:
    """What may be allowed: a web page's origin (scheme://host[:port], e.g. http://localhost:3000), "*" (any)
    or "null" (sandboxed pages)."""
    return text in ("*", "null") or re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+/?", text, re.I) is not None


def origin_allowed(origin: str, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a browser page at `origin` (its Origin header) may call the API: one of `allowed` (or any,
    with "*"), a page served from this machine, or a desktop shell's scheme."""
    if "*" in allowed or normalized_origin(origin) in {normalized_origin(a) for a in allowed}:
        return True
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme in ("http", "https"):
        return host in LOCAL_HOSTS
    return parts.scheme in APP_SCHEMES


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
