"""The terminal's side of the identity service: send the sealed capture, check the answer.

The identity service compares a sealed capture (ledger-protocol §6 envelope) with the
citizen's reference photo and answers with a ``signed_attestation`` (§6 revision 2)::

    attestation_body   = {session, capture_digest, subject, terminal, action, target, result,
                          score, issued_at, service, enrollment, represents?}
    signed_attestation = {body, alg, public_key, signature}      signature over enc(body)

:func:`verify_attestation` is the sans-I/O check of the answer against the request: the
shape (:class:`appliance.node.objects.AttestationBody`), the key the capture was sealed to
(from the terminal's configuration; ``GET /v1/info`` is informational only), the signature,
every field the terminal sent (session, subject, capture digest, kiosk, action, target, the
enterprise), the service's name and ``issued_at`` within ``max_skew_ms`` of the terminal's
clock. It returns an :class:`Attestation` or raises :class:`AttestationInvalid` with a
``reason``. A ``no_match`` attestation is valid and returned: the flow decides. What the
chain requires beyond that (the key enrolled with role "identity", its minimum score) is
checked by :func:`appliance.node.rules.verify_attestation`, with the enrollment fetched from
the chain.

:class:`IdentityClient` is the thin aiohttp adapter (``POST /v1/attest``): the response body
is read with a size limit while it arrives, the whole exchange has one timeout, and every
failure is one of the typed :class:`IdentityError` subclasses:

- :class:`IdentityUnavailable` (``code`` ``unavailable``): connection refused or reset,
  timeout, a 5xx answer;
- :class:`IdentityRejected` (``code`` = the service's error code, e.g. ``unknown_subject``):
  a 4xx answer;
- :class:`AttestationInvalid` (``code`` ``attestation_invalid``, ``reason`` below): a 200
  answer that does not verify.

Reasons of :class:`AttestationInvalid`: ``oversize``, ``not_canonical`` (any CBOR that
appliance.wire refuses), ``malformed`` (missing, extra or mistyped fields, §6 text rule),
``wrong_key``, ``bad_signature``, then one per bound field (``session``, ``subject``,
``capture_digest``, ``terminal``, ``action``, ``target``, ``represents``), ``service``,
``stale``, ``future``. Checks run in that order: shape first, then the key and the
signature, then the body against the request, then the time.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from appliance import wire
from appliance.httpbody import read_capped
from appliance.node import objects as ob
from appliance.node.errors import MalformedError

__all__ = [
    "MAX_ATTESTATION_BYTES", "MAX_ERROR_BYTES", "MAX_REQUEST_BYTES", "REASONS", "Attestation",
    "AttestationInvalid", "IdentityClient", "IdentityError", "IdentityRejected",
    "IdentityUnavailable", "Request", "decode_attestation", "verify_attestation",
]

MAX_TEXT_BYTES = 1024  # ledger-protocol §8 text fields
#: A signed_attestation is ~450 bytes; anything near this is not one.
MAX_ATTESTATION_BYTES = 16 * 1024
MAX_ERROR_BYTES = 16 * 1024
#: The service refuses request bodies over this (413 too_large).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_SKEW_MS = 300_000
CBOR = "application/cbor"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BOUND = ("session", "subject", "capture_digest", "terminal", "action", "target",
          "represents")
REASONS = ("oversize", "not_canonical", "malformed", "wrong_key", "bad_signature", *_BOUND,
           "service", "stale", "future")


class IdentityError(Exception):
    """Any failure to get a verified attestation; ``code`` says which kind."""

    code = "identity_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IdentityUnavailable(IdentityError):
    """The service could not be reached or did not answer in time, or answered 5xx."""

    code = "unavailable"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IdentityRejected(IdentityError):
    """The service refused the request (4xx); ``code`` is the service's error code."""

    def __init__(self, code: str, message: str, *, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class AttestationInvalid(IdentityError):
    """The service's answer is not a valid attestation for this request (``reason``)."""

    code = "attestation_invalid"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """What the terminal asks the service to attest (every field comes back in the body)."""

    session: bytes
    subject: bytes
    capture_digest: bytes
    terminal: bytes
    target: bytes
    action: str = "authorize"
    represents: bytes | None = None

    def to_obj(self, envelope: Mapping[str, bytes]) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "envelope": {k: bytes(v) for k, v in envelope.items()},
            "subject": self.subject, "capture_digest": self.capture_digest,
            "terminal": self.terminal, "action": self.action, "target": self.target}
        if self.represents is not None:
            obj["represents"] = self.represents
        return obj


@dataclass(frozen=True)
class Attestation:
    """A checked attestation. ``signed`` is the map to embed in ``license.authorize``;
    ``obj`` the typed object (for :func:`appliance.node.rules.verify_attestation`)."""

    signed: dict[str, Any]
    obj: ob.Signed[ob.AttestationBody]
    result: str
    score: int
    issued_at: int
    service: str

    @property
    def matched(self) -> bool:
        return self.result == "match"


def decode_attestation(data: bytes | bytearray | memoryview | Mapping[str, Any]
                       ) -> ob.Signed[ob.AttestationBody]:
    """The signed attestation, checked for shape only (no signature, no request)."""
    if isinstance(data, bytes | bytearray | memoryview):
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > MAX_ATTESTATION_BYTES:
            raise AttestationInvalid("oversize", f"{size} bytes > {MAX_ATTESTATION_BYTES}")
        try:
            obj: Any = wire.decode(data, MAX_ATTESTATION_BYTES, max_depth=4)
        except wire.WireError as exc:
            raise AttestationInvalid("not_canonical", str(exc)) from None
    else:
        obj = data
        try:  # a map handed over in memory must still have a canonical encoding
            wire.encode(obj, max_depth=4)
        except wire.WireError as exc:
            raise AttestationInvalid("not_canonical", str(exc)) from None
    try:
        return ob.Signed.of(ob.AttestationBody, obj, "signed_attestation")
    except MalformedError as exc:
        raise AttestationInvalid("malformed", str(exc)) from None


def verify_attestation(signed: bytes | bytearray | memoryview | Mapping[str, Any], *,
                       service_public_key: bytes, service_name: str, request: Request,
                       now_ms: int, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> Attestation:
    """Check ``signed`` (CBOR bytes or the decoded map) against the configured service key
    and name and against ``request``; :class:`AttestationInvalid` otherwise."""
    att = decode_attestation(signed)
    body = att.body
    if not hmac.compare_digest(att.public_key, bytes(service_public_key)):
        raise AttestationInvalid("wrong_key", "signed by a key that is not the configured "
                                 "identity-service key (the key the capture was sealed to)")
    if not att.signature_valid():
        raise AttestationInvalid("bad_signature", "the signature over enc(body) does not "
                                 "verify")
    for key in _BOUND:
        if getattr(body, key) != getattr(request, key):
            raise AttestationInvalid(key, f"the attestation's {key} is not the one sent")
    if body.service != service_name:
        raise AttestationInvalid("service", f"service {body.service[:64]!r} is not the "
                                 f"configured {service_name!r}")
    skew = body.issued_at - now_ms
    if skew < -max_skew_ms:
        raise AttestationInvalid("stale", f"issued {-skew} ms ago (> {max_skew_ms})")
    if skew > max_skew_ms:
        raise AttestationInvalid("future", f"issued {skew} ms in the future (> {max_skew_ms})")
    return Attestation(att.to_obj(), att, body.result, body.score, body.issued_at,
                       body.service)


class IdentityClient:
    """``POST /v1/attest`` to the identity service at ``url``; see the module docstring.

    ``service_public_key`` and ``service_name`` come from the terminal's configuration. With
    ``session`` the caller's aiohttp session is used (and left open); otherwise one is made on
    first use and closed by :meth:`close`.
    """

    def __init__(self, url: str, *, service_public_key: bytes, service_name: str,
                 session: aiohttp.ClientSession | None = None) -> None:
        if type(service_public_key) is not bytes or len(service_public_key) != 65:
            raise ValueError("service_public_key must be 65 bytes")
        self.url = url.rstrip("/")
        self.service_public_key = service_public_key
        self.service_name = service_name
        self._session = session
        self._own_session = session is None

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> IdentityClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def attest(self, envelope: Mapping[str, bytes], request: Request, *, now_ms: int,
                     timeout_s: float) -> Attestation:
        """Send the envelope with ``request``; return the checked attestation (match or
        no_match)."""
        if envelope.get("session") != request.session:
            raise ValueError("the envelope is sealed for another session")
        body = wire.encode(request.to_obj(envelope))
        if len(body) > MAX_REQUEST_BYTES:
            raise ValueError(f"request of {len(body)} bytes > {MAX_REQUEST_BYTES}")
        try:
            async with asyncio.timeout(timeout_s):
                status, data = await self._post(body)
        except TimeoutError:
            raise IdentityUnavailable(f"no answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise IdentityUnavailable(f"cannot reach {self.url}: "
                                      f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise IdentityUnavailable(f"cannot reach {self.url}: {exc}") from None
        if status >= 500:
            raise IdentityUnavailable(f"the service answered {status}", status=status)
        if status != 200:
            code, message = _error_body(data)
            raise IdentityRejected(code or f"http_{status}", message, status=status)
        if data is None:
            raise AttestationInvalid("oversize", f"answer over {MAX_ATTESTATION_BYTES} bytes")
        return verify_attestation(data, service_public_key=self.service_public_key,
                                  service_name=self.service_name, request=request,
                                  now_ms=now_ms)

    async def _post(self, body: bytes) -> tuple[int, bytes | None]:
        async with self._http().post(self.url + "/v1/attest", data=body,
                                     headers={"Content-Type": CBOR, "Accept": CBOR}) as resp:
            limit = MAX_ATTESTATION_BYTES if resp.status == 200 else MAX_ERROR_BYTES
            data = await read_capped(resp, limit)
            if data is None:
                resp.close()  # drop the connection rather than drain an oversize body
            return resp.status, data


def _error_body(data: bytes | None) -> tuple[str | None, str]:
    """(code, message) of a ``{"error", "message"}`` body; (None, ...) if it is not one."""
    if data is None:
        return None, "oversize error body"
    try:
        obj = wire.decode(data, MAX_ERROR_BYTES, max_depth=2)
    except wire.WireError:
        return None, "error body is not canonical CBOR"
    if type(obj) is not dict:
        return None, "error body is not a map"
    code, message = obj.get("error"), obj.get("message", "")
    if type(code) is not str or not _CODE.fullmatch(code):
        return None, "error body without a code"
    return code, message[:MAX_TEXT_BYTES] if type(message) is str else ""
