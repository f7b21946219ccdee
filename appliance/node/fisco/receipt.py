"""FISCO BCOS 3.x transaction receipts (version 0), read one way only.

**The receipt hash** (SM3 over FISCO's tars ``TransactionReceiptData``; integers big-endian,
**no lengths, no separators**)::

    int32 version || gasUsed (ASCII) || contractAddress (ASCII) || int32 status || output ||
    for each log: address (ASCII) || each topic || data || int64 blockNumber

Without lengths one hash has many readings: the finding this module answers is that a node
could move bytes across a boundary (``"24363"`` + address + status 0 read as gas ``"243"``,
address ``"63..."``, status ``0x62330000`` and output ``0000``) and the receipt would still be
proven. So every field value is refused unless FISCO BCOS 3.x can produce it:

- ``version`` 0 (the layout checked against a real chain; ``unsupported`` otherwise);
- ``gasUsed`` a canonical decimal, 1 to 20 digits, no sign, no leading zero, at most
  2^64 - 1 (FISCO computes it as an unsigned 64-bit gas limit minus the gas left)
  (``receipt_gas``);
- ``contractAddress`` empty, or 40 lowercase hex digits (hashed without ``0x``; FISCO 3.1 and
  later print ``0x`` in front, 3.0 did not) (``receipt_address``);
- ``status`` one of FISCO 3.x's ``TransactionStatus`` codes (:data:`TX_STATUS`, 0..10015)
  (``receipt_status``);
- ``output``, log ``topics`` and log ``data`` canonical hex (``0x`` and lowercase digits, as
  FISCO prints them) (``receipt_output`` / ``receipt_log``); a log's address is 40 lowercase
  hex digits (an EVM log always names its contract), topics are 32 bytes, at most 4;
- ``blockNumber`` an int64 >= 0 (``receipt_block_number``); the inclusion check then
  requires it to be the block's number.

**Why that leaves one reading of the fields before the output.** The version is the first 4
bytes and the block number the last 8: fixed. Gas and address are ASCII ``0-9a-f`` and every
status code is below 65 536, so the status starts with a 0 byte, which is no hex digit. Gas
and address therefore end exactly at the first byte after the version that is not a lowercase
hex digit; call their joint length L. Gas has 1..20 digits and an address 0 or 40, so
L <= 20 means no address and 41 <= L <= 60 means the last 40 are the address (and the rest
decimal); any other L is no valid receipt. The status is then the 4 bytes after, the output
starts after it. (``tests/fisco/test_fisco_receipt.py`` checks this by construction and by
search.)

**What hashing cannot fix: where the output ends and the logs begin.** Output and log data
are any bytes, so a receipt's logs can be read as more output (or the end of an output that
holds 40 lowercase hex characters as a log). :attr:`Receipt.split_fixed` says when the split
is the only one (no logs, and no 40-hex-digit run in the output); otherwise the terminal
shows the verified bytes after the status whole (``output_and_logs``) and the node's split of
them as ``unverified``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from appliance.gm import sm3

from ..errors import MalformedError
from .block import HASH_LEN, parse_hex, parse_proof

__all__ = [
    "MAX_GAS", "MAX_LOGS", "MAX_OUTPUT", "MAX_TOPICS", "TX_STATUS", "Receipt", "decode_receipt",
]

MAX_LOGS = 1024
MAX_TOPICS = 4
MAX_OUTPUT = 1024 * 1024
MAX_GAS = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1

#: FISCO BCOS 3.x ``bcos::protocol::TransactionStatus``: every code a 3.x release defines
#: (later releases only added codes), with its name. Executors set no other status.
TX_STATUS: dict[int, str] = {
    0: "None", 1: "Unknown", 2: "OutOfGasLimit", 7: "NotEnoughCash", 10: "BadInstruction",
    11: "BadJumpDestination", 12: "OutOfGas", 13: "OutOfStack", 14: "StackUnderflow",
    15: "PrecompiledError", 16: "RevertInstruction", 17: "ContractAddressAlreadyUsed",
    18: "PermissionDenied", 19: "CallAddressError", 20: "GasOverflow", 21: "ContractFrozen",
    22: "AccountFrozen", 23: "AccountAbolished", 24: "ContractAbolished",
    32: "WASMValidationFailure", 33: "WASMArgumentOutOfRange", 34: "WASMUnreachableInstruction",
    35: "WASMTrap", 10000: "NonceCheckFail", 10001: "BlockLimitCheckFail", 10002: "TxPoolIsFull",
    10003: "Malformed", 10004: "AlreadyInTxPool", 10005: "TxAlreadyInChain",
    10006: "InvalidChainId", 10007: "InvalidGroupId", 10008: "InvalidSignature",
    10009: "RequestNotBelongToTheGroup", 10010: "TransactionPoolTimeout",
    10011: "AlreadyInTxPoolAndAccept", 10012: "OverFlowValue", 10013: "MaxInitCodeSizeExceeded",
    10014: "SenderNoEOA", 10015: "InsufficientFunds",
}

_GAS = re.compile(r"0|[1-9][0-9]{0,19}")
_ADDR = re.compile(r"[0-9a-f]{40}")
_CANON_HEX = re.compile(r"0x(?:[0-9a-f]{2})*")
_HEX40_RUN = re.compile(rb"[0-9a-f]{40}")
_TOPICS_READ = 16  # a size limit before parsing; the rule (at most 4) is Receipt's

Log = tuple[str, tuple[bytes, ...], bytes]


def _is_int(v: object) -> bool:
    return type(v) is int


@dataclass(frozen=True, slots=True)
class Receipt:
    """The hashed fields of a version-0 receipt (as hashed: the addresses without ``0x``), its
    claimed transaction hash and the proof the node sent. Constructing one checks every field
    value (the rules in the module docstring): :class:`MalformedError` otherwise."""

    version: int
    gas_used: str
    contract_address: str
    status: int
    output: bytes
    logs: tuple[Log, ...]
    block_number: int
    transaction_hash: bytes
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not _is_int(self.version) or self.version != 0:
            raise MalformedError("unsupported", f"receipt version {self.version!r}")
        g = self.gas_used
        if type(g) is not str or _GAS.fullmatch(g) is None or int(g) > MAX_GAS:
            raise MalformedError("receipt_gas", f"gasUsed {g!r} is not a decimal of at most "
                                 f"{MAX_GAS}")
        a = self.contract_address
        if type(a) is not str or (a and _ADDR.fullmatch(a) is None):
            raise MalformedError("receipt_address", f"contractAddress {a!r} is neither empty "
                                 "nor 40 lowercase hex digits")
        if not _is_int(self.status) or self.status not in TX_STATUS:
            raise MalformedError("receipt_status", f"status {self.status!r} is no FISCO "
                                 "TransactionStatus")
        if type(self.output) is not bytes:
            raise MalformedError("receipt_output", "output is not bytes")
        if type(self.logs) is not tuple:
            raise MalformedError("receipt_log", "logs are not a tuple")
        for log in self.logs:
            _check_log(log)
        n = self.block_number
        if not _is_int(n) or not 0 <= n <= _I64_MAX:
            raise MalformedError("receipt_block_number", f"blockNumber {n!r} is no int64 >= 0")

    @property
    def preimage(self) -> bytes:
        return (struct.pack(">i", self.version) + self.gas_used.encode() +
                self.contract_address.encode() + struct.pack(">i", self.status) +
                self.output_and_logs + struct.pack(">q", self.block_number))

    @property
    def output_and_logs(self) -> bytes:
        """The hashed bytes after the status: verified as a whole, not their split."""
        parts = [self.output]
        for address, topics, data in self.logs:
            parts += [address.encode(), *topics, data]
        return b"".join(parts)

    @property
    def split_fixed(self) -> bool:
        """True when no other split of :attr:`output_and_logs` passes the rules: no logs (any
        log could be read as more output) and no 40 lowercase hex digits in the output (they
        could be read as a log's address)."""
        return not self.logs and _HEX40_RUN.search(self.output) is None

    @property
    def hash(self) -> bytes:
        return sm3.digest(self.preimage)

    def to_json(self) -> dict[str, Any]:
        """What the terminal shows. ``status``, ``gas_used`` and ``contract_address`` are
        fixed by the hash; ``output``/``logs`` appear only when their split is
        (:attr:`split_fixed`), else under ``unverified`` beside the verified
        ``output_and_logs``."""
        split: dict[str, Any] = {
            "output": "0x" + self.output.hex(),
            "logs": [{"address": "0x" + a, "topics": ["0x" + t.hex() for t in tp],
                      "data": "0x" + d.hex()} for a, tp, d in self.logs]}
        return {"status": self.status, "status_name": TX_STATUS[self.status],
                "gas_used": self.gas_used,
                "contract_address": ("0x" + self.contract_address) if self.contract_address
                else "",
                "output_and_logs": "0x" + self.output_and_logs.hex(),
                **(split if self.split_fixed else {"unverified": split}),
                "receipt_hash": "0x" + self.hash.hex()}


def _check_log(log: object) -> None:
    if type(log) is not tuple or len(log) != 3:
        raise MalformedError("receipt_log", "a log is (address, topics, data)")
    address, topics, data = log
    if type(address) is not str or _ADDR.fullmatch(address) is None:
        raise MalformedError("receipt_log", f"log address {address!r} is not 40 lowercase hex "
                             "digits")
    if type(topics) is not tuple or len(topics) > MAX_TOPICS or any(
            type(t) is not bytes or len(t) != HASH_LEN for t in topics):
        raise MalformedError("receipt_log", f"log topics are at most {MAX_TOPICS} of 32 bytes")
    if type(data) is not bytes:
        raise MalformedError("receipt_log", "log data is not bytes")


def _canonical_hex(value: object, reason: str, what: str, max_len: int) -> bytes:
    """``0x`` and lowercase hex digit pairs, as FISCO prints bytes."""
    if type(value) is not str or len(value) > 2 + 2 * max_len:
        raise MalformedError(reason, f"{what} is not a string of at most {max_len} bytes")
    if _CANON_HEX.fullmatch(value) is None:
        raise MalformedError(reason, f"{what} is not 0x and lowercase hex")
    return bytes.fromhex(value[2:])


def _hashed_address(value: object) -> object:
    """The hashed form of an address as FISCO prints it: ``0x`` and 40 characters loses its
    ``0x``; anything else is left for :class:`Receipt` to judge."""
    if type(value) is str and len(value) == 42 and value.startswith("0x"):
        return value[2:]
    return value


def _json_list(obj: dict, key: str, limit: int, reason: str) -> list:
    """A list of at most ``limit`` entries (a size limit before parsing them)."""
    v = obj.get(key)
    if type(v) is not list or len(v) > limit:
        raise MalformedError(reason, f"{key} is not a list of at most {limit}")
    return v


def decode_receipt(obj: object) -> Receipt:
    """A Receipt from a ``getTransactionReceipt(..., true)`` result (MalformedError with the
    rule's reason otherwise; see the module docstring). Here: the JSON forms and the size
    limits; every field value is judged once, by :class:`Receipt`."""
    if type(obj) is not dict:
        raise MalformedError("type", "a receipt is a JSON object")
    logs = []
    for entry in _json_list(obj, "logEntries", MAX_LOGS, "receipt_log"):
        if type(entry) is not dict:
            raise MalformedError("receipt_log", "a log entry is an object")
        topics = tuple(_canonical_hex(t, "receipt_log", "a topic", HASH_LEN)
                       for t in _json_list(entry, "topics", _TOPICS_READ, "receipt_log"))
        logs.append((_hashed_address(entry.get("address")), topics,
                     _canonical_hex(entry.get("data"), "receipt_log", "log data", MAX_OUTPUT)))
    proof_raw: object = []
    for key in ("txReceiptProof", "receiptProof"):
        if type(obj.get(key)) is list and obj[key]:
            proof_raw = obj[key]
            break
    return Receipt(  # the values' types and ranges: checked by Receipt
        version=obj.get("version"), gas_used=obj.get("gasUsed"),
        contract_address=_hashed_address(obj.get("contractAddress")),
        status=obj.get("status"),
        output=_canonical_hex(obj.get("output"), "receipt_output", "output", MAX_OUTPUT),
        logs=tuple(logs), block_number=obj.get("blockNumber"),
        transaction_hash=parse_hex(obj.get("transactionHash"), "transactionHash",
                                   length=HASH_LEN),
        proof=parse_proof(proof_raw, "receipt proof"),
    )
