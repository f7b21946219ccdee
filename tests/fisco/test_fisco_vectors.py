"""FISCO BCOS 3.x block hash, quorum and proofs against a real gm-mode chain's answers
(tests/data/fisco-bcos-3x-gm.json, from FISCO's documentation), and one mutation per hashed
byte, signature and index."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from appliance.node.errors import LedgerError, VerificationError
from appliance.node.fisco import merkle
from appliance.node.fisco.anchor import FiscoAnchor
from appliance.node.fisco.block import SealerSet, decode_header
from appliance.node.fisco.receipt import decode_receipt
from appliance.node.fisco.verify import (
    SealerChange,
    Trusted,
    check_anchor,
    genesis_sealers,
    verify_inclusion,
    verify_quorum,
    verify_segment,
)

DATA = json.loads((pathlib.Path(__file__).parent.parent / "data" /
                   "fisco-bcos-3x-gm.json").read_text())
B0 = DATA["getBlockByNumber_0"]
B2 = DATA["getBlockByHash_2"]
R2 = DATA["getTransactionReceipt_block2"]
NOW = 1_800_000_000_000


def h(s: str) -> bytes:
    return bytes.fromhex(s[2:])


SEALERS = SealerSet(tuple(h(s) for s in B2["sealerList"]), tuple(B2["consensusWeights"]))
# Block 1 as block 2 names it: the trusted predecessor of block 2.
T1 = Trusted(1, h(B2["parentInfo"][0]["blockHash"]), SEALERS)


def test_genesis_hash_reproduces_and_is_the_anchor() -> None:
    header = decode_header(B0)
    assert header.hash_candidates()[0] == h(B0["hash"])
    anchor = FiscoAnchor("chain0", "group0", 0, h(B0["hash"]), SEALERS)
    assert check_anchor(anchor, header) == header.preimage(header.ambiguous_mask())
    with pytest.raises(VerificationError) as e:
        check_anchor(FiscoAnchor("chain0", "group0", 0, bytes(32), SEALERS), header)
    assert e.value.rule == "anchor"
    # The genesis configuration names the sealers block 2 carries, in the same order ...
    assert genesis_sealers(header.extra_data) == SEALERS
    # ... so a genesis anchor provisioned with another list is refused.
    for other in (SealerSet(SEALERS.node_ids[::-1], SEALERS.weights),
                  SealerSet(SEALERS.node_ids, (1, 1, 1, 2)),
                  SealerSet(SEALERS.node_ids[:3], (1, 1, 1))):
        with pytest.raises(VerificationError) as e:
            check_anchor(FiscoAnchor("chain0", "group0", 0, h(B0["hash"]), other), header)
        assert e.value.rule == "anchor" and "other sealers" in e.value.detail


def test_block2_hash_and_three_of_four_signatures() -> None:
    header = decode_header(B2)
    assert header.hash_candidates() == [h(B2["hash"])]  # nothing zero: one preimage
    assert SEALERS.total == 4 and SEALERS.threshold == 3 and len(header.signatures) == 3
    assert verify_quorum(header, SEALERS) == h(B2["hash"])
    seg = verify_segment(T1, [header], now_ms=NOW)
    assert seg.blocks == ((2, h(B2["hash"]), header.preimage()),) and seg.signed == (2,)


def test_the_hash_field_is_never_used() -> None:
    b = dict(B2, hash="0x" + "11" * 32)
    assert verify_quorum(decode_header(b), SEALERS) == h(B2["hash"])


def _flip_hex(s: str, i: int) -> str:
    raw = bytearray(h(s))
    raw[i] ^= 0x01
    return "0x" + raw.hex()


def _mutations():
    """(name, mutated block 2) for one byte changed in each byte of every hashed field."""
    yield "version", dict(B2, version=B2["version"] ^ 1)
    for k in range(4):
        yield f"version byte {k}", dict(B2, version=B2["version"] ^ (1 << (8 * k)))
    for i in range(32):
        for key in ("txsRoot", "receiptsRoot", "stateRoot"):
            yield f"{key}[{i}]", dict(B2, **{key: _flip_hex(B2[key], i)})
        p = [dict(B2["parentInfo"][0], blockHash=_flip_hex(B2["parentInfo"][0]["blockHash"], i))]
        yield f"parent hash[{i}]", dict(B2, parentInfo=p)
    for k in range(8):
        for key in ("timestamp", "sealer"):
            yield f"{key} byte {k}", dict(B2, **{key: B2[key] ^ (1 << (8 * k))})
        yield f"weight byte {k}", dict(B2, consensusWeights=[1 ^ (1 << (8 * k)), 1, 1, 1])
    for i, c in enumerate(B2["gasUsed"]):
        g = B2["gasUsed"][:i] + str((int(c) + 1) % 10) + B2["gasUsed"][i + 1:]
        if g[0] != "0":
            yield f"gasUsed[{i}]", dict(B2, gasUsed=g)
    yield "extraData", dict(B2, extraData="0x00")
    for s in range(4):
        for i in range(0, 64, 7):
            lst = list(B2["sealerList"])
            lst[s] = _flip_hex(lst[s], i)
            yield f"sealer {s}[{i}]", dict(B2, sealerList=lst)


@pytest.mark.parametrize("name,block", list(_mutations()), ids=lambda x: x if
                         isinstance(x, str) else "")
def test_any_single_byte_change_in_a_hashed_field_fails(name: str, block: dict) -> None:
    header = decode_header(block)
    assert h(B2["hash"]) not in header.hash_candidates()
    with pytest.raises(VerificationError) as e:
        verify_quorum(header, SEALERS)
    assert e.value.rule == "signature"
    with pytest.raises(VerificationError) as e:
        verify_segment(T1, [header], now_ms=NOW)
    assert e.value.rule in {"signature", "sealer_change", "parent", "height", "timestamp"}


def test_dropped_signature_below_threshold_fails() -> None:
    for drop in range(3):
        b = dict(B2, signatureList=[s for i, s in enumerate(B2["signatureList"]) if i != drop])
        with pytest.raises(VerificationError) as e:
            verify_quorum(decode_header(b), SEALERS)
        assert e.value.rule == "quorum" and "2 < 3" in e.value.detail


def test_signature_moved_to_another_sealer_index_fails() -> None:
    for i in range(3):
        for target in {0, 1, 2, 3} - {B2["signatureList"][i]["sealerIndex"]}:
            b = copy.deepcopy(B2)
            b["signatureList"][i]["sealerIndex"] = target
            with pytest.raises(VerificationError) as e:
                verify_quorum(decode_header(b), SEALERS)
            # onto the unused index 3: a bad signature; onto a used one: a repeated index
            assert e.value.rule == ("signature" if target == 3 else "quorum")
    b = copy.deepcopy(B2)  # two signatures trade places: both indices valid, both wrong
    b["signatureList"][0]["sealerIndex"], b["signatureList"][1]["sealerIndex"] = 1, 0
    with pytest.raises(VerificationError) as e:
        verify_quorum(decode_header(b), SEALERS)
    assert e.value.rule == "signature"


def test_weights_decide_the_quorum() -> None:
    # The same three signatures are short when the unsigned sealer weighs more.
    heavy = SealerSet(SEALERS.node_ids, (1, 1, 1, 3))
    assert heavy.threshold == 6 - 5 // 3
    b = dict(B2, consensusWeights=[1, 1, 1, 3])
    with pytest.raises(VerificationError) as e:
        verify_quorum(decode_header(b), heavy)
    assert e.value.rule == "quorum"
    for total, need in ((1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (7, 5), (10, 7), (100, 67)):
        assert SealerSet((bytes(64),), (total,)).threshold == need


def test_sealer_change_names_both_lists() -> None:
    other = list(B2["sealerList"])
    other[3] = "0x" + "ab" * 64
    with pytest.raises(SealerChange) as e:
        verify_segment(T1, [decode_header(dict(B2, sealerList=other))], now_ms=NOW)
    text = e.value.describe()
    assert "ab" * 64 in text and B2["sealerList"][3][2:] in text
    assert e.value.rule == "sealer_change" and e.value.height == 2


def test_parent_link_and_clock() -> None:
    with pytest.raises(VerificationError) as e:
        verify_segment(Trusted(1, bytes(32), SEALERS), [decode_header(B2)], now_ms=NOW)
    assert e.value.rule == "parent"
    with pytest.raises(VerificationError) as e:
        verify_segment(Trusted(0, T1.block_hash, SEALERS), [decode_header(B2)], now_ms=NOW)
    assert e.value.rule == "height"
    with pytest.raises(VerificationError) as e:
        verify_segment(T1, [decode_header(B2)], now_ms=B2["timestamp"] - 60_001)
    assert e.value.rule == "timestamp"


def test_receipt_hash_and_single_element_proof() -> None:
    r = decode_receipt(R2)
    assert r.hash == h(R2["hash"]) == h(B2["receiptsRoot"])
    assert r.proof == (h("0x" + R2["txReceiptProof"][0]),)
    assert merkle.verify(r.hash, 0, 1, r.proof, h(B2["receiptsRoot"]))
    block = decode_header(dict(B2, transactions=[R2["transactionHash"]]))
    inc = verify_inclusion(block, h(B2["hash"]), h(R2["transactionHash"]),
                           [h(R2["transactionHash"])], r)
    assert (inc.number, inc.index, inc.tree_size, inc.receipt) == (2, 0, 1, r)
    # FISCO's verifier ignores a one-element proof's content; this one must be the leaf.
    assert not merkle.verify(r.hash, 0, 1, [bytes(32)], h(B2["receiptsRoot"]))
    # A changed receipt field changes its hash: no longer proven.
    r2 = decode_receipt(dict(R2, status=1))
    with pytest.raises(VerificationError) as e:
        verify_inclusion(block, h(B2["hash"]), h(R2["transactionHash"]),
                         [h(R2["transactionHash"])], r2)
    assert e.value.rule == "receipt_proof"
    with pytest.raises(VerificationError) as e:
        verify_inclusion(block, bytes(32), h(R2["transactionHash"]), [], r)
    assert e.value.rule == "block_hash"


def test_decoders_refuse_wrong_shapes() -> None:
    for bad in (dict(B2, number=-1), dict(B2, number=True), dict(B2, txsRoot="0x12"),
                dict(B2, gasUsed="012"), dict(B2, gasUsed=24363), dict(B2, extraData="00"),
                dict(B2, sealerList=B2["sealerList"][:3]), dict(B2, signatureList=[{}]),
                {k: v for k, v in B2.items() if k != "stateRoot"}, [], "x"):
        with pytest.raises(LedgerError):
            decode_header(bad)
    for bad in (dict(R2, version=1), dict(R2, contractAddress="0x12"), dict(R2, output="zz")):
        with pytest.raises(LedgerError):
            decode_receipt(bad)
