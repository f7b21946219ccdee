"""A test's client of a running daemon's local web UI, authenticated the way the terminal's
browser is: it opens the launch URL (``/?k=SECRET``), keeps the session cookie, and sends the
server's own ``Origin`` with every request that changes state (urllib, stdlib only)."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class UiClient:
    def __init__(self, launch_url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(launch_url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self.jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        with self._opener.open(launch_url, timeout=timeout) as r:
            r.read()
        if not any(c.name.startswith("appliance_ui_") for c in self.jar):
            raise AssertionError(f"{launch_url} gave no session cookie")

    @classmethod
    def from_state(cls, base: str, state_dir: Path, **kw: Any) -> UiClient:
        """With the key the daemon wrote to ``STATE_DIR/ui-secret``."""
        secret = (Path(state_dir) / "ui-secret").read_text().strip()
        return cls(f"{base}/?k={secret}", **kw)

    def open(self, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Origin", self.base)
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs)
        return self._opener.open(req, timeout=self.timeout)

    def get(self, path: str) -> Any:
        with self.open(path) as r:
            return json.load(r)

    def read(self, path: str) -> bytes:
        with self.open(path) as r:
            return r.read()

    def post(self, path: str, body: bytes, ctype: str) -> tuple[int, Any]:
        """(status, JSON body), for errors too."""
        try:
            with self.open(path, body, {"Content-Type": ctype}) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
