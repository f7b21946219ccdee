"""The light node's one error family.

Everything the node refuses raises a :class:`LedgerError` (a ``ValueError``):

- :class:`MalformedError`: the bytes or the object tree are not a well-formed protocol object
  (not canonical CBOR, too large, a missing or unknown key, a wrong type, length or range).
  ``reason`` is a short code; for input that appliance.wire refused it is the
  ``WireError.reason`` (``not_canonical``, ``oversize``, ...), with the WireError chained as
  ``__cause__``.
- :class:`VerificationError`: a well-formed object broke a rule of protocol §5 (or a
  signature, proof or hash did not match). ``rule`` is a short stable code, ``height`` the
  height of the offending header (None when no header is involved) and ``detail`` a
  human-readable precision.

A caller that only wants "is this peer's data good" catches LedgerError; the sync engine bans
a peer for either subclass.
"""

from __future__ import annotations

__all__ = ["RULES", "LedgerError", "MalformedError", "VerificationError"]

_DETAIL_MAX = 200  # details may quote peer data; keep log lines bounded

#: Every ``VerificationError.rule`` this package raises.
RULES = frozenset({
    "chain_id", "version", "height", "prev_hash", "timestamp", "validators_hash",
    "set_change_commit", "last_commit", "commit", "anchor", "validator_set_hash", "proof",
    "tx_root", "sender", "tx_signature",
})  # fmt: skip


class LedgerError(ValueError):
    """Base of every error raised for ledger data (structure or verification)."""


class MalformedError(LedgerError):
    """Data that is not a well-formed protocol object; ``reason`` says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail[:_DETAIL_MAX]
        super().__init__(f"malformed ({reason}): {self.detail}" if self.detail else reason)


class VerificationError(LedgerError):
    """A protocol rule failed; ``rule`` names it, ``height`` says where (or None)."""

    def __init__(self, rule: str, height: int | None = None, detail: str = "") -> None:
        self.rule = rule
        self.height = height
        self.detail = detail[:_DETAIL_MAX]
        where = f" at height {height}" if height is not None else ""
        super().__init__(f"rule {rule} failed{where}" + (f": {self.detail}" if detail else ""))
