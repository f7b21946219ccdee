"""The PAD's two jobs, as functions the server calls: make a matter's QR text, and verify a
document against the chain (SM3 here, ``NodeSync.lookup_detailed``: every usable peer asked,
every hit's proof checked against the verified header chain)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ...gm import sm3

MAX_NAME = 200


class PadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def matter_qr(doc: Any, *, now_ms: int) -> str:
    """``{matter, agency, office, licenses: [{id hex, name}], citizen | subject hex,
    valid_minutes}`` -> the ``GOVAUTH1:`` QR text (appliance.kiosk.matter). ``citizen`` is the
    citizen's identifier as typed by the clerk; the subject is SM3 of its UTF-8 (the scheme
    of the HIL identity double)."""
    from .. import matter as m

    if not isinstance(doc, dict):
        raise PadError(400, "bad_matter", "a matter is a JSON object")
    try:
        licenses = tuple(m.License(bytes.fromhex(lic["id"]), lic["name"])
                         for lic in doc.get("licenses", []))
    except (TypeError, KeyError, ValueError, AttributeError):
        raise PadError(400, "bad_matter", "licenses: [{id: 64 hex digits, name}]") from None
    if isinstance(doc.get("subject"), str):
        try:
            subject = bytes.fromhex(doc["subject"])
        except ValueError:
            raise PadError(400, "bad_matter", "subject: 64 hex digits") from None
    elif isinstance(doc.get("citizen"), str) and doc["citizen"].strip():
        subject = sm3.digest(doc["citizen"].strip().encode("utf-8"))
    else:
        raise PadError(400, "bad_matter", "citizen (or subject) is required")
    minutes = doc.get("valid_minutes", 30)
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 1440:
        raise PadError(400, "bad_matter", "valid_minutes: 1..1440")
    try:
        matter = m.Matter(doc.get("matter"), doc.get("agency"), doc.get("office"), licenses,
                          subject, now_ms + minutes * 60_000)
        return m.encode_qr(matter)
    except m.MatterError as exc:
        raise PadError(400, "bad_matter", str(exc)) from None


async def read_upload(request: web.Request,
                      sample: Callable[[int], tuple[bytes, str] | None],
                      limit: int) -> tuple[bytes, str]:
    """The document of a multipart form: part ``file`` (counted while reading: refused the
    moment it passes ``limit``) or part ``sample`` (an index into the sim's samples)."""
    if not request.content_type.startswith("multipart/"):
        raise PadError(400, "bad_request", "send multipart/form-data with a file or sample")
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, aiohttp.BodyPartReader):
            raise PadError(400, "bad_request", "nested multipart")
        if part.name == "file":
            data = bytearray()
            while True:
                chunk = await part.read_chunk(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > limit:
                    raise PadError(413, "too_large", f"a document is at most {limit} bytes")
            name = (part.filename or "document")[:MAX_NAME]
            return bytes(data), name
        if part.name == "sample":
            # an index, a few digits: one small chunk is read, never the rest of a long part
            # (aiohttp's smallest chunk is the boundary's length + 2)
            raw = await part.read_chunk(256)
            text = raw.decode("ascii", "replace").strip()
            short = len(text) <= 8 and not await part.read_chunk(256)
            digits = short and text.isascii() and text.isdigit()  # not "²" nor "١"
            got = sample(int(text)) if digits else None
            if got is None:
                raise PadError(404, "not_found", "no such sample document")
            return got
        await part.release()
    raise PadError(400, "bad_request", "no file or sample part")


async def verify_document(node: Any, document: bytes, *, name: str = "",
                          timeout_s: float = 20.0) -> dict[str, Any]:
    """SM3 of ``document`` and its verified ``evidence.deposit`` hits (issuer, kind, time,
    height), with the height of the verified chain the proofs were checked against.

    ``verdict`` is ``found`` or ``not_found``; a negative answer is only as good as the nodes
    that gave it, so the result names them: ``nodes`` (each peer of the table: ``url``,
    ``outcome`` answered / failed / not_asked, ``asked``, ``reason``; configured peers first),
    and the counts ``known`` (peers in the table), ``asked`` and ``answered`` (``peers``: the
    URLs of those that answered). When no node could be asked or none answered, there is no verdict:
    :class:`PadError` 503 ("could not be checked", naming each node and why), never "not on
    chain"."""
    from ...node.client import TxError

    digest = sm3.digest(document)
    started = time.monotonic()
    try:
        result = await node.lookup_detailed(digest, timeout_s=timeout_s)
    except TxError as exc:
        raise PadError(503, exc.code or "unavailable",
                       f"无法核验 / could not be checked: {exc}") from None
    hits = []
    for inc in result.hits:
        body = inc.tx.body
        data = body.data
        hits.append({"tx_id": inc.tx_id.hex(), "height": inc.height,
                     "block_id": inc.block_id.hex(), "issuer": str(data.get("issuer", "")),
                     "kind": str(data.get("kind", "")), "time_ms": body.timestamp,
                     "sender": body.sender.hex()})
    try:
        verified_height = node.store.tip().height
    except Exception:  # noqa: BLE001 - not initialized: no height to show
        verified_height = None
    nodes = [a.to_json() for a in result.answers]
    if not result.peers:  # a lookup result always has an answer; never trust one without
        raise PadError(503, "no_peers", "无法核验 / could not be checked: no node answered")
    return {"digest": digest.hex(), "name": name, "size": len(document), "found": bool(hits),
            "verdict": "found" if hits else "not_found", "hits": hits,
            "verified_height": verified_height,
            "dropped": [d.to_json() for d in result.dropped], "peers": list(result.peers),
            "nodes": nodes, "known": len(nodes), "asked": sum(1 for n in nodes if n["asked"]),
            "answered": len(result.peers), "elapsed_s": round(time.monotonic() - started, 3)}
