"""FISCO receipts are read one way only: every field rule alone, the real receipt, the
finding's shifted reading (same hash bytes) refused, and under hypothesis every shift of the
boundaries between gas, address, status and output of a valid receipt refused; what hashing
cannot fix (the output/logs split) is shown the same whatever reading a node serves."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.gm import sm3
from appliance.node.errors import MalformedError
from appliance.node.fisco.block import decode_header
from appliance.node.fisco.receipt import (
    MAX_GAS,
    MAX_OUTPUT,
    TX_STATUS,
    Receipt,
    decode_receipt,
)
from appliance.node.fisco.verify import verify_inclusion

DATA = json.loads((pathlib.Path(__file__).parent.parent / "data" /
                   "fisco-bcos-3x-gm.json").read_text())
B2 = DATA["getBlockByHash_2"]
R2 = DATA["getTransactionReceipt_block2"]  # a deployment: gas 24363, an address, status 0
ADDR = R2["contractAddress"]
TX = "0x" + "ab" * 32
#: a valid receipt with a log (built here: the real chain's receipt has none)
LOGGED = dict(R2, contractAddress="", output="0x" + "00" * 31 + "2a", logEntries=[
    {"address": ADDR[2:], "topics": ["0x" + "11" * 32], "data": "0x2a"}])
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def h(s: str) -> bytes:
    return bytes.fromhex(s[2:])


def preimage(j: dict) -> bytes:
    """The receipt hash's preimage of a JSON answer, written here from FISCO's layout (the
    test's own, to show two readings are the same bytes)."""
    out = [struct.pack(">i", j["version"]), j["gasUsed"].encode("latin-1"),
           j["contractAddress"].removeprefix("0x").encode("latin-1"),
           struct.pack(">i", j["status"]), h(j["output"])]
    for log in j["logEntries"]:
        out += [log["address"].removeprefix("0x").encode(), *map(h, log["topics"]),
                h(log["data"])]
    out.append(struct.pack(">q", j["blockNumber"]))
    return b"".join(out)


def reason(obj: dict) -> str | None:
    """The decoder's refusal reason, None when it accepts."""
    try:
        decode_receipt(obj)
    except MalformedError as e:
        return e.reason
    return None


# -- the real receipt ----------------------------------------------------------------------

def test_the_real_receipt_verifies_and_shows_every_field_as_verified() -> None:
    r = decode_receipt(R2)
    assert r.hash == h(R2["hash"]) == h(B2["receiptsRoot"]) == sm3.digest(preimage(R2))
    block = decode_header(dict(B2, transactions=[R2["transactionHash"]]))
    inc = verify_inclusion(block, h(B2["hash"]), h(R2["transactionHash"]),
                           [h(R2["transactionHash"])], r)
    assert inc.receipt == r
    shown = inc.to_json()["receipt"]
    assert shown == {"status": 0, "status_name": "None", "gas_used": "24363",
                     "contract_address": ADDR, "output_and_logs": "0x", "output": "0x",
                     "logs": [], "receipt_hash": R2["hash"]}
    # FISCO 3.0 printed the address without 0x: the same hashed field, the same receipt
    assert decode_receipt(dict(R2, contractAddress=ADDR[2:])) == r


def test_the_findings_shifted_reading_has_the_same_hash_and_is_refused() -> None:
    # gas "24363" || address "82a3...b3" || status 00000000 || output "" read as
    # gas "243" || address "63" + 38 chars || status "b3" 00 00 || output 00 00
    shifted = dict(R2, gasUsed="243", contractAddress="0x63" + ADDR[2:40],
                   status=struct.unpack(">i", ADDR[40:].encode() + b"\0\0")[0],
                   output="0x0000")
    assert preimage(shifted) == preimage(R2)  # the same bytes: the same receipt hash
    with pytest.raises(MalformedError) as e:
        decode_receipt(shifted)
    assert e.value.reason == "receipt_status"
    # nor can such a receipt be made some other way and handed to verify_inclusion
    with pytest.raises(MalformedError):
        dataclasses.replace(decode_receipt(R2), status=shifted["status"])


# -- each rule alone -----------------------------------------------------------------------

RULES = [
    ("unsupported", "version", [1, -1, True, "0", None]),
    ("receipt_gas", "gasUsed", ["024363", "+24363", "-24363", "", " 24363", "24363\n",
                                "24363.0", "2.4e4", "\uff12\uff14", str(MAX_GAS + 1),
                                "1" + "0" * 20, "0" * 41, 24363, None]),
    ("receipt_address", "contractAddress", [
        R2["checksumContractAddress"], ADDR.upper().replace("0X", "0x"), "0X" + ADDR[2:],
        ADDR[:-2], ADDR + "00", ADDR[2:-2], ADDR[2:] + "00", ADDR[2:] + "0", "0x", "0",
        "0x" + "g" * 40, " " + ADDR, None, 5]),
    ("receipt_status", "status", [3, -1, 9, 25, 31, 36, 9999, 10016, 65536, 2**31 - 1,
                                  0x62330000, True, "0", None]),
    ("receipt_output", "output", ["", "0x0", "0xAB", "0XAB", "ab", "0x 0", None, 0,
                                  "0x" + "00" * (MAX_OUTPUT + 1)]),
    ("receipt_block_number", "blockNumber", [-1, 2**63, True, "2", None]),
]


@pytest.mark.parametrize("why,key,values", RULES, ids=[r[1] for r in RULES])
def test_each_field_rule_alone_is_refused(why, key, values) -> None:
    for base in (R2, LOGGED):
        assert reason(base) is None
        for v in values:
            assert reason(dict(base, **{key: v})) == why, (key, v)
        assert reason({k: x for k, x in base.items() if k != key}) == why


def test_the_log_rules_alone_are_refused() -> None:
    good = LOGGED["logEntries"][0]
    assert reason(LOGGED) is None and reason(dict(LOGGED, logEntries=[good] * 3)) is None
    assert reason(dict(LOGGED, logEntries=[dict(good, address="0x" + good["address"])])) is None
    bad = [dict(good, address=good["address"].upper()), dict(good, address=""),
           dict(good, address=good["address"][:38]), dict(good, address="0X" + good["address"]),
           dict(good, topics=["0x" + "11" * 32] * 5), dict(good, topics=["0x" + "11" * 31]),
           dict(good, topics=["0x" + "AA" * 32]), dict(good, topics="0x" + "11" * 32),
           dict(good, data="0xAB"), dict(good, data="ab"), dict(good, data=None),
           {k: v for k, v in good.items() if k != "topics"}, "log"]
    for entry in bad:
        assert reason(dict(LOGGED, logEntries=[good, entry])) == "receipt_log", entry
    assert reason(dict(LOGGED, logEntries={"0": good})) == "receipt_log"


def test_what_fisco_can_produce_is_accepted() -> None:
    for code in TX_STATUS:
        assert reason(dict(R2, status=code)) is None, code
    for gas in ("0", "1", "24363", str(MAX_GAS), "9" * 19):
        assert reason(dict(R2, gasUsed=gas)) is None, gas
    for n in (0, 2**63 - 1):
        assert reason(dict(R2, blockNumber=n)) is None
    assert reason(dict(R2, contractAddress="", output="0x" + "ab" * 100)) is None


# -- every reading of a receipt's bytes ----------------------------------------------------

def as_json(r: Receipt) -> dict:
    """A receipt as FISCO 3.1+ prints it (this test's own encoder)."""
    return {"version": 0, "gasUsed": r.gas_used,
            "contractAddress": "0x" + r.contract_address if r.contract_address else "",
            "status": r.status, "output": "0x" + r.output.hex(),
            "logEntries": [{"address": a, "topics": ["0x" + t.hex() for t in tp],
                            "data": "0x" + d.hex()} for a, tp, d in r.logs],
            "blockNumber": r.block_number, "transactionHash": TX}


def shifted_readings(r: Receipt) -> Iterator[dict]:
    """Every other reading of the receipt's preimage with the boundaries between gas,
    address, status and output moved (by any amount, any of them): version, logs and block
    number as they are. As JSON a node would serve (the address in both of FISCO's forms)."""
    j = as_json(r)
    logs_len = len(r.output_and_logs) - len(r.output)
    body = r.preimage[4:len(r.preimage) - 8 - logs_len]  # gas || address || status || output
    for g in range(len(body) - 3):
        for a in range(len(body) - 3 - g):
            if (g, a) == (len(r.gas_used), len(r.contract_address)):
                continue
            addr = body[g:g + a].decode("latin-1")
            reading = dict(j, gasUsed=body[:g].decode("latin-1"), contractAddress=addr,
                           status=struct.unpack(">i", body[g + a:g + a + 4])[0],
                           output="0x" + body[g + a + 4:].hex())
            yield reading  # the address as FISCO 3.0 printed it, then as 3.1+ does
            if addr:
                yield dict(reading, contractAddress="0x" + addr)


def test_no_shifted_reading_of_the_real_receipt_is_accepted() -> None:
    r = decode_receipt(R2)
    seen = []
    for reading in shifted_readings(r):
        assert preimage(reading) == preimage(R2)
        assert reason(reading) is not None, reading
        seen.append((reading["gasUsed"], reading["contractAddress"].removeprefix("0x"),
                     reading["status"]))
    m = len(r.preimage) - 12 - 4  # every (gas, address) length pair but the true one,
    assert len(set(seen)) == (m + 1) * (m + 2) // 2 - 1  # most in two forms
    assert ("243", "63" + ADDR[2:40], 0x62330000) in seen  # the finding's among them


_HEXD = "0123456789abcdef"
_hex40 = st.text(_HEXD, min_size=40, max_size=40)
addresses = st.one_of(
    st.just(""), _hex40,
    st.text("0123456789", min_size=40, max_size=40),  # all digits: could pass for gas
    st.tuples(st.text("0123456789", min_size=1, max_size=39), _hex40).map(
        lambda t: (t[0] + t[1])[:40]))
gases = st.one_of(st.integers(0, 999), st.integers(0, MAX_GAS),
                  st.sampled_from([MAX_GAS, 10**19, 10**19 - 1])).map(str)
outputs = st.one_of(st.binary(max_size=10), st.text(_HEXD, max_size=10).map(str.encode),
                    st.sampled_from([b"", b"\0\0", b"\0\0\0\x10"]))
logs = st.lists(st.tuples(_hex40, st.lists(st.binary(min_size=32, max_size=32),
                                           max_size=2).map(tuple), st.binary(max_size=4)),
                max_size=2).map(tuple)
receipts = st.builds(
    lambda g, a, s, o, lg, n: Receipt(0, g, a, s, o, lg, n, h(TX), ()), gases, addresses,
    st.sampled_from(sorted(TX_STATUS)), outputs, logs, st.integers(0, 2**63 - 1))


@PROPS
@given(receipts)
def test_any_shift_between_neighbouring_fields_is_refused(r: Receipt) -> None:
    assert decode_receipt(as_json(r)) == r
    for reading in shifted_readings(r):
        assert preimage(reading) == r.preimage
        assert reason(reading) is not None, reading


# -- what hashing cannot fix: the output/logs split ----------------------------------------

def tail_readings(r: Receipt) -> Iterator[dict]:
    """Other splits of the bytes after the status: the logs folded into the output; a log
    carved out of the output wherever it holds 40 lowercase hex digits."""
    j = as_json(r)
    tail = r.output_and_logs
    if r.logs:
        yield dict(j, output="0x" + tail.hex(), logEntries=[])
    for k in range(len(r.output) - 39):
        yield dict(j, output="0x" + r.output[:k].hex(), logEntries=[
            {"address": r.output[k:k + 40].decode("latin-1"), "topics": [],
             "data": "0x" + r.output[k + 40:].hex()}, *j["logEntries"]])


def verified(shown: dict) -> dict:
    return {k: v for k, v in shown.items() if k not in ("output", "logs", "unverified")}


tail_receipts = st.builds(
    lambda o, lg, hx, pos: Receipt(0, "21000", "", 0, o[:pos] + hx + o[pos:], lg, 7, h(TX), ()),
    st.binary(max_size=8), logs, st.one_of(st.just(b""), _hex40.map(str.encode)),
    st.integers(0, 8))


@PROPS
@given(tail_receipts)
def test_the_output_logs_split_is_shown_as_verified_only_when_it_is_the_only_one(r) -> None:
    shown = r.to_json()
    accepted = [x for x in tail_readings(r) if reason(x) is None]
    for x in accepted:
        assert preimage(x) == r.preimage
        other = decode_receipt(x).to_json()
        # whatever split a node serves, what is shown as verified is the same bytes
        assert verified(other) == verified(shown)
        assert "unverified" in other and "output" not in other
    if r.split_fixed:
        assert not accepted and "unverified" not in shown
        assert (shown["output"], shown["logs"]) == ("0x" + r.output.hex(), [])
    else:
        assert accepted and "output" not in shown and "logs" not in shown
        assert shown["unverified"]["output"] == "0x" + r.output.hex()
    assert shown["output_and_logs"] == "0x" + r.output_and_logs.hex()


def test_a_log_folded_into_the_output_has_the_same_hash_and_is_shown_unverified() -> None:
    r = decode_receipt(LOGGED)
    folded = dict(LOGGED, output="0x" + r.output_and_logs.hex(), logEntries=[])
    f = decode_receipt(folded)
    assert f.hash == r.hash and f != r  # two readings hashing cannot tell apart ...
    for x in (r, f):  # ... shown the same: the split as the node's word
        shown = x.to_json()
        assert "unverified" in shown and "output" not in shown
        assert shown["output_and_logs"] == "0x" + r.output_and_logs.hex()
    assert verified(r.to_json()) == verified(f.to_json())
