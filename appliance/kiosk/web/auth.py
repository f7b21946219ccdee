"""The UI's per-start secret: what lets the terminal's own browser, and nothing else on the
machine, use the local web API.

Each web server (each daemon) makes its own secret when it starts: 32 random bytes from
:mod:`secrets`, URL-safe base64. The browser the terminal launches opens
``http://127.0.0.1:PORT/?k=SECRET`` (``/pad?k=SECRET`` on a PAD); the server checks the key in
constant time and answers with a redirect to the same page without it, setting an HttpOnly,
SameSite=Strict cookie whose value is derived from the secret (HMAC-SM3), never the secret
itself. Every later request is checked against that value, in constant time.

Cookies are not scoped by port, so the cookie's name carries the port: two daemons on one
machine (a kiosk and a PAD) each keep their own cookie in one browser. The secret is written
only to ``STATE_DIR/ui-secret`` (mode 0600, for a launcher running as the daemon's user) and
to the daemon's own terminal; it is never logged to the journal, never put on the command line
of a process, and it dies with the process.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ...gm import sm3

#: The query parameter of the launch URL that carries the secret.
PARAM = "k"
SECRET_BYTES = 32
_SESSION_LABEL = b"appliance ui session v1"


class UiAuth:
    """One web server's secret and the session value the browser's cookie carries."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret if secret is not None else secrets.token_urlsafe(SECRET_BYTES)
        self.session = sm3.hmac_sm3(self.secret.encode(), _SESSION_LABEL).hex()

    def __repr__(self) -> str:  # never the secret, should this object ever be printed
        return "UiAuth(<secret>)"

    def secret_ok(self, presented: str | None) -> bool:
        """Is ``presented`` (the launch URL's key) this server's secret? Constant time."""
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.secret.encode())

    def session_ok(self, presented: str | None) -> bool:
        """Is ``presented`` (the cookie's value) this server's session value? Constant time."""
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.session.encode())


def cookie_name(port: int) -> str:
    """The session cookie of the server on ``port`` (cookies ignore ports; names do not)."""
    return f"appliance_ui_{port}"


def write_secret(path: Path, secret: str) -> None:
    """``secret`` to ``path``, readable and writable by this user only (0600), replaced
    atomically: the file is created 0600 (never a moment with wider rights) and renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_secret(path: Path, secret: str) -> None:
    """Remove ``path`` if it still holds ``secret`` (a newer daemon's file is left alone)."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == secret:
            path.unlink()


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Does ``fd`` go to the systemd journal (``JOURNAL_STREAM`` names its device and inode,
    systemd.exec(5))? The launch URL's secret is then not printed: the journal is readable
    by more than the daemon's user."""
    env = os.environ if env is None else env
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not (dev.isascii() and dev.isdigit() and ino.isascii() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
