"""Transactions: building and signing (software key and the crypto module), acceptance by the
district-node double, and checking headers older than the window against checkpoints."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from appliance import wire
from appliance.gm import sm3
from appliance.hsm.client import Client
from appliance.node.errors import VerificationError
from appliance.node.model import Header, decode_signed_tx, peer_id
from appliance.node.tx import ModuleSigner, SoftwareSigner, build_tx, verify_link_range
from appliance.node.verify import verify_tx
from hil import chain as hc
from hil.district_node import DistrictNode
from hil.hsm_emulator import HsmEmulator, change_factory_pin

CHAIN_ID = "tx-test-chain"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    # issuers enrolled 40 s ago (enrollments expire: a chain of 2023 has none valid now)
    start = int(time.time() * 1000) - 40_000
    hc.generate(out, hc.ChainParams(chain_id=CHAIN_ID, commit_every=8, start_ms=start),
                blocks=40)
    return out


def _deposit(signer, enrollment: bytes = bytes(32), **kw):
    document = b"a business licence " + str(time.time_ns()).encode()
    return build_tx(signer, chain_id=CHAIN_ID, type="evidence.deposit",
                    data={"digest": sm3.digest(document), "kind": "business-licence",
                          "enrollment": enrollment},
                    timestamp_ms=int(time.time() * 1000), **kw)


@pytest.mark.parametrize("alg", ["sm2", "ecdsa-p256"])
def test_software_signer_builds_a_valid_signed_tx(alg):
    from appliance.node import signatures

    private, public = signatures.generate_keypair(alg)
    tx = _deposit(SoftwareSigner(alg, private), memo="m")
    verify_tx(tx, CHAIN_ID)
    assert tx.body.sender == peer_id(public) == sm3.digest(public)
    assert tx.tx_id == sm3.digest(wire.encode(tx.body.to_obj()))
    assert decode_signed_tx(wire.encode(tx.to_obj())) == tx  # survives the wire
    assert len(tx.body.nonce) == 16 and _deposit(SoftwareSigner(alg, private)).body.nonce \
        != tx.body.nonce


def test_a_faulty_signer_is_caught_before_submission():
    class Broken(SoftwareSigner):
        def sign(self, message: bytes) -> bytes:
            return bytes(64)

    from appliance.node import signatures

    with pytest.raises(VerificationError) as exc:
        _deposit(Broken("sm2", signatures.generate_keypair("sm2")[0]))
    assert exc.value.rule == "tx_signature"


def test_module_signer_signs_inside_the_crypto_module(tmp_path):
    with HsmEmulator(tmp_path / "gm0", tmp_path / "module.bin") as emu, \
            Client(emu.port, pin=change_factory_pin(emu.port)) as client:
        public = client.generate_key(0)
        signer = ModuleSigner(client, 0)
        assert signer.public_key == public
        short = _deposit(signer)
        verify_tx(short, CHAIN_ID)
        # A body over the module's 3 KiB message limit is hashed here, signed inside.
        long = build_tx(signer, chain_id=CHAIN_ID, type="evidence.deposit",
                        data={"digest": bytes(32), "kind": "k" * 1000, "enrollment": bytes(32),
                              "attachment": bytes(5000)}, timestamp_ms=1)
        assert len(long.body.encoded) > 3072
        verify_tx(long, CHAIN_ID)
        assert client.info()["protocol"] == 1


def test_the_district_double_accepts_our_transactions(chain_dir):
    async def main():
        with hc.Chain.open(chain_dir) as chain:
            issuer = chain.keys("issuer")[0]
            enrollment = chain.enrollment_of(issuer.public_key, "issuer")
        signer = SoftwareSigner(issuer.alg, issuer.private_key, issuer.public_key)
        good, forged = _deposit(signer, enrollment), _deposit(signer, enrollment)
        forged = type(forged)(forged.body, forged.alg, forged.public_key,
                              bytes(reversed(forged.signature)))
        node = DistrictNode(chain_dir, block_interval_ms=0)
        await node.start()
        try:
            async with aiohttp.ClientSession() as http:
                answers = []
                for tx in (good, forged):
                    async with http.post(node.url + "/v1/tx", data=wire.encode(tx.to_obj()),
                                         headers={"Content-Type": "application/cbor"}) as r:
                        answers.append((r.status, wire.decode(await r.read())))
        finally:
            await node.stop()
        return good, answers

    good, answers = asyncio.run(main())
    assert answers[0] == (202, {"tx_id": good.tx_id})
    assert answers[1][0] == 400 and answers[1][1]["error"] == "bad_signature"


def _headers(chain_dir, low: int, high: int) -> list[Header]:
    with hc.Chain.open(chain_dir) as chain:
        return [Header.from_obj(wire.decode(h)) for h in chain.headers(low, high - low + 1)]


def test_link_range_between_checkpoints(chain_dir):
    headers = _headers(chain_dir, 0, 32)
    lower, upper = (0, headers[0].block_id), (32, headers[32].block_id)
    verified = verify_link_range(lower, upper, headers[1:])
    assert sorted(verified) == list(range(1, 33))
    assert verified[17] == headers[17]


@pytest.mark.parametrize("damage", ["tampered", "missing", "reordered", "wrong_upper",
                                    "wrong_lower"])
def test_link_range_rejects_anything_else(chain_dir, damage):
    headers = _headers(chain_dir, 0, 32)
    lower, upper, middle = (0, headers[0].block_id), (32, headers[32].block_id), headers[1:]
    if damage == "tampered":  # another timestamp: another block_id, the next link breaks
        h = middle[10]
        middle[10] = Header(h.chain_id, h.height, h.version, h.prev_hash, h.tx_root,
                            h.timestamp + 1, h.validators_hash, h.next_validators_hash)
    elif damage == "missing":
        del middle[5]
    elif damage == "reordered":
        middle[3], middle[4] = middle[4], middle[3]
    elif damage == "wrong_upper":
        upper = (32, headers[31].block_id)
    else:
        lower = (0, headers[1].block_id)
    with pytest.raises(VerificationError):
        verify_link_range(lower, upper, middle)
