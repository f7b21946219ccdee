"""The clerk's desk: what a PAD terminal does for an authorization (ledger-protocol §6).

- **Matters.** The clerk fills in the matter; :meth:`Desk.make_matter` builds the
  ``matter_body`` (a fresh ``matter_id``, the PAD's own office from its verified enrollment,
  the citizen's identifier as its §6 hash, the licenses as deposit tx_ids), checks it as a
  kiosk will (:func:`appliance.node.rules.verify_matter`: a license of another holder or one
  that is not on chain is refused here, at the window, not at the kiosk), signs it in the
  PAD's crypto module with the device key and gives the ``GOVAUTH1:`` QR text.
- **Confirmations (the clerk way).** The kiosk shows a session request (``GOVSESS1:``, with
  a 6-digit code); the clerk reads it, checks the citizen's ID card, and confirms with the
  PIN of their staff card. :meth:`Desk.confirm` signs the ``confirmation_body`` on that card
  (the clerk's own key, enrolled with role "clerk" for this office, never the PAD's device
  key) and gives the ``GOVCONF1:`` QR text the kiosk reads back. Only a matter this PAD
  issued (and that has not expired) can be confirmed.

The desk holds no key: the device key stays in the PAD's module (``signer``), the clerk's in
the staff card, opened for one signature and closed again (``clerk_card``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.node import objects as ob
from appliance.node import rules
from appliance.node.errors import MalformedError
from appliance.node.model import peer_id

__all__ = ["ClerkCard", "Desk", "DeskError", "MatterRequest"]

MAX_ISSUED = 1024  # matters remembered for confirmation (each lives at most 24 h)
DEFAULT_VALID_MIN = 30
DEFAULT_USE_DAYS = 30


class DeskError(Exception):
    """A request the desk refuses; ``code`` is stable, the message says what to fix."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class MatterRequest:
    """What the clerk enters for a matter."""

    title: str
    agencies: tuple[str, ...]
    purpose: str
    citizen_id: str  # the identifier on the citizen's ID card; only its §6 hash is kept
    licenses: tuple[bytes, ...]  # deposit tx_ids
    enterprise_id: str | None = None  # unified social credit code, for an enterprise matter
    valid_minutes: int = DEFAULT_VALID_MIN
    use_days: int = DEFAULT_USE_DAYS

    @classmethod
    def from_json(cls, doc: Any) -> MatterRequest:
        """From the PAD page's JSON; :class:`DeskError` naming the field at fault."""
        if not isinstance(doc, dict):
            raise DeskError("bad_matter", "a matter is a JSON object")
        allowed = {"title", "agencies", "purpose", "citizen_id", "licenses", "enterprise_id",
                   "valid_minutes", "use_days"}
        extra = set(doc) - allowed
        if extra:
            raise DeskError("bad_matter", f"unexpected fields {sorted(extra)}")

        def text(key: str) -> str:
            value = doc.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DeskError("bad_matter", f"{key} is required")
            return value.strip()

        agencies = doc.get("agencies")
        if isinstance(agencies, str):
            agencies = [a for a in (x.strip() for x in agencies.split("\n")) if a]
        if not isinstance(agencies, list) or not all(isinstance(a, str) for a in agencies):
            raise DeskError("bad_matter", "agencies: one or more office names")
        licenses = doc.get("licenses")
        if not isinstance(licenses, list) or not all(
                isinstance(x, str) and len(x) == 64 for x in licenses):
            raise DeskError("bad_matter", "licenses: deposit tx_ids, 64 hex digits each")
        try:
            lic = tuple(bytes.fromhex(x) for x in licenses)
        except ValueError:
            raise DeskError("bad_matter", "licenses: deposit tx_ids, 64 hex digits each"
                            ) from None
        ent = doc.get("enterprise_id")
        if ent is not None and (not isinstance(ent, str) or not ent.strip()):
            ent = None
        minutes, days = doc.get("valid_minutes", DEFAULT_VALID_MIN), \
            doc.get("use_days", DEFAULT_USE_DAYS)
        for key, value, high in (("valid_minutes", minutes, 1440), ("use_days", days, 90)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise DeskError("bad_matter", f"{key}: 1..{high}")
        return cls(text("title"), tuple(a.strip() for a in agencies), text("purpose"),
                   text("citizen_id"), lic, ent.strip() if ent else None, minutes, days)


class ClerkCard:
    """A staff card: a crypto module holding one clerk's key (slot ``slot``), opened for each
    confirmation with the PIN the clerk types, closed right after. ``open_client(device)``
    makes an :class:`appliance.hsm.client.Client` (injected for tests and the rig)."""

    def __init__(self, device: str, slot: int, enrollment: bytes,
                 open_client: Callable[[str], Any] | None = None) -> None:
        self.device, self.slot, self.enrollment = device, slot, enrollment
        self._open = open_client

    def _client(self) -> Any:
        if self._open is not None:
            return self._open(self.device)
        from appliance.hsm.client import Client

        return Client(self.device)

    def sign(self, body: ob.ConfirmationBody, pin: str) -> ob.Signed[ob.ConfirmationBody]:
        """Blocking: log in with ``pin``, sign, log out. The card's errors pass through
        (a wrong PIN is ``appliance.hsm.errors`` PinError)."""
        from appliance.node.tx import ModuleSigner

        with self._client() as client:
            client.login(pin)
            try:
                return ob.Signed.sign(body, ModuleSigner(client, self.slot))
            finally:
                client.logout()


class Desk:
    """The PAD's matters and confirmations (see the module docstring).

    ``signer``: the device key in the PAD's module (:class:`appliance.node.tx.ModuleSigner`);
    ``enrollment``: the tx_id of its device.enroll; ``references``: an
    :class:`appliance.node.references.References` over the light node; ``admins``: the
    trust anchor's admin keys; ``clerk_card``: None when this PAD has no clerk way.
    """

    def __init__(self, *, signer: Any, enrollment: bytes, references: Any,
                 admins: tuple[Any, ...], clerk_card: ClerkCard | None = None,
                 clock: Callable[[], int] | None = None, timeout_s: float = 15.0) -> None:
        self.signer = signer
        self.enrollment = enrollment
        self.references = references
        self.admins = admins
        self.clerk_card = clerk_card
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.timeout_s = timeout_s
        self._issued: OrderedDict[bytes, ob.Signed[ob.MatterBody]] = OrderedDict()
        self._hints: dict[bytes, str] = {}  # masked ID numbers, for the clerk to compare
        self._own: ob.Enrollment | None = None

    @property
    def pad_id(self) -> bytes:
        return peer_id(self.signer.public_key)

    async def own_enrollment(self) -> ob.Enrollment:
        """This PAD's enrollment, fetched with its proof and checked (role pad, this key,
        not expired): the office every matter names comes from it."""
        from appliance.node.references import ReferencesUnavailable

        now = self.clock()
        try:
            lookup = await self.references.resolve(self.enrollment, timeout_s=self.timeout_s)
            self._own = rules.usable_enrollment(
                self.enrollment, lookup, self.admins, public_key=self.signer.public_key,
                alg=self.signer.alg, roles=("pad",), at=now, what="this PAD")
        except rules.RuleError as exc:
            raise DeskError("not_enrolled", f"this PAD cannot issue matters: {exc}",
                            503) from None
        except ReferencesUnavailable as exc:
            raise DeskError("node_unavailable", f"the chain cannot be asked: {exc}",
                            503) from None
        return self._own

    async def make_matter(self, req: MatterRequest) -> tuple[ob.Signed[ob.MatterBody], str]:
        """Build, check and sign a matter; (the signed matter, its ``GOVAUTH1:`` text)."""
        from appliance.node.references import ReferencesUnavailable

        own = await self.own_enrollment()
        now = self.clock()
        try:
            subject = ob.identifier_hash(req.citizen_id)
            enterprise = None if req.enterprise_id is None else \
                ob.identifier_hash(req.enterprise_id)
        except MalformedError:
            raise DeskError("bad_matter", "an ID number or credit code is letters and digits "
                            "only") from None
        use_until = min(now + req.use_days * rules.DAY_MS, own.not_after - 1)
        try:
            body = ob.MatterBody(
                matter_id=os.urandom(16), title=req.title, office=own.office or "",
                agencies=req.agencies, purpose=req.purpose, subject=subject,
                licenses=req.licenses, issued_at=now,
                expires_at=now + req.valid_minutes * 60_000, use_until=use_until,
                pad=self.pad_id, enrollment=self.enrollment, on_behalf_of=enterprise)
        except MalformedError as exc:
            raise DeskError("bad_matter", str(exc)) from None
        try:
            lookup = await self.references.resolve(body, timeout_s=self.timeout_s)
            for tx_id in body.licenses:  # the kiosk will refuse these: say it here
                dep = rules.verified_deposit(tx_id, lookup, self.admins)
                if dep.deposit.holder != (enterprise or subject):
                    raise DeskError("bad_matter", f"license {tx_id.hex()[:16]} is not the "
                                    "citizen's (or the enterprise's)")
        except rules.RuleError as exc:
            raise DeskError("bad_matter", f"license check failed: {exc}") from None
        except ReferencesUnavailable as exc:
            raise DeskError("node_unavailable", f"the chain cannot be asked: {exc}",
                            503) from None
        try:
            signed = await asyncio.to_thread(ob.Signed.sign, body, self.signer)
        except MalformedError as exc:
            raise DeskError("bad_matter", str(exc)) from None
        if len(signed.encoded) > ob.MAX_MATTER_BYTES:
            raise DeskError("bad_matter", f"the matter is {len(signed.encoded)} bytes, more "
                            f"than a QR code carries ({ob.MAX_MATTER_BYTES}): shorten the "
                            "texts or list fewer agencies")
        self._remember(signed, _mask(req.enterprise_id or req.citizen_id))
        return signed, ob.encode_qr(ob.MATTER_PREFIX, signed)

    def citizen_hint(self, matter: ob.Signed[ob.MatterBody]) -> str:
        """The masked ID number (or credit code) the matter was made for: the clerk checks
        the card in hand against it. Kept in memory only, as long as the matter."""
        return self._hints.get(matter.digest, "")

    def issued(self, target: bytes) -> ob.Signed[ob.MatterBody] | None:
        """The matter this PAD issued whose digest is ``target``, if not expired."""
        m = self._issued.get(target)
        if m is None or m.body.expires_at < self.clock():
            return None
        return m

    def session_request(self, text: str) -> tuple[ob.SessionRequest,
                                                  ob.Signed[ob.MatterBody]]:
        """The kiosk's ``GOVSESS1:`` request and the matter of this PAD it names."""
        try:
            req = ob.decode_session_qr(text)
        except MalformedError as exc:
            raise DeskError("bad_session", f"not a kiosk's session code: {exc}") from None
        if req.action != "authorize":
            raise DeskError("bad_session", "only authorizations are confirmed at this desk")
        matter = self.issued(req.target)
        if matter is None:
            raise DeskError("unknown_matter", "this PAD did not issue that matter, or it has "
                            "expired", 404)
        return req, matter

    async def confirm(self, text: str, *, method: str, pin: str
                      ) -> tuple[ob.Signed[ob.ConfirmationBody], str]:
        """Sign the clerk's confirmation of the kiosk's session ``text`` on the staff card."""
        card = self.clerk_card
        if card is None or card.enrollment is None:
            raise DeskError("no_clerk_card", "this PAD has no staff card configured", 503)
        req, matter = self.session_request(text)
        if method not in ob.METHODS:
            raise DeskError("bad_method", f"method: one of {list(ob.METHODS)}")
        if matter.body.on_behalf_of is not None and method != "id_card+registration":
            raise DeskError("bad_method", "an enterprise matter needs the business "
                            "registration checked too (id_card+registration)")
        body = ob.ConfirmationBody(req.session, req.terminal, req.action, req.target, method,
                                   self.clock(), card.enrollment)
        from appliance.hsm import errors as hsm_errors

        try:
            signed = await asyncio.to_thread(card.sign, body, pin)
        except (hsm_errors.AccessDenied, hsm_errors.PinLocked, hsm_errors.PinDefault) as exc:
            raise DeskError("clerk_pin", f"the staff card refused: {exc}", 403) from None
        except (hsm_errors.HsmError, OSError) as exc:  # gone, busy, broken
            raise DeskError("clerk_card", f"the staff card cannot sign: {exc}", 503) from None
        if signed.public_key == self.signer.public_key:  # never the PAD's own key
            raise DeskError("clerk_card", "the staff card holds the PAD's device key", 503)
        return signed, ob.encode_qr(ob.CONFIRMATION_PREFIX, signed)

    def _remember(self, matter: ob.Signed[ob.MatterBody], hint: str) -> None:
        self._issued[matter.digest] = matter
        self._hints[matter.digest] = hint
        now = self.clock()
        for key in [k for k, m in self._issued.items() if m.body.expires_at < now]:
            del self._issued[key]
        while len(self._issued) > MAX_ISSUED:
            self._issued.popitem(last=False)
        for key in set(self._hints) - set(self._issued):
            del self._hints[key]


def _mask(identifier: str) -> str:
    """``110108********0015``: enough to compare with a card, not the whole number."""
    if len(identifier) <= 8:
        return "*" * len(identifier)
    return identifier[:4] + "*" * (len(identifier) - 8) + identifier[-4:]
