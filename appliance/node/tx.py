"""Building and signing transactions, and checking old headers against checkpoints.

A transaction is signed by a :class:`Signer`: :class:`SoftwareSigner` holds a key from
``appliance.gm`` (tools, tests, the district double); :class:`ModuleSigner` signs inside the
crypto module, where the terminal's device key lives and never leaves. Both give the same
``signed_tx`` (§3): the signature over enc(tx_body), ``sender`` = peer_id(public_key).

:func:`verify_link_range` is how a transaction older than the store's header window is
checked: the store keeps the block_ids of checkpoints; the headers between the two checkpoints
that bracket the transaction's height are fetched from any peer and accepted only if they
hash-link from one checkpoint to the other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from ..gm import sm2
from . import signatures
from .errors import VerificationError
from .model import Header, SignedTx, TxBody, peer_id

NONCE_SIZE = 16


class Signer(Protocol):
    """Something that signs with one key: ``alg``, ``public_key`` and ``sign(message)``."""

    alg: str
    public_key: bytes

    def sign(self, message: bytes) -> bytes: ...


class SoftwareSigner:
    """A signer over a private key held in this process (never the terminal's device key)."""

    def __init__(self, alg: str, private_key: bytes, public_key: bytes | None = None) -> None:
        self.alg = alg
        self._private_key = private_key
        self.public_key = public_key or signatures.public_key_of(alg, private_key)

    def sign(self, message: bytes) -> bytes:
        return signatures.sign(self.alg, self._private_key, message)


class ModuleSigner:
    """A signer whose key stays in the crypto module (``appliance.hsm.client.Client``).

    Messages up to the module's 3 KiB limit are signed with ``sign`` (the module computes
    e = SM3(Z_A || M)); longer ones are hashed here and signed with ``sign_digest``.
    ``last_counter`` is the module's signature counter of the last signature this signer
    made (None before the first), for the audit log. Blocking: call it from a thread.
    """

    alg = "sm2"

    def __init__(self, client: Any, slot: int) -> None:
        self._client = client
        self.slot = slot
        self.public_key = client.public_key(slot).public_key
        self.last_counter: int | None = None

    def sign(self, message: bytes) -> bytes:
        from ..hsm.client import MAX_CHUNK

        if len(message) <= MAX_CHUNK:
            sig = self._client.sign(self.slot, message)
        else:
            digest = sm2.message_digest(self.public_key, message)
            sig = self._client.sign_digest(self.slot, digest)
        self.last_counter = sig.counter
        return sig.signature


def build_tx(signer: Signer, *, chain_id: str, type: str, data: dict[str, Any],
             timestamp_ms: int, recipient: str | None = None, memo: str | None = None,
             nonce: bytes | None = None) -> SignedTx:
    """A signed transaction; the signature is checked before it is returned, so a faulty
    signer (or module) cannot make us submit something the chain would refuse."""
    body = TxBody(chain_id, type, timestamp_ms, peer_id(signer.public_key), data,
                  os.urandom(NONCE_SIZE) if nonce is None else nonce, recipient, memo)
    signature = signer.sign(body.encoded)
    if not signatures.verify(signer.alg, signer.public_key, body.encoded, signature):
        raise VerificationError("tx_signature", None, "the signer produced a bad signature")
    return SignedTx(body, signer.alg, signer.public_key, signature)


def verify_link_range(lower: tuple[int, bytes], upper: tuple[int, bytes],
                      headers: Sequence[Header]) -> dict[int, Header]:
    """Headers ``lower.height + 1 .. upper.height`` that hash-link between two known block_ids.

    ``lower`` and ``upper`` are (height, block_id) pairs from the verified store (checkpoints,
    :meth:`HeaderStore.checkpoints_around`). The chain id and signatures need no checking:
    a collision-free hash chain ending at a verified block_id can only be the verified chain.
    Returns the headers by height; raises :class:`VerificationError` otherwise.
    """
    (low, low_id), (high, high_id) = lower, upper
    if len(headers) != high - low:
        raise VerificationError("height", low + 1,
                                f"expected {high - low} headers, got {len(headers)}")
    previous = low_id
    by_height: dict[int, Header] = {}
    for offset, header in enumerate(headers, start=1):
        if header.height != low + offset:
            raise VerificationError("height", header.height, "headers out of sequence")
        if header.prev_hash != previous:
            raise VerificationError("prev_hash", header.height, "does not link to the range")
        previous = header.block_id
        by_height[header.height] = header
    if previous != high_id:
        raise VerificationError("prev_hash", high, "the range does not end at the checkpoint")
    return by_height
