"""The PAD's HTTP side, as functions the server calls (the logic is the desk's,
:mod:`appliance.kiosk.desk`): its office, a signed matter and its QR, the kiosk's session read
by the PAD's camera, the clerk's confirmation, and verifying a document against the chain (SM3
here, ``NodeSync.lookup_detailed``: every usable peer asked, every hit's proof checked against
the verified header chain, its issuer's enrollment checked)."""

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
                          timeout_s: float = 20.0, references: Any = None) -> dict[str, Any]:
    """SM3 of ``document`` and its verified ``evidence.deposit`` hits (issuer, kind, time,
    height), with the height of the verified chain the proofs were checked against. A hit is
    verified when its proof is, and its issuer's enrollment (§6: signed by an admin of its
    district, role ``issuer``, valid at the deposit's time; fetched with its proof through
    ``references``) holds: the ``issuer`` shown is that enrollment's office. A hit whose
    issuer does not hold is dropped (``dropped``, with the rule).

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
    from ...node import rules
    from ...node.references import References, ReferencesUnavailable

    references = references if references is not None else References(node)
    admins = tuple(node.anchor.admins)
    hits, unverified = [], []
    for inc in result.hits:
        references.add(rules.Ref(inc.tx, inc.height, inc.time_ms))
        try:
            lookup = await references.resolve(inc.tx, timeout_s=timeout_s)
            dep = rules.verified_deposit(inc.tx_id, lookup, admins)
        except rules.RuleError as exc:
            unverified.append({"tx_id": inc.tx_id.hex(), "reason": f"rule_{exc.rule}",
                               "detail": str(exc)[:200]})
            continue
        except ReferencesUnavailable as exc:
            raise PadError(503, "no_peers", f"无法核验 / could not be checked: {exc}") from None
        hits.append({"tx_id": inc.tx_id.hex(), "height": inc.height,
                     "block_id": inc.block_id.hex(), "issuer": dep.issuer.office or "",
                     "kind": dep.deposit.kind, "time_ms": inc.time_ms,
                     "holder": None if dep.deposit.holder is None
                     else dep.deposit.holder.hex(), "sender": inc.tx.body.sender.hex()})
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
            "dropped": [d.to_json() for d in result.dropped] + unverified,
            "peers": list(result.peers), "nodes": nodes, "known": len(nodes),
            "asked": sum(1 for n in nodes if n["asked"]), "answered": len(result.peers),
            "elapsed_s": round(time.monotonic() - started, 3)}


# -- matters and confirmations -----------------------------------------------------------------

MAX_JSON = 8192
SCAN_TIMEOUT_S = 8.0


async def _json(request: web.Request) -> Any:
    import json

    from appliance.httpbody import read_capped

    body = await read_capped(request, MAX_JSON)
    if body is None:
        raise PadError(413, "too_large", f"at most {MAX_JSON} bytes")
    try:
        return json.loads(body) if body else {}
    except ValueError:
        raise PadError(400, "bad_request", "the body is not JSON") from None


def _desk(ctx: Any) -> Any:
    desk = getattr(ctx, "desk", None)
    if desk is None:
        raise PadError(503, "starting", "the PAD's light node or crypto module is not ready yet")
    return desk


def _qr_png_url(text: str) -> str:
    from urllib.parse import quote

    return "/api/qr?text=" + quote(text)


async def info(ctx: Any) -> dict[str, Any]:
    """This PAD's office (from its verified enrollment) and whether it has a staff card."""
    from ..desk import DeskError

    desk = _desk(ctx)
    try:
        own = await desk.own_enrollment()
    except DeskError as exc:
        raise PadError(exc.status, exc.code, str(exc)) from None
    return {"office": own.office, "hall": own.hall, "district": own.district,
            "not_after": own.not_after, "enrollment": desk.enrollment.hex(),
            "clerk_card": desk.clerk_card is not None}


async def make_matter(ctx: Any, request: web.Request) -> dict[str, Any]:
    """The clerk's matter -> signed in this PAD's module -> its ``GOVAUTH1:`` text."""
    from ..desk import DeskError, MatterRequest

    try:
        req = MatterRequest.from_json(await _json(request))
        signed, text = await _desk(ctx).make_matter(req)
    except DeskError as exc:
        raise PadError(exc.status, exc.code, str(exc)) from None
    sim = getattr(ctx, "sim", None)
    if sim is not None:
        sim.note_matter(text)  # the simulated kiosk camera shows it while the kiosk scans
    return {"qr_text": text, "qr_png": _qr_png_url(text),
            "matter_id": signed.body.matter_id.hex(), "expires_at": signed.body.expires_at}


async def session(ctx: Any, request: web.Request) -> dict[str, Any]:
    """The kiosk's session request: ``{"text"}`` as typed by a code reader, or read from this
    PAD's camera (for up to 8 s); with the matter it names (one this PAD issued)."""
    from appliance.node import objects as ob

    from ..desk import DeskError

    doc = await _json(request)
    text = doc.get("text") if isinstance(doc, dict) else None
    if not isinstance(text, str) or not text.strip():
        text = await _scan(ctx, ob.SESSION_PREFIX)
    try:
        req, matter = _desk(ctx).session_request(text.strip())
    except DeskError as exc:
        raise PadError(exc.status, exc.code, str(exc)) from None
    return {"text": text.strip(), "code": req.code, "title": matter.body.title,
            "citizen_hint": _desk(ctx).citizen_hint(matter),
            "enterprise": matter.body.on_behalf_of is not None}


async def confirm(ctx: Any, request: web.Request) -> dict[str, Any]:
    """``{"text", "method", "pin"}`` -> the clerk's confirmation, signed on the staff card."""
    from ..desk import DeskError

    doc = await _json(request)
    if not isinstance(doc, dict) or set(doc) != {"text", "method", "pin"} or not all(
            isinstance(doc[k], str) for k in doc):
        raise PadError(400, "bad_request", "send text, method and pin")
    if not 6 <= len(doc["pin"]) <= 16:
        raise PadError(400, "bad_pin", "the staff card's PIN is 6..16 characters")
    try:
        _, text = await _desk(ctx).confirm(doc["text"].strip(), method=doc["method"],
                                           pin=doc["pin"])
    except DeskError as exc:
        raise PadError(exc.status, exc.code, str(exc)) from None
    sim = getattr(ctx, "sim", None)
    if sim is not None:
        sim.note_confirmation(text)  # the simulated kiosk camera sees the PAD's screen
    return {"qr_text": text, "qr_png": _qr_png_url(text)}


async def _scan(ctx: Any, prefix: str) -> str:
    """The first QR text starting with ``prefix`` that this terminal's camera sees."""
    import asyncio

    from ..qrcodes import QrReader

    frames = ctx.camera_frames()
    reader = QrReader()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SCAN_TIMEOUT_S
    try:
        while loop.time() < deadline:
            left = deadline - loop.time()
            if hasattr(frames, "__anext__"):
                try:
                    async with asyncio.timeout(left):
                        frame, _ts = await frames.__anext__()
                except (TimeoutError, StopAsyncIteration):
                    break
            else:
                got = await asyncio.to_thread(frames.read, min(left, 2.0))
                if got is None:
                    continue
                frame, _ts = got
            try:
                text = await asyncio.to_thread(reader.read, frame)
            finally:
                frame.fill(0)
            if text and text.startswith(prefix):
                return text
    finally:
        close = getattr(frames, "aclose", None) or getattr(frames, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
    raise PadError(404, "no_code", "no kiosk session code seen by the camera: hold the PAD "
                   "up to the kiosk's screen and try again")
