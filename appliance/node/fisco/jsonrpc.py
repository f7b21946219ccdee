"""JSON and JSON-RPC 2.0 as FISCO BCOS 3.x nodes speak it, for untrusted bytes.

:func:`loads` refuses a body over its limit **before** parsing, then parses strictly: UTF-8
only, no NaN/Infinity, no floats (FISCO's answers hold integers and strings), no duplicate
keys (two readers could pick different values), integers of at most 40 digits, nesting of at
most :data:`MAX_DEPTH`. Every refusal is a :class:`MalformedError` with a short ``reason``.

:func:`request` / :func:`batch` build request bodies; :func:`parse_response` and
:func:`parse_batch` take a response body and give each call's result or :class:`RpcError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedError

__all__ = [
    "MAX_BODY", "MAX_DEPTH", "RpcError", "batch", "loads", "parse_batch", "parse_response",
    "request",
]

#: Largest response body read at all (the ledger protocol's HTTP limit, §8).
MAX_BODY = 8 * 1024 * 1024
MAX_DEPTH = 16
_MAX_INT_DIGITS = 40


@dataclass(frozen=True, slots=True)
class RpcError:
    """A JSON-RPC error object answered for one call."""

    code: int
    message: str


def _no_float(text: str) -> Any:
    raise MalformedError("float", f"a float in JSON: {text[:40]}")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise MalformedError("range", f"an integer of {len(text)} digits")
    return int(text)


def _constant(text: str) -> Any:
    raise MalformedError("float", f"{text} in JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedError("duplicate_key", f"key {k[:40]!r} twice")
        out[k] = v
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_no_float,
                            parse_int=_int, parse_constant=_constant, strict=True)


_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)


def _depth_ok(body: bytes) -> bool:
    """Nesting depth, from the brackets outside strings, before the recursive parser runs.

    Escaped backslashes and quotes go first, then everything but brackets and quotes (hex
    strings, the bulk of an answer, vanish), so the loop runs over a few bytes per object."""
    kept = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    depth = 0
    in_str = False
    for b in kept:
        if b == 0x22:
            in_str = not in_str
        elif not in_str:
            depth += 1 if b in (0x5B, 0x7B) else -1
            if depth > MAX_DEPTH:
                return False
    return True


def loads(body: bytes, max_bytes: int = MAX_BODY) -> Any:
    """The JSON value of ``body``; MalformedError (``oversize``, ``utf8``, ``json``,
    ``depth``, ``float``, ``duplicate_key``, ``range``) for anything else."""
    if not isinstance(body, bytes | bytearray):
        raise MalformedError("type", "a body is bytes")
    if len(body) > max_bytes:
        raise MalformedError("oversize", f"{len(body)} bytes > {max_bytes}")
    if not _depth_ok(bytes(body)):
        raise MalformedError("depth", f"nested deeper than {MAX_DEPTH}")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("utf8", str(exc)) from exc
    try:
        value, end = _DECODER.raw_decode(text.lstrip(" \t\r\n"))
    except MalformedError:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedError("json", str(exc)[:120]) from exc
    if text.lstrip(" \t\r\n")[end:].strip(" \t\r\n"):
        raise MalformedError("trailing", "data after the JSON value")
    return value


def request(method: str, params: Sequence[Any], id: int) -> dict[str, Any]:
    """One JSON-RPC 2.0 call object."""
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


def batch(calls: Sequence[dict[str, Any]]) -> bytes:
    """A batch request body (a JSON array of calls)."""
    return json.dumps(list(calls), separators=(",", ":")).encode()


def _one(obj: Any) -> tuple[int, Any | RpcError]:
    if type(obj) is not dict:
        raise MalformedError("type", "a JSON-RPC answer is an object")
    if obj.get("jsonrpc") != "2.0":
        raise MalformedError("jsonrpc", "jsonrpc is not '2.0'")
    rid = obj.get("id")
    if type(rid) is not int:
        raise MalformedError("id", "the id is not an integer")
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        raise MalformedError("keys", "an answer has exactly one of result and error")
    if has_error:
        err = obj["error"]
        if type(err) is not dict or type(err.get("code")) is not int \
                or type(err.get("message", "")) is not str:
            raise MalformedError("error", "a JSON-RPC error is {code, message}")
        return rid, RpcError(err["code"], err.get("message", "")[:200])
    return rid, obj["result"]


def parse_response(body: bytes, id: int, max_bytes: int = MAX_BODY) -> Any | RpcError:
    """The result (or RpcError) of call ``id`` in a single-call response body."""
    rid, value = _one(loads(body, max_bytes))
    if rid != id:
        raise MalformedError("id", f"answer for id {rid}, asked {id}")
    return value


def parse_batch(body: bytes, ids: Sequence[int],
                max_bytes: int = MAX_BODY) -> dict[int, Any | RpcError]:
    """Results by id of a batch response; exactly the ids asked, each once, any order."""
    value = loads(body, max_bytes)
    if type(value) is not list:
        raise MalformedError("type", "a batch answer is a JSON array")
    if len(value) != len(ids):
        raise MalformedError("count", f"{len(value)} answers to {len(ids)} calls")
    out: dict[int, Any | RpcError] = {}
    wanted = set(ids)
    for item in value:
        rid, result = _one(item)
        if rid not in wanted or rid in out:
            raise MalformedError("id", f"unexpected or repeated id {rid}")
        out[rid] = result
    return out
