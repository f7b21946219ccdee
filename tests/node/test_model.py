"""Ledger objects (protocol §3): golden encodings, round trips, strict decoding, limits, fuzz."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import chainutil as cu
import pytest
from gmssl import func as gmssl_func
from gmssl import sm3 as gmssl_sm3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.node import merkle
from appliance.node.errors import LedgerError, MalformedError
from appliance.node.model import (
    MAX_COMMIT_BYTES,
    MAX_HEADER_BYTES,
    MAX_PROOF_BYTES,
    MAX_SIGNED_TX_BYTES,
    MAX_UINT,
    Block,
    Commit,
    Header,
    Proof,
    SignedTx,
    TrustAnchor,
    TxBody,
    Validator,
    ValidatorSet,
    decode_block,
    decode_commit,
    decode_header,
    decode_proof,
    decode_signed_tx,
    decode_trust_anchor,
    decode_tx_body,
    decode_validator_set,
    encode_header,
    peer_id,
    vote_bytes,
)


def sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- golden values -----------------------------------------------------------------------------

GOLDEN_HEADER = Header(
    chain_id="bj",
    height=1,
    version="1",
    prev_hash=b"\x11" * 32,
    tx_root=b"\x22" * 32,
    timestamp=1_700_000_000_000,
    validators_hash=b"\x33" * 32,
    next_validators_hash=b"\x44" * 32,
)

# Written out by hand from RFC 8949 §4.2.1: keys sorted shorter first, then bytewise.
GOLDEN_HEADER_HEX = (
    "a8"
    "66 686569676874 01"  # "height": 1
    "67 74785f726f6f74 5820" + "22" * 32 +  # "tx_root"
    "67 76657273696f6e 6131"  # "version": "1"
    "68 636861696e5f6964 62626a"  # "chain_id": "bj"
    "69 707265765f68617368 5820" + "11" * 32 +  # "prev_hash"
    "69 74696d657374616d70 1b0000018bcfe56800"  # "timestamp": 1700000000000
    "6f 76616c696461746f72735f68617368 5820" + "33" * 32 +  # "validators_hash"
    "74 6e6578745f76616c696461746f72735f68617368 5820" + "44" * 32  # "next_validators_hash"
)


def test_golden_header_bytes_and_block_id() -> None:
    expected = h(GOLDEN_HEADER_HEX)
    assert GOLDEN_HEADER.encoded == expected
    assert wire.encode(GOLDEN_HEADER.to_obj()) == expected
    assert GOLDEN_HEADER.block_id == sm3(expected)
    # gmssl as an independent SM3
    assert GOLDEN_HEADER.block_id.hex() == gmssl_sm3.sm3_hash(gmssl_func.bytes_to_list(expected))
    assert decode_header(expected) == GOLDEN_HEADER
    assert decode_header(expected).block_id == GOLDEN_HEADER.block_id


def test_golden_vote_bytes() -> None:
    expected = h(
        "a4"
        "64 74797065 66 636f6d6d6974"  # "type": "commit"
        "66 686569676874 1903e8"  # "height": 1000
        "68 626c6f636b5f6964 5820" + "ab" * 32 +  # "block_id"
        "68 636861696e5f6964 62626a"  # "chain_id": "bj"
    )
    assert vote_bytes("bj", 1000, b"\xab" * 32) == expected


def test_golden_validator_set_hash() -> None:
    key = b"\x04" + b"\xab" * 64
    s = ValidatorSet((Validator("sm2", key, 10),))
    expected = h(
        "81 a3"
        "63 616c67 63 736d32"  # "alg": "sm2"
        "65 706f776572 0a"  # "power": 10
        "6a 7075626c69635f6b6579 5841" + "04" + "ab" * 64  # "public_key"
    )
    assert s.encoded == expected
    assert s.hash == sm3(expected)
    assert s.total_power == 10
    assert s[0].peer_id == sm3(key) == peer_id(key)


# --- the specialised header encoder equals appliance.wire.encode ----------------------------------

uints = st.one_of(
    st.integers(0, MAX_UINT),
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_UINT]),
)
hashes = st.binary(min_size=32, max_size=32)


@st.composite
def text_of_bytes(draw: st.DrawFn, low: int, high: int) -> str:
    s = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=high))
    while len(s.encode()) > high:
        s = s[:-1]
    if len(s.encode()) < low:
        s = s + "x" * (low - len(s.encode()))
    return s


header_objs = st.fixed_dictionaries({
    "chain_id": st.one_of(
        text_of_bytes(1, 64), st.sampled_from(["a", "c" * 23, "c" * 24, "c" * 64])
    ),
    "height": uints,
    "version": st.one_of(st.just("1"), text_of_bytes(0, 1024), st.just("v" * 1024)),
    "prev_hash": hashes,
    "tx_root": hashes,
    "timestamp": uints,
    "validators_hash": hashes,
    "next_validators_hash": hashes,
})  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(obj=header_objs)
def test_header_encoder_equals_wire_encode(obj: dict[str, Any]) -> None:
    expected = wire.encode(obj)
    assert encode_header(**obj) == expected
    header = Header.from_obj(obj)
    assert header.encoded == expected
    assert header.block_id == sm3(expected)
    assert header == Header(**obj)
    assert header.to_obj() == obj
    assert decode_header(expected) == header
    assert len(expected) <= MAX_HEADER_BYTES


def test_max_header_bytes_is_the_largest_header() -> None:
    obj = {
        "chain_id": "c" * 64, "height": MAX_UINT, "version": "v" * 1024, "prev_hash": bytes(32),
        "tx_root": bytes(32), "timestamp": MAX_UINT, "validators_hash": bytes(32),
        "next_validators_hash": bytes(32),
    }  # fmt: skip
    assert len(Header.from_obj(obj).encoded) == MAX_HEADER_BYTES
    decode_header(wire.encode(obj))


# --- valid samples of every object ---------------------------------------------------------------

KEYS = cu.keys(3) + cu.keys(1, "ecdsa-p256", offset=3)
VSET = cu.vset(KEYS)


def make_tx(memo: str | None = "memo", recipient: str | None = None, data: Any = None) -> SignedTx:
    key = KEYS[0]
    body = TxBody(
        chain_id=cu.CHAIN_ID,
        type="evidence.deposit",
        timestamp=cu.T0,
        sender=peer_id(key.public),
        data={"digest": bytes(32), "kind": "license", "issuer": "office"} if data is None else data,
        nonce=bytes(range(16)),
        recipient=recipient,
        memo=memo,
    )
    return SignedTx(body, key.alg, key.public, key.sign(body.encoded))


TX = make_tx()
TX2 = make_tx(memo=None, recipient="someone")
BLOCK_HEADER = Header(**{**GOLDEN_HEADER.to_obj(), "tx_root": merkle.root([TX.tx_id, TX2.tx_id])})
COMMIT = cu.sign_commit(BLOCK_HEADER, VSET, KEYS)
PROOF = Proof(1, 2, (merkle.leaf_hash(TX.tx_id),))

SAMPLES: dict[type, tuple[Any, Any]] = {
    # class: (valid instance, decode_* function)
    Validator: (KEYS[0].validator, None),
    ValidatorSet: (VSET, decode_validator_set),
    Header: (GOLDEN_HEADER, decode_header),
    Commit: (COMMIT, decode_commit),
    TxBody: (TX.body, decode_tx_body),
    SignedTx: (TX, decode_signed_tx),
    Block: (Block(BLOCK_HEADER, (TX, TX2)), decode_block),
    TrustAnchor: (TrustAnchor(cu.CHAIN_ID, 7, bytes(32), VSET), decode_trust_anchor),
    Proof: (PROOF, decode_proof),
}
DECODERS = [(cls, dec) for cls, (_, dec) in SAMPLES.items() if dec is not None]


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    obj, decoder = SAMPLES[cls]
    plain = obj.to_obj()
    again = cls.from_obj(plain)
    assert again == obj
    assert again.to_obj() == plain
    if decoder is not None:
        data = wire.encode(plain)
        assert decoder(data) == obj
        assert decoder(bytearray(data)) == obj
        assert decoder(memoryview(data)) == obj


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_frozen(cls: type) -> None:
    obj = SAMPLES[cls][0]
    name = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, None)


def test_cached_values() -> None:
    assert TX.tx_id == sm3(wire.encode(TX.body.to_obj())) == TX.body.tx_id
    assert VSET.hash == sm3(wire.encode(VSET.to_obj()))
    assert VSET.total_power == 4
    assert [v.peer_id for v in VSET.validators] == sorted(sm3(k.public) for k in KEYS)
    copy = SignedTx.from_obj(TX.to_obj())  # hashable despite the data dict
    assert copy == TX and hash(copy) == hash(TX) and {TX.body: 1}[copy.body] == 1
    assert {GOLDEN_HEADER: 1}[Header(**GOLDEN_HEADER.to_obj())] == 1


def test_optional_tx_fields() -> None:
    assert "memo" not in TX2.body.to_obj() and TX2.body.to_obj()["recipient"] == "someone"
    assert "recipient" not in TX.body.to_obj()
    for key in ("memo", "recipient"):  # present but null: a second spelling of "absent"
        obj = {**TX.body.to_obj(), key: None}
        with pytest.raises(MalformedError) as err:
            TxBody.from_obj(obj)
        assert err.value.reason == "type"


# --- strict rejection ---------------------------------------------------------------------------


def reason_of(fn: Any, *args: Any) -> str:
    with pytest.raises(MalformedError) as err:
        fn(*args)
    return err.value.reason


def with_(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(obj)
    for k, v in changes.items():
        if v is DELETE:
            out.pop(k)
        else:
            out[k] = v
    return out


DELETE = object()
HDR = GOLDEN_HEADER.to_obj()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"height": DELETE}, "keys"),
        ({"extra": 1}, "keys"),
        ({"height": True}, "type"),
        ({"height": -1}, "range"),
        ({"height": 2**64}, "range"),
        ({"height": "1"}, "type"),
        ({"timestamp": 1.0}, "type"),
        ({"chain_id": ""}, "text"),
        ({"chain_id": "c" * 65}, "text"),
        ({"chain_id": "é" * 33}, "text"),  # 66 bytes in 33 characters
        ({"chain_id": b"bj"}, "type"),
        ({"chain_id": "\ud800"}, "utf8"),
        ({"version": 1}, "type"),
        ({"version": "v" * 1025}, "text"),
        ({"version": "é" * 513}, "text"),
        ({"prev_hash": bytes(31)}, "length"),
        ({"tx_root": bytes(33)}, "length"),
        ({"validators_hash": bytearray(32)}, "type"),
        ({"next_validators_hash": "00" * 32}, "type"),
    ],
)
def test_header_rejections(changes: dict[str, Any], reason: str) -> None:
    assert reason_of(Header.from_obj, with_(HDR, **changes)) == reason
    if "extra" not in changes and DELETE not in changes.values():
        with pytest.raises(MalformedError):
            Header(**with_(HDR, **changes))  # the constructor checks the same


def test_header_limits_accepted() -> None:
    Header.from_obj(with_(HDR, chain_id="é" * 32, version="é" * 512, height=MAX_UINT))
    Header.from_obj(with_(HDR, version="anything", chain_id="c" * 64))  # rule 1, not structure
    assert reason_of(Header.from_obj, [HDR]) == "type"


def test_validator_and_set_rejections() -> None:
    v = KEYS[0].validator.to_obj()
    assert reason_of(Validator.from_obj, with_(v, power=0)) == "range"
    assert reason_of(Validator.from_obj, with_(v, power=2**64)) == "range"
    assert reason_of(Validator.from_obj, with_(v, power=True)) == "type"
    assert reason_of(Validator.from_obj, with_(v, public_key=v["public_key"][:64])) == "length"
    assert reason_of(Validator.from_obj, with_(v, alg="a" * 1025)) == "text"
    assert reason_of(Validator.from_obj, with_(v, id=b"")) == "keys"
    Validator.from_obj(with_(v, alg="rsa"))  # an unknown alg is well-formed; it cannot sign
    good = VSET.to_obj()
    assert reason_of(ValidatorSet.from_obj, []) == "count"
    assert reason_of(ValidatorSet.from_obj, tuple(good)) == "type"
    assert reason_of(ValidatorSet.from_obj, list(reversed(good))) == "order"
    assert reason_of(ValidatorSet.from_obj, [good[0], good[0]]) == "order"
    fake = sorted(
        (Validator("sm2", b"\x04" + i.to_bytes(64, "big"), 1) for i in range(257)),
        key=lambda x: x.peer_id,
    )
    assert len(ValidatorSet(tuple(fake[:256]))) == 256
    assert reason_of(ValidatorSet.from_obj, [x.to_obj() for x in fake]) == "count"
    assert reason_of(ValidatorSet, tuple(fake)) == "count"
    assert reason_of(ValidatorSet, [fake[0]]) == "type"


def test_commit_rejections() -> None:
    c = COMMIT.to_obj()
    sigs = c["signatures"]
    assert reason_of(Commit.from_obj, with_(c, signatures=[sigs[1], sigs[0]])) == "order"
    assert reason_of(Commit.from_obj, with_(c, signatures=[sigs[0], sigs[0]])) == "order"
    bad_sig = {"index": 0, "signature": bytes(63)}
    assert reason_of(Commit.from_obj, with_(c, signatures=[bad_sig])) == "length"
    extra = {**sigs[0], "alg": "sm2"}
    assert reason_of(Commit.from_obj, with_(c, signatures=[extra])) == "keys"
    many = [{"index": i, "signature": bytes(64)} for i in range(257)]
    assert reason_of(Commit.from_obj, with_(c, signatures=many)) == "count"
    assert Commit.from_obj(with_(c, signatures=many[:256])).signatures[255][0] == 255
    assert Commit.from_obj(with_(c, signatures=[])).signatures == ()
    assert reason_of(Commit.from_obj, with_(c, block_id=bytes(31))) == "length"
    # The constructor leaves index order to the verifier (so the verifier's check is testable).
    assert Commit(1, bytes(32), ((1, bytes(64)), (0, bytes(64)))).signatures[0][0] == 1
    assert reason_of(Commit, 1, bytes(32), [(0, bytes(64))]) == "type"


def test_proof_and_anchor_rejections() -> None:
    p = PROOF.to_obj()
    assert Proof.from_obj(with_(p, path=[bytes(32)] * 64)).path == (bytes(32),) * 64
    assert reason_of(Proof.from_obj, with_(p, path=[bytes(32)] * 65)) == "count"
    assert reason_of(Proof.from_obj, with_(p, path=[bytes(30)])) == "length"
    assert reason_of(Proof.from_obj, with_(p, tree_size=-1)) == "range"
    a = SAMPLES[TrustAnchor][0].to_obj()
    assert reason_of(TrustAnchor.from_obj, with_(a, validators=[])) == "count"
    assert reason_of(TrustAnchor.from_obj, with_(a, chain_id="")) == "text"


def test_tx_rejections() -> None:
    b = TX.body.to_obj()
    assert reason_of(TxBody.from_obj, with_(b, data=[1])) == "type"
    assert reason_of(TxBody.from_obj, with_(b, data={"x": 1.5})) == "float"
    assert reason_of(TxBody.from_obj, with_(b, nonce=bytes(15))) == "length"
    assert reason_of(TxBody.from_obj, with_(b, sender=bytes(65))) == "length"
    assert reason_of(TxBody.from_obj, with_(b, memo="m" * 1025)) == "text"
    assert reason_of(TxBody.from_obj, with_(b, fee=1)) == "keys"
    s = TX.to_obj()
    assert reason_of(SignedTx.from_obj, with_(s, signature=bytes(65))) == "length"
    assert reason_of(SignedTx.from_obj, with_(s, body=DELETE)) == "keys"
    assert reason_of(Block.from_obj, {"header": HDR, "txs": [s, 1]}) == "type"


# --- decoders: size limits before decoding, the codec's errors in the family --------------------


def test_size_limits_apply_before_decoding() -> None:
    # Garbage that cbor2 would reject anyway: the size check must answer first.
    for decoder, limit in (
        (decode_header, MAX_HEADER_BYTES),
        (decode_commit, MAX_COMMIT_BYTES),
        (decode_proof, MAX_PROOF_BYTES),
        (decode_signed_tx, MAX_SIGNED_TX_BYTES),
    ):
        assert reason_of(decoder, b"\xff" * (limit + 1)) == "oversize"
        assert reason_of(decoder, b"\xff" * limit) != "oversize"


def test_signed_tx_limit_is_64_kib() -> None:
    def sized(n: int) -> tuple[SignedTx, bytes]:
        tx = make_tx(data={"blob": bytes(n)})
        return tx, wire.encode(tx.to_obj())

    tx, data = sized(64 * 1024 - 400)
    pad = 64 * 1024 - len(data)
    tx, data = sized(64 * 1024 - 400 + pad)
    assert len(data) == 64 * 1024
    assert decode_signed_tx(data) == tx
    big, data = sized(64 * 1024 - 400 + pad + 1)
    assert SignedTx.from_obj(big.to_obj()) == big  # objects have no byte limit, bytes do
    assert reason_of(decode_signed_tx, data) == "oversize"


def test_wire_errors_become_malformed() -> None:
    data = GOLDEN_HEADER.encoded
    non_canonical = b"\xa8\x66height\x18\x01" + data[9:]  # height 1 in a two-byte head
    with pytest.raises(MalformedError) as err:
        decode_header(non_canonical)
    assert err.value.reason == "not_canonical"
    assert isinstance(err.value.__cause__, wire.WireError)
    assert isinstance(err.value, LedgerError) and isinstance(err.value, ValueError)
    assert reason_of(decode_header, data + b"\x00") == "trailing"
    assert reason_of(decode_header, data[:-1]) == "truncated"
    assert reason_of(decode_header, "text") == "type"
    assert reason_of(decode_header, wire.encode([1])) == "type"


# --- fuzz ---------------------------------------------------------------------------------------

ALL_KEYS = sorted({
    "alg", "public_key", "power", "chain_id", "height", "version", "prev_hash", "tx_root",
    "timestamp", "validators_hash", "next_validators_hash", "block_id", "signatures", "index",
    "signature", "type", "sender", "recipient", "data", "memo", "nonce", "body", "header", "txs",
    "validators", "leaf_index", "tree_size", "path",
})  # fmt: skip

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, 1, MAX_UINT, 2**64]),
    st.binary(max_size=70),
    st.sampled_from([bytes(16), bytes(32), bytes(64), KEYS[0].public]),
    st.text(max_size=30),
    st.floats(allow_nan=False),
)
cborish = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=25)), children, max_size=9
        ),
    ),
    max_leaves=40,
)


def check_decoded(cls: type, plain: Any, result: Any) -> None:
    """A successful from_obj must reproduce exactly what it was given."""
    assert type(result) is cls
    assert result.to_obj() == plain


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=cborish)
def test_from_obj_fuzz_arbitrary(cls: type, obj: Any) -> None:
    try:
        result = cls.from_obj(obj)
    except LedgerError:
        return
    check_decoded(cls, obj, result)


@st.composite
def mutated(draw: st.DrawFn, obj: Any) -> Any:
    """``obj`` with one value somewhere replaced, one key removed or one key added."""
    if isinstance(obj, dict) and obj and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(obj)))
        choice = draw(st.integers(0, 3))
        out = dict(obj)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[draw(st.sampled_from(ALL_KEYS + ["zz"]))] = draw(leaves)
        else:
            out[key] = draw(mutated(obj[key]))
        return out
    if isinstance(obj, list) and obj and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(obj) - 1))
        out = list(obj)
        choice = draw(st.integers(0, 3))
        if choice == 0:
            del out[i]
        elif choice == 1:
            out.insert(i, draw(st.sampled_from(obj)))
        else:
            out[i] = draw(mutated(obj[i]))
        return out
    return draw(cborish)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_from_obj_fuzz_mutated(cls: type, data: st.DataObject) -> None:
    obj = data.draw(mutated(SAMPLES[cls][0].to_obj()))
    try:
        result = cls.from_obj(obj)
    except LedgerError:
        return
    check_decoded(cls, obj, result)


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == 0 and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and out:
            out[i] = draw(st.integers(0, 255))
        elif op == 2:
            out[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif out:
            del out[i : i + draw(st.integers(1, 4))]
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


@pytest.mark.parametrize(("cls", "decoder"), DECODERS, ids=lambda x: getattr(x, "__name__", ""))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoder_fuzz_mutated_bytes(cls: type, decoder: Any, data: st.DataObject) -> None:
    raw = data.draw(mutated_bytes(wire.encode(SAMPLES[cls][0].to_obj())))
    try:
        result = decoder(raw)
    except LedgerError:
        return
    assert type(result) is cls
    assert wire.encode(result.to_obj()) == raw  # accepted only when canonical and exact


@pytest.mark.parametrize(("cls", "decoder"), DECODERS, ids=lambda x: getattr(x, "__name__", ""))
@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=300))
def test_decoder_fuzz_arbitrary_bytes(cls: type, decoder: Any, raw: bytes) -> None:
    try:
        result = decoder(raw)
    except LedgerError:
        return
    assert wire.encode(result.to_obj()) == raw
