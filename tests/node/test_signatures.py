"""Ledger signature verification fails closed: whatever a primitive does on hostile input
(raises anything at all, or answers something other than True), the answer is "invalid"."""

from __future__ import annotations

import pytest

from appliance.gm import ecdsa, sm2
from appliance.node import signatures
from appliance.node.errors import VerificationError
from appliance.node.tx import SoftwareSigner, build_tx
from appliance.node.verify import verify_tx

EXCEPTIONS = [ValueError("v"), TypeError("t"), RuntimeError("r"), KeyError("k"),
              OverflowError("o"), ZeroDivisionError("z"), OSError("ctypes"),
              MemoryError("m"), AssertionError("a"), IndexError("i"), UnicodeError("u")]


def _signed(alg: str) -> tuple[bytes, bytes, bytes]:
    private, public = signatures.generate_keypair(alg)
    message = b"a message"
    return public, message, signatures.sign(alg, private, message)


@pytest.mark.parametrize("alg,module", [("sm2", sm2), ("ecdsa-p256", ecdsa)])
@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_a_primitive_that_raises_means_invalid(monkeypatch, alg, module, exc) -> None:
    public, message, signature = _signed(alg)
    assert signatures.verify(alg, public, message, signature) is True

    def boom(*args, **kw):
        raise exc

    monkeypatch.setattr(module, "verify", boom)
    assert signatures.verify(alg, public, message, signature) is False


@pytest.mark.parametrize("answer", [1, "yes", object(), None])
def test_only_true_is_valid(monkeypatch, answer) -> None:
    public, message, signature = _signed("sm2")
    monkeypatch.setattr(sm2, "verify", lambda *a, **k: answer)
    assert signatures.verify("sm2", public, message, signature) is False


def test_a_transaction_is_refused_when_the_primitive_raises(monkeypatch) -> None:
    private, public = signatures.generate_keypair("sm2")
    tx = build_tx(SoftwareSigner("sm2", private, public), chain_id="c", type="t", data={},
                  timestamp_ms=1)
    verify_tx(tx)

    def boom(*args, **kw):
        raise RuntimeError("libcrypto said no")

    monkeypatch.setattr(sm2, "verify", boom)
    with pytest.raises(VerificationError) as info:
        verify_tx(tx)
    assert info.value.rule == "tx_signature"
