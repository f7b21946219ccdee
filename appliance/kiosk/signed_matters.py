"""The matters this kiosk has signed (§6: "a kiosk refuses a matter it has signed before").

A matter is identified by ``(pad, matter_id)``; it is remembered until its ``expires_at``
(after that no kiosk may sign it anyway), and the memory survives a restart: a JSON file in
the state directory (mode 0600), replaced atomically (write a temporary file, fsync, rename,
fsync the directory) before the signature is asked of the crypto module, so that a power cut
can at worst forget a matter that was never signed, never sign one twice. The validators
enforce the same rule for the whole chain (``duplicate_matter``); this memory saves the
citizen a signature the chain would refuse, and works while the nodes are out of reach.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

__all__ = ["SignedMatters"]

MAX_ENTRIES = 100_000  # a busy kiosk signs a few hundred matters a day, each kept <= 24 h


class SignedMatters:
    """``seen`` and ``record`` over the file ``path`` (None: in memory only, for tests)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, int] = {}  # "pad hex:matter_id hex" -> expires_at
        if path is not None and path.exists():
            self._entries = _read(path)

    @staticmethod
    def _key(pad: bytes, matter_id: bytes) -> str:
        return f"{pad.hex()}:{matter_id.hex()}"

    def seen(self, pad: bytes, matter_id: bytes) -> bool:
        with self._lock:
            return self._key(pad, matter_id) in self._entries

    def record(self, pad: bytes, matter_id: bytes, expires_at: int, now_ms: int) -> bool:
        """Remember the matter before it is signed; False when it was signed before (then
        nothing changes). Entries past their expiry are dropped on the way."""
        key = self._key(pad, matter_id)
        with self._lock:
            if key in self._entries:
                return False
            entries = {k: v for k, v in self._entries.items() if v >= now_ms}
            if len(entries) >= MAX_ENTRIES:
                raise RuntimeError("the signed-matters memory is full")
            entries[key] = int(expires_at)
            if self.path is not None:
                _write(self.path, entries)
            self._entries = entries
            return True


def _read(path: Path) -> dict[str, int]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: the signed-matters memory cannot be read ({exc}); "
                           "move it aside only once no matter of the last 24 h can be "
                           "presented again") from None
    if not isinstance(doc, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in doc.items()):
        raise RuntimeError(f"{path}: not a signed-matters memory")
    return doc


def _write(path: Path, entries: dict[str, int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(entries, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
