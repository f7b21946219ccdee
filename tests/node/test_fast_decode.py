"""The fast path of sync.decode_headers (model.parse_header_at + sync._fast_headers) against the
generic path (wire.decode + Header.from_obj): same objects, same block_ids, same accept/reject
and the same error reasons, on well-formed, ill-formed and mutated bodies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.node import model, sync
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
