"""Typed errors of the crypto-module host driver.

Two families: :class:`ModuleError` when the module answered ``ok: false`` (it carries the
GM/T 0018 SDR code and its name), and :class:`LinkError` when no trustworthy answer came (the
outcome of the request may be unknown).
"""

from __future__ import annotations

from typing import Any

from .proto import codes


class HsmError(Exception):
    """Anything that went wrong talking to the crypto module."""


class LinkError(HsmError):
    """No answer could be had over the link."""


class LinkTimeout(LinkError):
    """The request got no answer after its retries, but the module answers a probe.

    The module may or may not have executed it; the driver never re-sends it under a new
    sequence number, which could execute it twice.
    """


class LinkDown(LinkError):
    """Neither the request nor a probe was answered, or the port itself failed."""


class PortBusy(LinkDown):
    """Another process has the module's port open: the host opens it exclusively."""


class ModuleReset(LinkError):
    """The module restarted (BOOT) while the request was in flight."""


class ModuleError(HsmError):
    """The module refused or failed a command; ``code`` is its SDR code.

    ``advice`` (a class attribute, may be empty) says what a person can do about it; it is
    part of ``str(error)``.
    """

    code: int = 0
    error: str = "UNKNOWERR"
    advice: str = ""

    def __init__(self, code: int, error: str, message: str, details: dict[str, Any]) -> None:
        self.code = code
        self.error = error
        self.message = message
        self.details = details
        text = f"{error} (0x{code:08x}): {message}"
        super().__init__(f"{text}. {self.advice}" if self.advice else text)


class AccessDenied(ModuleError):
    """PARDENY: wrong PIN (``details["retries"]`` left) or a command that needs login."""


class PinLocked(ModuleError):
    """PIN_LOCKED: no tries left; only ``factory_reset`` unlocks the module."""

    advice = ("The PIN is locked: only a factory reset, with the module's reset button held, "
              "unlocks it (appliance hsm factory-reset --yes), and it erases every key")


class PinDefault(ModuleError):
    """PIN_DEFAULT: the module still has its factory PIN and refuses to sign, generate keys or
    decrypt until it is changed."""

    advice = ("Change the PIN with `appliance hsm change-pin` (a set-up step; stop the "
              "appliance service first, it holds the module's port), then give the new PIN to "
              "the service ([hsm] pin_file or APPLIANCE_HSM_PIN) and start it again")


class KeyNotFound(ModuleError):
    """KEYNOTEXIST: the slot holds no key."""


class SlotOccupied(ModuleError):
    """FILEEXISTS: the slot holds a key and ``overwrite`` was not set."""


class InvalidArgument(ModuleError):
    """INARGERR: a missing, mistyped or out-of-range argument."""


class HardwareFailure(ModuleError):
    """HARDFAIL: the module failed its power-up self test and refuses crypto."""


class ContextLost(ModuleError):
    """STEPERR: a hash context that does not exist (closed, or gone with a module reset)."""


class NotSupported(ModuleError):
    """NOTSUPPORT, ALGNOTSUPPORT, ALGMODNOTSUPPORT: an op, algorithm or mode it lacks."""


_BY_NAME: dict[str, type[ModuleError]] = {
    "PARDENY": AccessDenied,
    "PIN_LOCKED": PinLocked,
    "PIN_DEFAULT": PinDefault,
    "KEYNOTEXIST": KeyNotFound,
    "FILEEXISTS": SlotOccupied,
    "INARGERR": InvalidArgument,
    "HARDFAIL": HardwareFailure,
    "STEPERR": ContextLost,
    "NOTSUPPORT": NotSupported,
    "ALGNOTSUPPORT": NotSupported,
    "ALGMODNOTSUPPORT": NotSupported,
}


def from_response(response: dict[str, Any]) -> ModuleError:
    """The typed error for an ``ok: false`` response (the code decides, not the text)."""
    code = response.get("code")
    if not isinstance(code, int):
        code = codes.SDR_BASE + 0x01
    name = codes.NAMES.get(code, "UNKNOWERR")
    message = response.get("message")
    details = {k: v for k, v in response.items() if k not in ("ok", "code", "error", "message")}
    return _BY_NAME.get(name, ModuleError)(code, name, str(message or name), details)
