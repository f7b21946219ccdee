"""The trust anchor of a terminal on a FISCO BCOS 3.x chain: a JSON file, provisioned.

::

    {"kind": "fisco-bcos-3", "chain_id": "chain0", "group": "group0",
     "height": 0, "hash": "0x47c6...01f5",
     "sealers": ["0x0055...7c49", ...], "weights": [1, 1, 1, 1]}

``height``/``hash``: a block the operator trusts (its hash as FISCO prints it, from the
chain's operators over a trusted channel). ``sealers``/``weights``: the consensus node list
(64-byte node ids, in the chain's order) and weights that sign the blocks after it. A FISCO
block names its own sealers and nothing a light client can check authorises a change, so this
list is what every later block must carry; a different one stops the sync (see sync.py and
docs/fisco-bcos.md). ``chain_id`` and ``group`` are not in any block hash: ``group`` is sent
with every call, both name the store (a store of another chain or group is refused).
Optional ``merkle_width`` (default 2): the chain's Merkle tree width.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedError
from . import jsonrpc
from .block import HASH_LEN, SealerSet, parse_hex

__all__ = ["KIND", "MAX_ANCHOR_BYTES", "FiscoAnchor", "decode_anchor"]

KIND = "fisco-bcos-3"
MAX_ANCHOR_BYTES = 128 * 1024
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEYS = {"kind", "chain_id", "group", "height", "hash", "sealers", "weights", "merkle_width"}


@dataclass(frozen=True, slots=True)
class FiscoAnchor:
    chain_id: str
    group: str
    height: int
    block_hash: bytes
    sealers: SealerSet
    merkle_width: int = 2

    @property
    def store_chain_id(self) -> str:
        """The chain id under which the header store keeps this chain."""
        return f"{KIND}/{self.chain_id}/{self.group}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "chain_id": self.chain_id, "group": self.group,
                "height": self.height, "hash": "0x" + self.block_hash.hex(),
                **self.sealers.to_json(), "merkle_width": self.merkle_width}

    def encode(self) -> bytes:
        """Canonical bytes (sorted keys, no spaces): what the store keeps and compares."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def decode_anchor(data: bytes) -> FiscoAnchor:
    """A FiscoAnchor from the file's bytes; MalformedError for anything else."""
    obj = jsonrpc.loads(data, MAX_ANCHOR_BYTES)
    if type(obj) is not dict:
        raise MalformedError("type", "a trust anchor is a JSON object")
    extra = set(obj) - _KEYS
    if extra:
        raise MalformedError("keys", f"unknown keys {sorted(extra)[:5]}")
    if obj.get("kind") != KIND:
        raise MalformedError("kind", f"kind is not {KIND!r}")
    for key in ("chain_id", "group"):
        if type(obj.get(key)) is not str or _NAME.fullmatch(obj[key]) is None:
            raise MalformedError("text", f"{key} must be 1..64 of [A-Za-z0-9_.-]")
    height = obj.get("height")
    if type(height) is not int or not 0 <= height < 1 << 63:
        raise MalformedError("range", "height is an int64 >= 0")
    width = obj.get("merkle_width", 2)
    if type(width) is not int or not 2 <= width <= 64:
        raise MalformedError("range", "merkle_width is 2..64")
    sealers = SealerSet.from_json({"sealers": obj.get("sealers"),
                                   "weights": obj.get("weights")})
    if not sealers.node_ids or sealers.total < 1:
        raise MalformedError("count", "an anchor names at least one sealer with weight")
    if len(set(sealers.node_ids)) != len(sealers.node_ids):
        raise MalformedError("duplicate", "a sealer named twice")
    return FiscoAnchor(obj["chain_id"], obj["group"], height,
                       parse_hex(obj.get("hash"), "hash", length=HASH_LEN), sealers, width)
