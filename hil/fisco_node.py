"""A FISCO BCOS 3.x-shaped JSON-RPC node: a TEST FIXTURE of the HIL rig.

It generates a gm-mode chain (SM3, SM2) of ``blocks`` blocks sealed by ``sealers`` SM2 keys of
its own (derived from ``seed``), in FISCO's exact layouts, and serves it over FISCO's JSON-RPC
(HTTP POST, single calls and batches). It is written from FISCO's data layouts (see
docs/fisco-bcos.md) and never imports ``appliance.node``: the light node and this double are
two implementations, and their agreement is the interop test. **It is not a FISCO node**: no
consensus, no execution, no persistence; its sealers' private keys are derived from the seed
in the clear. Never expose it outside a test rig.

The chain: block 0 is a genesis block as FISCO writes one (roots, gas and lists unset; its
``extraData`` the genesis configuration naming the sealers); block n >= 1 holds ``n % 3``
transactions (so every third block is empty: roots of 32 zero bytes, gas ``"0"``), its
``sealerList`` (64-byte node ids), weights 1, and the signatures of every sealer but
``n % sealers`` (a bare quorum when there are 4). Transaction and receipt trees are FISCO's
width-2 Merkle trees. Receipts (version 0): transaction 0 deploys a contract (status 0, its
address, no output); transaction 1 calls it: in even blocks it succeeds (a 32-byte output and
one log with one topic), in odd ones it reverts (status 16, ``RevertInstruction``, 2 bytes of
output, no log). Signatures are made when a block is first served (SM2 signing is the
slow part), and can be kept in ``sig_cache`` (a file) across runs.

Methods (``params`` as FISCO 3.x: group, node name, ...): ``getBlockNumber``,
``getBlockByNumber(n, onlyHeader, onlyTxHash)``, ``getBlockHashByNumber(n)``,
``getTransaction(hash, withProof)``, ``getTransactionReceipt(hash, withProof)``. Another group
is error -32602; an unknown method -32601; a block above the tip error -32602.

Misbehaviours (``MODE[@H]``, H default 1; affects blocks >= H):

- ``forge-commit``: every signature is ``d || SM3(d)``, d = SM3("hil fisco forge" || n || i).
- ``wrong-link``: block H's parentInfo hash is SM3("hil wrong-link" || true hash); later
  blocks are re-linked and every block >= H re-signed by the real sealers.
- ``set-hijack``: blocks >= H name sealers of fresh keys (seed "hil fisco set-hijack/SEED"),
  are signed by them and re-linked.
- ``bad-proof``: transaction and receipt proofs of blocks >= H have their first hash element
  changed (a one-element proof becomes SM3("hil bad-proof" || leaf)).
- ``swap-receipt``: the receipt of transaction i of a block >= H holding 2 or more is the other
  transaction's receipt (its fields and its true proof), with ``transactionHash`` of i: valid
  membership, wrong position.
- ``shift-receipt``: every receipt of a block >= H is served as another reading of the same
  hashed bytes, with its true hash and proof: the gas loses its last 2 digits to the next
  field, a contract address keeps its 40 characters (so its last 2 go to the status), the
  status gives its last 2 bytes to the output (a deployment of gas ``24363``, status 0,
  becomes gas ``243``, address ``63...``, status ``0x..330000``).
- ``empty-forged``: block H is replaced by an empty block linked to H - 1 and signed with
  forged signatures; the tip is H.
- ``withhold``: the tip is reported, blocks above H are an error.
- ``garbage`` / ``oversize`` / ``slow``: the body of any answer holding a block >= H (every
  answer without @H) is not JSON / 9 MiB without a length / 8 bytes a second.

``think_s`` (not a misbehaviour): every answer waits that long before its headers are sent,
as a busy node would. A request body over 1 MiB, or not JSON, is answered with the JSON-RPC
parse error (-32700).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance.gm import sm2, sm3
from appliance.httpbody import read_capped
from hil.process import FixtureProcess, serve_until_stopped

__all__ = ["MODES", "FiscoChain", "FiscoNode", "FiscoNodeProcess", "Misbehaviour", "Receipt"]

MODES = ("forge-commit", "wrong-link", "set-hijack", "bad-proof", "swap-receipt",
         "shift-receipt", "empty-forged", "withhold", "garbage", "oversize", "slow")
_TRANSPORT = ("garbage", "oversize", "slow")
VERSION = 50528256  # 3.3.0, as in FISCO's documented gm chain
GARBAGE_BODY = b"\xff\xfe hil fisco-node misbehave=garbage: not JSON \x00"
OVERSIZE_BYTES = 9 * 1024 * 1024
SLOW_CHUNK, SLOW_PERIOD_S = 4, 0.5
MAX_REQUEST = 1024 * 1024
MAX_BATCH = 1000
_N = sm2.N
_ZERO = bytes(32)


def _h(data: bytes) -> bytes:
    return sm3.digest(data)


def _q(x: int) -> bytes:
    return struct.pack(">q", x)


def derive_key(seed: str, index: int) -> tuple[bytes, bytes]:
    """(private key, 64-byte node id) of sealer ``index``."""
    d = int.from_bytes(_h(f"hil-fisco/1 sealer|{seed}|{index}".encode()), "big") % (_N - 2) + 1
    sk = d.to_bytes(32, "big")
    return sk, sm2.public_key_of(sk)[1:]


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return _ZERO
    level = leaves
    while len(level) > 1:
        level = [_h(b"".join(level[i:i + 2])) for i in range(0, len(level), 2)]
    return level[0]


def merkle_proof(leaves: list[bytes], index: int) -> list[bytes]:
    if len(leaves) == 1:
        return [leaves[0]]
    out: list[bytes] = []
    level, pos = leaves, index
    while len(level) > 1:
        start = pos - pos % 2
        group = level[start:start + 2]
        out += [struct.pack(">I", len(group)), *group]
        level = [_h(b"".join(level[i:i + 2])) for i in range(0, len(level), 2)]
        pos //= 2
    return out


@dataclass
class Block:
    number: int
    parent: tuple[int, bytes] | None
    txs_root: bytes  # as hashed (b"" when unset)
    receipts_root: bytes
    state_root: bytes
    gas_used: str  # as hashed ("" when unset)
    timestamp: int
    sealer: int
    sealers: list[bytes]
    extra: bytes
    weights: list[int]
    tx_hashes: list[bytes]
    receipts: list[Receipt]

    def preimage(self) -> bytes:
        out = [struct.pack(">i", VERSION)]
        if self.parent is not None:
            out += [_q(self.parent[0]), self.parent[1]]
        out += [self.txs_root, self.receipts_root, self.state_root, _q(self.number),
                self.gas_used.encode(), _q(self.timestamp), _q(self.sealer), *self.sealers,
                self.extra, *(_q(w) for w in self.weights)]
        return b"".join(out)

    @property
    def hash(self) -> bytes:
        return _h(self.preimage())


@dataclass(frozen=True)
class Receipt:
    """A version-0 receipt's hashed fields (addresses as hashed: lowercase hex, no 0x)."""

    gas: str
    address: str
    status: int
    output: bytes
    logs: tuple[tuple[str, tuple[bytes, ...], bytes], ...]
    number: int

    def preimage(self) -> bytes:
        """int32 version || gas || address || int32 status || output || per log: address ||
        topics || data || int64 block number: no lengths, no separators."""
        out = [struct.pack(">i", 0), self.gas.encode(), self.address.encode(),
               struct.pack(">i", self.status), self.output]
        for address, topics, data in self.logs:
            out += [address.encode(), *topics, data]
        out.append(_q(self.number))
        return b"".join(out)

    @property
    def hash(self) -> bytes:
        return _h(self.preimage())

    def json(self) -> dict[str, Any]:
        """The fields as FISCO 3.1+ prints them."""
        return {"version": 0, "gasUsed": self.gas,
                "contractAddress": "0x" + self.address if self.address else "",
                "status": self.status, "output": _hex(self.output),
                "logEntries": [{"address": a, "topics": [_hex(t) for t in tp], "data": _hex(d)}
                               for a, tp, d in self.logs],
                "blockNumber": self.number}

    def shifted(self) -> dict[str, Any]:
        """The ``shift-receipt`` reading: the same preimage bytes, boundaries 2 bytes left."""
        head = self.gas.encode() + self.address.encode() + struct.pack(">i", self.status)
        g = len(self.gas) - 2
        a = g + len(self.address)
        out = dict(self.json())
        out["gasUsed"] = head[:g].decode()
        out["contractAddress"] = "0x" + head[g:a].decode() if self.address else ""
        out["status"] = struct.unpack(">i", head[a:a + 4])[0]
        out["output"] = _hex(head[a + 4:] + self.output)
        return out


def _receipts(seed: str, n: int, count: int) -> list[Receipt]:
    """Transaction 0 deploys, 1 calls (with a log in even blocks, a revert in odd ones)."""
    contract = _h(f"hil fisco contract|{seed}|{n}".encode())[:20].hex()
    out = []
    if count > 0:
        out.append(Receipt(str(24_000 + n % 1000), contract, 0, b"", (), n))
    if count > 1 and n % 2 == 0:
        topic = _h(b"hil fisco event")
        out.append(Receipt(str(21_000 + n % 977), "", 0, n.to_bytes(32, "big"),
                           ((contract, (topic,), bytes([n & 0xFF])),), n))
    elif count > 1:
        out.append(Receipt(str(21_000 + n % 977), "", 16, bytes([n & 0xFF, 1]), (), n))
    return out


class FiscoChain:
    """The generated chain (honest), with lazily made, cached signatures."""

    def __init__(self, blocks: int, sealers: int = 4, seed: str = "0",
                 start_ms: int = 1_700_000_000_000, interval_ms: int = 1000,
                 chain_id: str = "chain0", group: str = "group0",
                 sig_cache: str | os.PathLike[str] | None = None) -> None:
        if blocks < 1 or not 1 <= sealers <= 64:
            raise ValueError("need blocks >= 1 and 1..64 sealers")
        self.seed, self.chain_id, self.group = seed, chain_id, group
        self.keys = [derive_key(seed, i) for i in range(sealers)]
        ids = [k[1] for k in self.keys]
        config = (f"[chain]\nsm_crypto:1\nchainID: {chain_id}\ngroupID: {group}\n"
                  "[consensus]\nconsensus_type: pbft\n" +
                  "".join(f"node.{i}:{n.hex()},1\n" for i, n in enumerate(ids)))
        genesis = Block(0, None, b"", b"", b"", "", start_ms, 0, [], config.encode(), [], [], [])
        self.blocks = [genesis]
        self.hashes = [genesis.hash]
        for n in range(1, blocks):
            txs = [_h(f"hil fisco tx|{seed}|{n}|{i}".encode()) for i in range(n % 3)]
            receipts = _receipts(seed, n, len(txs))
            gas_total = str(sum(int(r.gas) for r in receipts))
            b = Block(n, (n - 1, self.hashes[-1]), merkle_root(txs),
                      merkle_root([r.hash for r in receipts]),
                      _h(f"hil fisco state|{seed}|{n}".encode()), gas_total,
                      start_ms + n * interval_ms, n % sealers, ids, b"", [1] * sealers, txs,
                      receipts)
            self.blocks.append(b)
            self.hashes.append(b.hash)
        self.tx_index = {t: (b.number, i) for b in self.blocks for i, t in enumerate(b.tx_hashes)}
        self._sigs: dict[bytes, list[tuple[int, bytes]]] = {}
        self._cache_path = pathlib.Path(sig_cache) if sig_cache else None
        self._cache_dirty = False
        if self._cache_path is not None and self._cache_path.exists():
            self._load_cache()

    @property
    def tip(self) -> int:
        return len(self.blocks) - 1

    def signers(self, number: int, count: int) -> list[int]:
        """Every sealer but number % count (all of them for a single sealer)."""
        return [i for i in range(count) if count == 1 or i != number % count]

    def sign(self, block_hash: bytes, number: int, keys: list[tuple[bytes, bytes]]
             ) -> list[tuple[int, bytes]]:
        key = block_hash + b"".join(k[1] for k in keys)
        key = _h(key)
        got = self._sigs.get(key)
        if got is None:
            got = [(i, sm2.sign(keys[i][0], block_hash)) for i in self.signers(number, len(keys))]
            self._sigs[key] = got
            self._cache_dirty = True
        return got

    def anchor(self, height: int = 0) -> dict[str, Any]:
        return {"kind": "fisco-bcos-3", "chain_id": self.chain_id, "group": self.group,
                "height": height, "hash": "0x" + self.hashes[height].hex(),
                "sealers": ["0x" + k[1].hex() for k in self.keys],
                "weights": [1] * len(self.keys)}

    # a file of records: 32-byte key, 1-byte count, count x (1-byte index, 64-byte signature)
    def _load_cache(self) -> None:
        assert self._cache_path is not None
        data = self._cache_path.read_bytes()
        i = 0
        while i + 33 <= len(data):
            key, count = data[i:i + 32], data[i + 32]
            i += 33
            sigs = []
            for _ in range(count):
                sigs.append((data[i], data[i + 1:i + 65]))
                i += 65
            self._sigs[key] = sigs

    def save_cache(self) -> None:
        if self._cache_path is None or not self._cache_dirty:
            return
        out = bytearray()
        for key, sigs in self._sigs.items():
            out += key + bytes([len(sigs)])
            for idx, s in sigs:
                out += bytes([idx]) + s
        tmp = self._cache_path.with_suffix(".tmp")
        tmp.write_bytes(out)
        os.replace(tmp, self._cache_path)
        self._cache_dirty = False


@dataclass(frozen=True)
class Misbehaviour:
    mode: str
    height: int = 1

    @classmethod
    def parse(cls, text: str) -> Misbehaviour:
        mode, sep, rest = text.strip().partition("@")
        if mode not in MODES:
            raise ValueError(f"misbehaviour {mode!r}: choose one of {', '.join(MODES)}")
        if sep and not (rest.isascii() and rest.isdigit()):
            raise ValueError(f"height {rest!r} is not a non-negative integer")
        return cls(mode, int(rest) if sep else (0 if mode in _TRANSPORT else 1))

    def __str__(self) -> str:
        return f"{self.mode}@{self.height}"


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


class FiscoNode:
    """The JSON-RPC server over a :class:`FiscoChain` (see the module docstring)."""

    def __init__(self, chain: FiscoChain, *, host: str = "127.0.0.1", port: int = 0,
                 misbehave: Misbehaviour | str | None = None,
                 log: Callable[[str], None] | None = None, think_s: float = 0.0) -> None:
        self.chain = chain
        self.think_s = think_s
        self.host, self.requested_port = host, port
        self.misbehave = Misbehaviour.parse(misbehave) if isinstance(misbehave, str) \
            else misbehave
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._fork: dict[int, tuple[Block, bytes, list[tuple[int, bytes]]]] = {}
        self._hijack = [derive_key(f"hil fisco set-hijack/{chain.seed}", i)
                        for i in range(len(chain.keys))]

    # -- the served view -------------------------------------------------------------------

    @property
    def tip(self) -> int:
        m = self.misbehave
        if m is not None and m.mode == "empty-forged":
            return min(m.height, self.chain.tip)
        return self.chain.tip

    def _mode_at(self, n: int) -> str | None:
        m = self.misbehave
        return m.mode if m is not None and n >= m.height else None

    def _view(self, n: int) -> tuple[Block, bytes, list[tuple[int, bytes]]]:
        """(block, its hash, signatures) as served."""
        c = self.chain
        mode = self._mode_at(n)
        if mode in ("wrong-link", "set-hijack", "empty-forged"):
            return self._forked(n, mode)
        b, bh = c.blocks[n], c.hashes[n]
        if n == 0:
            return b, bh, []
        sigs = c.sign(bh, n, c.keys)
        if mode == "forge-commit":
            sigs = [(i, _h(b"hil fisco forge" + _q(n) + bytes([i])) +
                     _h(_h(b"hil fisco forge" + _q(n) + bytes([i])))) for i, _ in sigs]
        return b, bh, sigs

    def _forked(self, n: int, mode: str) -> tuple[Block, bytes, list[tuple[int, bytes]]]:
        got = self._fork.get(n)
        if got is not None:
            return got
        c = self.chain
        m = self.misbehave
        assert m is not None
        prev_hash = c.hashes[n - 1] if n == m.height else self._forked(n - 1, mode)[1]
        src = c.blocks[n]
        b = Block(**{**src.__dict__})
        keys = c.keys
        if mode == "wrong-link" and n == m.height:
            b.parent = (n - 1, _h(b"hil wrong-link" + prev_hash))
        else:
            b.parent = (n - 1, prev_hash)
        if mode == "set-hijack":
            keys = self._hijack
            b.sealers = [k[1] for k in keys]
        if mode == "empty-forged":
            b.tx_hashes, b.receipts = [], []
            b.txs_root = b.receipts_root = _ZERO
            b.gas_used = "0"
        bh = b.hash
        if mode == "empty-forged":
            sigs = [(i, _h(b"hil empty-forged" + bytes([i])) * 2)
                    for i in c.signers(n, len(keys))]
        else:
            sigs = c.sign(bh, n, keys)
        self._fork[n] = (b, bh, sigs)
        return self._fork[n]

    def _block_json(self, n: int, only_header: bool, only_hash: bool) -> dict[str, Any]:
        b, bh, sigs = self._view(n)
        obj: dict[str, Any] = {
            "consensusWeights": b.weights, "extraData": _hex(b.extra), "gasUsed":
            b.gas_used or "0", "hash": _hex(bh), "number": n,
            "parentInfo": [] if b.parent is None else
            [{"blockHash": _hex(b.parent[1]), "blockNumber": b.parent[0]}],
            "receiptsRoot": _hex(b.receipts_root or _ZERO), "sealer": b.sealer,
            "sealerList": [_hex(s) for s in b.sealers],
            "signatureList": [{"sealerIndex": i, "signature": _hex(s)} for i, s in sigs],
            "stateRoot": _hex(b.state_root or _ZERO), "timestamp": b.timestamp,
            "txsRoot": _hex(b.txs_root or _ZERO), "version": VERSION}
        if not only_header:
            obj["transactions"] = [_hex(t) if only_hash else {"hash": _hex(t)}
                                   for t in b.tx_hashes]
        return obj

    def _proof(self, leaves: list[bytes], i: int, n: int) -> list[str]:
        p = merkle_proof(leaves, i)
        if self._mode_at(n) == "bad-proof":
            if len(p) == 1:
                p = [_h(b"hil bad-proof" + p[0])]
            else:
                p = [p[0], _h(b"hil bad-proof" + p[1]), *p[2:]]
        return [x.hex() for x in p]

    def _locate(self, tx_hash: str) -> tuple[Block, int]:
        try:
            raw = bytes.fromhex(tx_hash[2:] if tx_hash.startswith("0x") else tx_hash)
        except (ValueError, AttributeError):
            raise _RpcError(-32602, "bad transaction hash") from None
        where = self.chain.tx_index.get(raw)
        if where is None or where[0] > self.tip or self._mode_at(where[0]) == "withhold":
            raise _RpcError(-32602, "transaction not found")
        b = self._view(where[0])[0]
        if raw not in b.tx_hashes:
            raise _RpcError(-32602, "transaction not found")
        return b, b.tx_hashes.index(raw)

    def _call(self, method: str, params: list) -> tuple[Any, int | None]:
        """(result, highest block number it holds)."""
        if not params or params[0] != self.chain.group:
            raise _RpcError(-32602, "group not found")
        if method == "getBlockNumber":
            return self.tip, None
        if method in ("getBlockByNumber", "getBlockHashByNumber"):
            n = params[2] if len(params) > 2 else None
            if type(n) is not int or not 0 <= n <= self.tip:
                raise _RpcError(-32602, "block not found")
            m = self.misbehave
            if m is not None and m.mode == "withhold" and n > m.height:
                raise _RpcError(-32602, "block not found")
            if method == "getBlockHashByNumber":
                return _hex(self._view(n)[1]), n
            only_header = bool(params[3]) if len(params) > 3 else False
            only_hash = bool(params[4]) if len(params) > 4 else True
            return self._block_json(n, only_header, only_hash), n
        if method == "getTransaction":
            b, i = self._locate(params[2] if len(params) > 2 else "")
            obj = {"hash": _hex(b.tx_hashes[i]), "blockNumber": b.number, "version": 0,
                   "chainID": self.chain.chain_id, "groupID": self.chain.group}
            if len(params) > 3 and params[3]:
                obj["txProof"] = self._proof(b.tx_hashes, i, b.number)
            return obj, b.number
        if method == "getTransactionReceipt":
            b, i = self._locate(params[2] if len(params) > 2 else "")
            j = i
            if self._mode_at(b.number) == "swap-receipt" and len(b.tx_hashes) > 1:
                j = (i + 1) % len(b.tx_hashes)
            r = b.receipts[j]
            fields = r.shifted() if self._mode_at(b.number) == "shift-receipt" else r.json()
            obj = {**fields, "transactionHash": _hex(b.tx_hashes[i]), "hash": _hex(r.hash),
                   "message": "", "from": "0x" + "00" * 20, "to": "", "extraData": ""}
            if len(params) > 3 and params[3]:
                obj["txReceiptProof"] = self._proof([x.hash for x in b.receipts], j,
                                                    b.number)
            return obj, b.number
        raise _RpcError(-32601, f"method {method!r} not found")

    def _answer(self, call: Any) -> tuple[dict[str, Any], int | None]:
        rid = call.get("id") if isinstance(call, dict) else None
        try:
            if not isinstance(call, dict) or not isinstance(call.get("method"), str) \
                    or not isinstance(call.get("params", []), list):
                raise _RpcError(-32600, "invalid request")
            result, height = self._call(call["method"], call.get("params", []))
            return {"jsonrpc": "2.0", "id": rid, "result": result}, height
        except _RpcError as exc:
            return {"jsonrpc": "2.0", "id": rid,
                    "error": {"code": exc.code, "message": exc.message}}, None

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await read_capped(request, MAX_REQUEST)
        heights: list[int] = []
        try:
            if body is None:
                raise ValueError("too large")
            parsed = json.loads(body)
            if isinstance(parsed, list):
                if not parsed or len(parsed) > MAX_BATCH:
                    raise ValueError("batch size")
                out: Any = []
                for call in parsed:
                    answer, hgt = self._answer(call)
                    out.append(answer)
                    if hgt is not None:
                        heights.append(hgt)
            else:
                out, hgt = self._answer(parsed)
                if hgt is not None:
                    heights.append(hgt)
        except ValueError:
            out = {"jsonrpc": "2.0", "id": None,
                   "error": {"code": -32700, "message": "parse error"}}
        data = json.dumps(out, separators=(",", ":")).encode()
        if self.think_s > 0:  # the node's time to answer, before its headers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.think_s)
        m = self.misbehave
        mode = None
        if m is not None and m.mode in _TRANSPORT and (
                m.height == 0 or any(x >= m.height for x in heights)):
            mode = m.mode
        resp = await self._send(request, data, mode)
        if body is None and not resp.prepared:
            resp.force_close()  # do not drain the rest of an oversize request
        self.log(f"{request.remote} POST {'>' + str(MAX_REQUEST) if body is None else len(body)}B"
                 f" -> {len(data)}B "
                 f"{(time.monotonic() - started) * 1000:.0f}ms{' ' + mode if mode else ''}")
        return resp

    async def _send(self, request: web.Request, data: bytes, mode: str | None
                    ) -> web.StreamResponse:
        ctype = "application/json"
        if mode is None:
            return web.Response(body=data, content_type=ctype)
        if mode == "garbage":
            return web.Response(body=GARBAGE_BODY, content_type=ctype)
        resp = web.StreamResponse()
        resp.content_type = ctype
        chunks: AsyncIterator[bytes]
        if mode == "oversize":
            resp.enable_chunked_encoding()
            chunks = self._oversize()
        else:
            resp.content_length = len(data)
            chunks = self._slow(data)
        await resp.prepare(request)
        try:
            async for chunk in chunks:
                await resp.write(chunk)
            await resp.write_eof()
        except ConnectionError:
            if request.transport is not None:
                request.transport.close()
        return resp

    async def _oversize(self) -> AsyncIterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"result":"'
        zeros = b"0" * 65536
        for _ in range(OVERSIZE_BYTES // len(zeros)):
            if self._stopping.is_set():
                raise ConnectionResetError("stopping")
            yield zeros

    async def _slow(self, data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), SLOW_CHUNK):
            if i:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), SLOW_PERIOD_S)
                if self._stopping.is_set():
                    raise ConnectionResetError("stopping")
            yield data[i:i + SLOW_CHUNK]

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_REQUEST + 1)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"
        self.log(f"serving {self.chain.tip + 1} blocks, {len(self.chain.keys)} sealers, group "
                 f"{self.chain.group} at {self.url}; misbehave {self.misbehave or 'none'}; "
                 "TEST FIXTURE")
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.chain.save_cache()


def run_cli(*, blocks: int, sealers: int, host: str, port: int, seed: str,
            misbehave: str | None, sig_cache: str | None, anchor_out: str | None,
            chain_id: str, group: str, exit_with_parent: bool = False) -> int:
    """``appliance-hil fisco-node``: serve until SIGTERM/SIGINT; exit status."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            chain = FiscoChain(blocks, sealers, seed, chain_id=chain_id, group=group,
                               sig_cache=sig_cache)
            node = FiscoNode(chain, host=host, port=port, misbehave=misbehave)
            if anchor_out:
                pathlib.Path(anchor_out).write_text(json.dumps(chain.anchor(0)))
        except (OSError, ValueError) as exc:
            print(f"fisco-node: {exc}", file=sys.stderr, flush=True)
            return 2
        try:
            url = await node.start()
        except OSError as exc:
            print(f"fisco-node: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"ready {url}", flush=True)
        await serve_until_stopped(stop, exit_with_parent=exit_with_parent)
        await node.stop()
        return 0

    return asyncio.run(main())


class FiscoNodeProcess(FixtureProcess):
    """``appliance-hil fisco-node`` as a subprocess (``.url`` once started)."""

    name = "fisco-node"

    def __init__(self, *, blocks: int, sealers: int = 4, seed: str = "0",
                 misbehave: str | None = None, sig_cache: str | os.PathLike[str] | None = None,
                 anchor_out: str | os.PathLike[str] | None = None, port: int = 0,
                 ready_timeout: float = 60.0) -> None:
        args = ["fisco-node", "--blocks", str(blocks), "--sealers", str(sealers),
                "--port", str(port), "--seed", seed]
        for flag, value in (("--misbehave", misbehave), ("--sig-cache", sig_cache),
                            ("--anchor-out", anchor_out)):
            if value is not None:
                args += [flag, str(value)]
        super().__init__(args, ready_timeout=ready_timeout)
        self.url = ""

    def start(self) -> FiscoNodeProcess:
        super().start()
        self.url = self.ready_line.split(None, 1)[1].strip()
        return self
