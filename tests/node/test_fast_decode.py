"""The fast path of sync.decode_headers (model.parse_headers_at / parse_header_at +
sync._fast_headers) against the generic path (wire.decode + Header.from_obj): same objects,
same block_ids, same accept/reject and the same error reasons, on well-formed, ill-formed and
mutated bodies; and the fast parser's own refusal of every non-canonical spelling of a header
(it hashes the received span as enc(header), so it must never take a non-canonical one)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.node import merkle, model, sync
from appliance.node.errors import MalformedError
from appliance.node.model import MAX_HEADERS_PER_RESPONSE, Header

CHAIN = "bj-gov-test"
H32 = bytes(range(32))


def header_obj(height: int = 5, **kw: Any) -> dict[str, Any]:
    obj = {
        "chain_id": CHAIN, "height": height, "version": "1", "prev_hash": H32,
        "tx_root": bytes(32), "timestamp": 1_700_000_000_000 + height,
        "validators_hash": b"\x01" * 32, "next_validators_hash": b"\x01" * 32,
    }  # fmt: skip
    obj.update(kw)
    return obj


def commit_obj(height: int, signature: bytes = b"\x02" * 64) -> dict[str, Any]:
    return {"height": height, "block_id": bytes(32),
            "signatures": [{"index": 0, "signature": signature}]}


def body(headers: list, commits: list | None = None, sets: list | None = None) -> bytes:
    return wire.encode({"headers": headers, "commits": commits or [], "validator_sets": sets or []})


def summary(resp: sync.HeadersResponse) -> tuple:
    hs = tuple((h, h.encoded, h.block_id) for h in resp.headers)
    return hs, resp.commits, tuple(resp.sets)


def outcome(data: Any, *, fast: bool) -> tuple:
    saved = sync._fast_headers
    if not fast:
        sync._fast_headers = lambda data, limit: None
    try:
        return ("ok", summary(sync.decode_headers(data)))
    except MalformedError as exc:
        return ("error", exc.reason)
    finally:
        sync._fast_headers = saved


def same(data: Any) -> tuple:
    fast, slow = outcome(data, fast=True), outcome(data, fast=False)
    assert fast == slow
    return fast


def test_well_formed_body_takes_the_fast_path() -> None:
    hs = [header_obj(h) for h in range(10, 20)]
    data = body(hs, [commit_obj(19)])
    assert sync._fast_headers(data, model.MAX_RESPONSE_BYTES) is not None
    kind, (got, commits, _) = same(data)
    assert kind == "ok"
    for (h, encoded, block_id), obj in zip(got, hs, strict=True):
        assert h == Header(**obj) and encoded == wire.encode(obj)
        assert block_id == Header(**obj).block_id
    assert list(commits) == [19]


def test_parse_header_at_matches_generic() -> None:
    obj = header_obj(2**64 - 1, version="v" * 300, chain_id="é" * 32, timestamp=24)
    data = b"\x00" + wire.encode(obj) + b"\xff"
    h, end = model.parse_header_at(data, 1)
    assert h == Header.from_obj(obj) and end == len(data) - 1
    assert h.block_id == Header.from_obj(obj).block_id


@pytest.mark.parametrize("data", [
    body([header_obj(1)], [commit_obj(1, b"\x67headers\x80" + bytes(55))]),  # key inside a sig
    body([header_obj(1)], [commit_obj(1, b"\x67headers\x81" + bytes(55))]),
    body([header_obj(1), header_obj(2)], [commit_obj(1), commit_obj(1)]),  # duplicate commit
    body([header_obj(1)], [commit_obj(7)]),  # commit out of range
    body([header_obj(1, version="2")]),
    body([header_obj(1, chain_id="c" * 65)]),  # chain_id too long
    body([header_obj(1, chain_id="")]),
    body([header_obj(1, prev_hash=bytes(31))]),
    body([header_obj(-1)]),
    body([header_obj(True)]),
    body([{**header_obj(1), "extra": 1}]),
    body([{k: v for k, v in header_obj(1).items() if k != "tx_root"}]),
    body([header_obj(h) for h in range(MAX_HEADERS_PER_RESPONSE + 1)]),
    body([header_obj(h) for h in range(MAX_HEADERS_PER_RESPONSE)]),
    body([]),
    body([header_obj(1)]) + b"\x00",  # trailing
    body([header_obj(1)])[:-1],  # truncated
    body([header_obj(1)]).replace(b"\x66height\x01", b"\x66height\x18\x01"),  # not shortest
    body([header_obj(1)]).replace(b"\x67headers\x81", b"\x67headers\x98\x01"),
    body([header_obj(1)], [1]),
    wire.encode({"headers": [header_obj(1)], "commits": {}, "validator_sets": []}),
    wire.encode({"headers": [header_obj(1)], "commits": []}),
    bytearray(body([header_obj(1)])),
    memoryview(body([header_obj(1)])),
])
def test_fast_and_generic_agree(data: Any) -> None:
    same(data)


def test_oversize_limit_applies_first() -> None:
    data = body([header_obj(1)])
    for limit in (len(data) - 1, len(data)):
        results = []
        for fast in (True, False):
            saved = sync._fast_headers
            if not fast:
                sync._fast_headers = lambda data, limit: None
            try:
                results.append(("ok", summary(sync.decode_headers(data, limit))))
            except MalformedError as exc:
                results.append(("error", exc.reason))
            finally:
                sync._fast_headers = saved
        assert results[0] == results[1]


uints = st.one_of(
    st.integers(0, 30),
    st.sampled_from([23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
texts = st.one_of(st.just("1"), st.text(max_size=30), st.text(min_size=60, max_size=70))
hashes = st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=31, max_size=33))
header_objs = st.builds(
    header_obj, height=uints, timestamp=uints, version=texts,
    chain_id=st.one_of(st.just(CHAIN), texts), prev_hash=hashes, tx_root=hashes,
    validators_hash=st.binary(min_size=32, max_size=32), next_validators_hash=hashes,
)
mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
              st.integers(0, 10**6), st.integers(0, 255)),
    max_size=3,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for op, where, value in ops:
        if not b:
            break
        i = where % len(b)
        if op == "flip":
            b[i] = value
        elif op == "insert":
            b.insert(i, value)
        elif op == "delete":
            del b[i]
        else:
            del b[i:]
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header_objs, max_size=4), st.lists(st.integers(0, 5), max_size=2), mutations)
def test_differential(hs: list, commit_heights: list, ops: list) -> None:
    data = body(hs, [commit_obj(h, bytes([h]) * 64) for h in commit_heights])
    same(data)
    same(mutate(data, ops))


# --- the canonical-span fast parser: a span is taken as enc(header) only if it is canonical ---


def slow_header(span: bytes) -> tuple:
    """The generic path on one header span: ("ok", header, block_id) or ("error", reason)."""
    try:
        h = model.decode_header(span)
    except MalformedError as exc:
        return ("error", exc.reason)
    return ("ok", h, h.block_id)


def fast_header(span: bytes) -> tuple | None:
    """parse_header_at and parse_headers_at on one span: the header if both take all of it."""
    one = model.parse_header_at(span, 0)
    many = model.parse_headers_at(span, 0, 1)
    assert (one is None) == (many is None)
    if one is None or one[1] != len(span):
        return None
    assert many is not None and many[1] == one[1] and many[0] == [one[0]]
    assert many[0][0].block_id == one[0].block_id
    return ("ok", one[0], one[0].block_id)


def test_canonical_span_is_hashed_as_received() -> None:
    for obj in (header_obj(7), header_obj(2**40, chain_id="c" * 64, timestamp=0),
                header_obj(23, timestamp=24), header_obj(255, timestamp=65536)):
        span = wire.encode(obj)
        got = fast_header(span)
        assert got == slow_header(span)
        h = got[1]
        assert h.encoded == span and h.block_id == merkle.digest(span)
        assert h.block_id == Header(**obj).block_id  # = H(enc(header)) computed independently


KEY_ITEMS = (b"\x66height", b"\x67tx_root", b"\x67version", b"\x68chain_id", b"\x69prev_hash",
             b"\x69timestamp", b"\x6fvalidators_hash", b"\x74next_validators_hash")


def _swap_keys(span: bytes, a: bytes, b: bytes) -> bytes:
    """``span`` with the (key, value) items starting at keys a and b (adjacent) swapped."""
    i, j = span.index(a), span.index(b)
    assert i < j
    end = len(span)
    for k in KEY_ITEMS:
        p = span.find(k, j + 1)
        if p > j:
            end = min(end, p)
    return span[:i] + span[j:end] + span[i:j] + span[end:]


CANON = wire.encode(header_obj(300, timestamp=1_700_000_000_000))

# Spellings of the same header (or one that is not a header at all) that are not canonical:
# each must be refused by the fast parser itself and by the generic path, with the same reason.
NON_CANONICAL = {
    "height not shortest (1 byte in 2)": CANON.replace(b"\x66height\x19\x01\x2c",
                                                       b"\x66height\x1a\x00\x00\x01\x2c"),
    "height 5 as 0x18 0x05": wire.encode(header_obj(5)).replace(b"\x66height\x05",
                                                                b"\x66height\x18\x05"),
    "height 300 as 8 bytes": CANON.replace(b"\x66height\x19\x01\x2c",
                                           b"\x66height\x1b" + (300).to_bytes(8, "big")),
    "timestamp in 8 bytes < 2**32": wire.encode(header_obj(1, timestamp=70_000)).replace(
        b"\x69timestamp\x1a\x00\x01\x11\x70", b"\x69timestamp\x1b" + (70_000).to_bytes(8, "big")),
    "hash length head not shortest": CANON.replace(b"\x67tx_root\x58\x20",
                                                   b"\x67tx_root\x59\x00\x20"),
    "chain_id length head not shortest": CANON.replace(b"\x68chain_id\x6b",
                                                       b"\x68chain_id\x78\x0b"),
    "keys unsorted (tx_root before height)": _swap_keys(CANON, b"\x66height", b"\x67tx_root"),
    "keys unsorted (timestamp before prev_hash)": _swap_keys(CANON, b"\x69prev_hash",
                                                             b"\x69timestamp"),
    "extra key": b"\xa9" + CANON[1:] + b"\x65extra\x00",
    "missing key (7-key map)": b"\xa7" + CANON[1:].replace(
        b"\x67tx_root\x58\x20" + bytes(32), b""),
    "indefinite-length map": b"\xbf" + CANON[1:] + b"\xff",
    "indefinite-length chain_id": CANON.replace(b"\x68chain_id\x6bbj-gov-test",
                                                b"\x68chain_id\x7f\x6bbj-gov-test\xff"),
    "indefinite-length hash": CANON.replace(b"\x67tx_root\x58\x20" + bytes(32),
                                            b"\x67tx_root\x5f\x58\x20" + bytes(32) + b"\xff"),
    "trailing byte": CANON + b"\x00",
    "truncated": CANON[:-1],
    "chain_id not UTF-8 (surrogate)": CANON.replace(b"\x6bbj-gov-test",
                                                    b"\x6bbj-gov-t\xed\xa0\x80"),
    "chain_id not UTF-8 (overlong)": CANON.replace(b"\x6bbj-gov-test", b"\x6bbj-gov-te\xc0\xaf"),
    "chain_id of 65 bytes": wire.encode(header_obj(300, timestamp=1_700_000_000_000,
                                                   chain_id="c" * 64)).replace(
        b"\x78\x40" + b"c" * 64, b"\x78\x41" + b"c" * 65),
    "hash of 31 bytes": CANON.replace(b"\x67tx_root\x58\x20" + bytes(32),
                                      b"\x67tx_root\x58\x1f" + bytes(31)),
    "a tag on the height": CANON.replace(b"\x66height\x19", b"\x66height\xc2\x19"),
}


@pytest.mark.parametrize("case", sorted(NON_CANONICAL))
def test_non_canonical_span_is_refused_like_the_slow_path(case: str) -> None:
    span = NON_CANONICAL[case]
    assert span != CANON
    slow = slow_header(span)
    assert slow[0] == "error", case  # the generic path refuses it, with a typed reason
    assert fast_header(span) is None, case  # the fast parser does not take it as a header
    # ... and in a /v1/headers body, after a good header (so the chain pattern is in use),
    # both paths refuse the body with the same MalformedError reason.
    data = body([header_obj(299)]).replace(b"\x67headers\x81", b"\x67headers\x82", 1)
    p = data.index(b"\x6evalidator_sets")
    data = data[:p] + span + data[p:]
    # (The fast parser may take a different span there, e.g. a truncated header plus the
    # next byte, but never exactly this one; the body is refused either way.)
    parsed = model.parse_headers_at(data, data.index(b"\x67headers") + 9, 2)
    assert parsed is None or parsed[1] != p + len(span)
    assert same(data)[0] == "error"


def test_batch_switches_chain_and_version() -> None:
    hs = [header_obj(1), header_obj(2, chain_id="other"), header_obj(3, version="2"),
          header_obj(4), header_obj(5, chain_id="é" * 30), header_obj(6)]
    data = body(hs)
    kind, (got, _, _) = same(data)
    assert kind == "ok"
    assert [h for h, _, _ in got] == [Header(**o) for o in hs]
    assert [b for _, _, b in got] == [Header(**o).block_id for o in hs]


def array_of(spans: list[bytes]) -> bytes:
    assert len(spans) < 24
    return bytes((0x80 | len(spans),)) + b"".join(spans)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header_objs, min_size=1, max_size=5), st.integers(0, 4), mutations)
def test_fast_parser_agrees_with_generic_on_mutated_headers(hs: list, same_chain: int,
                                                            ops: list) -> None:
    """parse_headers_at on an array of header spans accepts exactly what the generic path
    accepts (wire.decode + Header.from_obj), with the same headers and block_ids."""
    for k in range(min(same_chain, len(hs))):  # runs of one chain_id and version "1"
        hs[k] = {**hs[k], "chain_id": CHAIN, "version": "1"}
    spans = []
    for obj in hs:
        try:
            spans.append(wire.encode(obj))
        except wire.WireError:
            return
    data = mutate(array_of(spans), ops)
    if not data or not 0x80 <= data[0] <= 0x97:
        return
    n = data[0] - 0x80
    fast = model.parse_headers_at(data, 1, n)
    fast_ok = fast is not None and fast[1] == len(data)
    try:
        slow = [Header.from_obj(o) for o in _list(wire.decode(data))]
    except (MalformedError, wire.WireError):
        slow = None
    assert fast_ok == (slow is not None)
    if fast_ok:
        assert fast[0] == slow
        assert [h.block_id for h in fast[0]] == [h.block_id for h in slow]
        assert [h.encoded for h in fast[0]] == [h.encoded for h in slow]


def _list(obj: Any) -> list:
    if type(obj) is not list:
        raise MalformedError("type", "not an array")
    return obj
