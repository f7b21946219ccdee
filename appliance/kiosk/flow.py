"""The authorization flow of the kiosk: a sans-I/O state machine (docs/authorization-flow.md).

:class:`AuthorizationFlow` takes events (what the citizen touched, what the camera read, what
the runner's I/O produced) and the time, and returns effects (dataclasses the runner
executes)::

    effects = flow.handle(MatterText(text, "camera"), now_ms)
    view = flow.view()          # JSON-safe; what the UI renders

It reads no clock, does no I/O, holds no image data and no key. Screens::

    attract -> scan -> checking -> consent -> capture -> verifying -> signing -> submitting
            -> waiting -> receipt -> attract                                   (face way)
    consent -> clerk (session code and QR; the PAD's GOVCONF1 QR read back) -> signing -> ...
                                                                             (clerk way)
    any step -> error -> attract;   alarm -> blocked -> (cleared) -> attract

The kiosk shows only what it verified and signs what it showed: the consent screen appears
only after the runner verified the matter (its signature, the PAD's enrollment, every license
deposit and its issuer, ledger-protocol §6) and its view is the verified one
(:class:`MatterVerified`). :class:`SignAuthorization` carries ``license.authorize`` data that
embeds that very signed matter, and is emitted only in the session that verified the one way
of identity: a ``match`` attestation for this session, subject, capture digest, kiosk, action
and target (face), or a clerk's confirmation for this session, kiosk, action and target that
the runner verified (clerk); with no blocking alarm and the matter not expired. Every failure
ends on ``error`` (or ``blocked``) with a :class:`Wipe`; every return to ``attract`` emits
:class:`Wipe` too.

Results from the runner carry the session they belong to and are ignored unless the flow is
in that session, on that step, waiting for exactly that result: a late answer (after a
timeout, a cancel, an alarm) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.node import objects as ob
from appliance.node.errors import MalformedError
from appliance.node.rules import RULE_CODES

from .capture.events import ChallengeIssued, Failed, Hint, Passed, Progress
from .capture.quality import HINTS

__all__ = [
    "ACTIONS_TEXT", "ERRORS", "REFUSALS", "SCREENS", "Activity", "AlarmChanged", "Alternative",
    "AttestationVerified", "Audit", "AuthorizationFlow", "AuthorizationSigned", "AwaitInclusion",
    "Cancel", "CaptureSealed", "CaptureUpdate", "CheckNodes", "Consent", "ConfirmationText",
    "ConfirmationVerified", "Decline", "Done", "Effect", "Event", "Extend", "FlowConfig",
    "Included", "MatterText", "MatterVerified", "NodesChecked", "RECEIPT_PREFIX",
    "RequestAttestation", "SealCapture", "SignAuthorization", "Start", "StartCapture",
    "StartScan", "StepFailed", "StopCapture", "StopScan", "SubmitTx", "Submitted", "Tick",
    "VerifyConfirmation", "VerifyMatter", "Wipe", "refusal", "ui_event",
]

SCREENS = ("attract", "scan", "checking", "consent", "clerk", "capture", "verifying", "signing",
           "submitting", "waiting", "receipt", "error", "blocked")
RECEIPT_PREFIX = "GOVTX1:"  # the receipt QR: GOVTX1:<tx_id hex>


# -- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlowConfig:
    """Time limits in ms (None: no limit). The interactive screens can be extended;
    the processing screens cannot (their limit is the step's, not the citizen's)."""

    scan_ms: int = 60_000
    checking_ms: int = 20_000
    consent_ms: int = 60_000
    clerk_ms: int = 180_000
    capture_ms: int = 45_000
    verifying_ms: int = 20_000
    signing_ms: int = 20_000
    submitting_ms: int = 20_000
    waiting_ms: int = 30_000
    receipt_ms: int = 30_000
    error_ms: int = 20_000
    warn_fraction: float = 0.75
    """The warning shows at 75 % of the time..."""
    min_warn_lead_ms: int = 20_000
    """...but at least 20 s before the end (WCAG 2.2.1 gives the user 20 s to extend)."""
    max_extends: int = 10
    """Extensions per screen visit: WCAG 2.2.1 asks at least ten."""
    capture_attempts: int = 3
    """Liveness attempts before ``liveness_failed`` (a citizen who stepped aside retries)."""

    def __post_init__(self) -> None:
        for name in ("scan_ms", "checking_ms", "consent_ms", "clerk_ms", "capture_ms",
                     "verifying_ms", "signing_ms", "submitting_ms", "waiting_ms", "receipt_ms",
                     "error_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.warn_fraction < 1:
            raise ValueError("warn_fraction must be in (0, 1)")
        if self.max_extends < 0 or self.capture_attempts < 1 or self.min_warn_lead_ms < 0:
            raise ValueError("max_extends >= 0, capture_attempts >= 1, min_warn_lead_ms >= 0")

    def limit(self, screen: str) -> int | None:
        return getattr(self, f"{screen}_ms", None)


EXTENDABLE = frozenset({"scan", "consent", "clerk", "capture", "receipt", "error"})
CANCELLABLE = frozenset({"scan", "checking", "consent", "clerk", "capture", "verifying",
                         "signing"})
ACTIVE = frozenset({"scan", "consent", "clerk", "receipt", "error"})  # activity resets
BEFORE_SUBMIT = frozenset({"scan", "checking", "consent", "clerk", "capture", "verifying",
                           "signing"})


# -- error screens ------------------------------------------------------------------------------

ERRORS: dict[str, tuple[str, str, str, str]] = {
    # code: (title_zh, title_en, message_zh, message_en)
    "consent_declined": (
        "已取消授权", "Authorization declined",
        "您没有同意授权，未记录任何信息。如需办理，请咨询窗口工作人员。",
        "You did not consent. Nothing was recorded. Please ask at the window if you need "
        "help."),
    "matter_invalid": (
        "事项码无法识别", "Matter code not recognised",
        "这个二维码不是有效的授权事项码，未记录任何信息。请向窗口工作人员重新获取。",
        "This QR code is not a valid matter code. Nothing was recorded. Please ask the window "
        "clerk for a new one."),
    "matter_forged": (
        "事项码签名无效", "Matter code not authentic",
        "这个事项码的签名未通过校验，可能被篡改或伪造，未记录任何信息。请向窗口工作人员重新获取。",
        "The signature of this matter code does not verify: it may have been altered or forged. "
        "Nothing was recorded. Please ask the window clerk for a new code."),
    "matter_terms": (
        "事项期限不符合规定", "Matter terms not allowed",
        "这个事项码的有效期或授权使用期限不符合规定，未记录任何信息。请向窗口工作人员重新获取。",
        "This matter's validity or the period the offices may use your licenses is not "
        "allowed. Nothing was recorded. Please ask the window clerk for a new code."),
    "pad_not_enrolled": (
        "出具事项的终端未登记", "Matter from an unregistered terminal",
        "出具这个事项码的窗口终端未在区块链上登记，未记录任何信息。请到窗口咨询。",
        "The window terminal that issued this matter is not registered on the chain. Nothing "
        "was recorded. Please ask at the window."),
    "pad_expired": (
        "出具事项的终端登记已过期", "Issuing terminal's registration expired",
        "出具这个事项码的窗口终端登记已过期，未记录任何信息。请到窗口咨询。",
        "The registration of the window terminal that issued this matter has expired. Nothing "
        "was recorded. Please ask at the window."),
    "pad_wrong_office": (
        "事项与办理窗口不符", "Matter and office do not match",
        "出具这个事项码的终端不属于事项所写的办理单位，未记录任何信息。请到窗口咨询。",
        "The terminal that issued this matter does not belong to the office the matter names. "
        "Nothing was recorded. Please ask at the window."),
    "license_not_found": (
        "证照未在链上找到", "License not found on the chain",
        "事项所列的证照未在区块链上找到，未记录任何信息。请到窗口咨询。",
        "A license the matter lists is not on the chain. Nothing was recorded. Please ask at "
        "the window."),
    "license_unverifiable": (
        "证照无法核验", "License cannot be verified",
        "事项所列的证照无法核验（出具机构的登记无效），未记录任何信息。请到窗口咨询。",
        "A license the matter lists cannot be verified (its issuer's registration is not "
        "valid). Nothing was recorded. Please ask at the window."),
    "license_wrong_holder": (
        "证照不属于您", "License belongs to someone else",
        "事项所列的证照不属于事项所写的办理人，未记录任何信息。请到窗口咨询。",
        "A license the matter lists does not belong to the person the matter is for. Nothing "
        "was recorded. Please ask at the window."),
    "matter_already_authorized": (
        "该事项已授权", "Already authorized",
        "这个事项已经在本终端授权过，不会重复授权。如需再次办理，请向窗口工作人员获取新的事项码。",
        "This matter was already authorized on this terminal and is not authorized twice. "
        "Please ask the window clerk for a new code if you need to do it again."),
    "confirmation_invalid": (
        "工作人员确认无效", "Clerk confirmation not valid",
        "窗口终端出示的确认码未通过校验（不是本次办理、本终端或本事项的确认），未进行授权。请重新办理。",
        "The confirmation shown by the window terminal failed its checks (not for this "
        "session, this terminal or this matter). Nothing was authorized. Please start again."),
    "clerk_not_enrolled": (
        "工作人员未登记", "Clerk not registered",
        "签署确认的工作人员未在区块链上登记为本单位的核验人员，未进行授权。请到窗口咨询。",
        "The clerk who signed the confirmation is not registered on the chain for this office. "
        "Nothing was authorized. Please ask at the window."),
    "matter_expired": (
        "事项码已过期", "Matter code expired",
        "该授权事项已过有效期，未记录任何信息。请向窗口工作人员重新获取。",
        "This matter has expired. Nothing was recorded. Please ask the window clerk for a "
        "new code."),
    "liveness_failed": (
        "人脸采集未通过", "Face capture not completed",
        "未能完成人脸采集与动作检测，未记录任何信息。您可以重试，或请工作人员核验身份证。",
        "The face capture and the requested movements could not be completed. Nothing was "
        "recorded. You can try again or ask the clerk to check your ID card."),
    "identity_no_match": (
        "身份核验未通过", "Identity not confirmed",
        "人像比对未通过，未进行授权。请到窗口由工作人员核验身份证。",
        "The photo comparison did not confirm your identity. Nothing was authorized. Please "
        "go to the window to have your ID card checked."),
    "identity_unavailable": (
        "身份核验服务暂不可用", "Identity service unavailable",
        "暂时无法连接身份核验服务，未进行授权。请稍后重试或到窗口办理。",
        "The identity service cannot be reached. Nothing was authorized. Please try again "
        "later or go to the window."),
    "attestation_invalid": (
        "核验结果无效", "Identity result not valid",
        "身份核验服务返回的结果未通过校验，未进行授权。请到窗口办理。",
        "The answer of the identity service failed its checks. Nothing was authorized. "
        "Please go to the window."),
    "camera_unavailable": (
        "摄像头不可用", "Camera unavailable",
        "摄像头暂时无法使用，未记录任何信息。请到窗口办理。",
        "The camera is not working. Nothing was recorded. Please go to the window."),
    "module_unavailable": (
        "安全模块不可用", "Security module unavailable",
        "本终端的密码模块暂时无法签名，未进行授权。请到窗口办理。",
        "This terminal's crypto module cannot sign right now. Nothing was authorized. Please "
        "go to the window."),
    "node_unavailable": (
        "区块链节点不可用", "Ledger unavailable",
        "暂时无法连接区块链节点，授权未提交。请稍后重试或到窗口办理。",
        "The ledger nodes cannot be reached. The authorization was not submitted. Please "
        "try again later or go to the window."),
    "inclusion_timeout": (
        "上链确认超时", "Not yet confirmed",
        "授权已提交，但未能在时限内确认上链。请凭交易编号向窗口工作人员查询。",
        "The authorization was submitted but not confirmed in time. Please ask the window "
        "clerk to check it with the transaction number."),
    "proof_invalid": (
        "上链证明无效", "Proof not valid",
        "节点返回的上链证明未通过校验，不能出具回执。请凭交易编号向窗口工作人员查询。",
        "The proof the ledger nodes gave did not verify; no receipt can be issued. Please "
        "ask the window clerk with the transaction number."),
    "blocked_alarm": (
        "暂停授权", "Authorizations paused",
        "本终端检测到区块链数据冲突，已暂停新的授权，等待管理员处理。请到窗口办理。",
        "This terminal detected conflicting ledger data and has paused authorizations "
        "until an administrator clears the alarm. Please go to the window."),
    "blocked_audit": (
        "暂停授权", "Authorizations paused",
        "本终端的安全审计日志未通过校验，已暂停新的授权，等待管理员处理。请到窗口办理。",
        "This terminal's security audit log failed its check, so authorizations are paused "
        "until an administrator fixes it. Please go to the window."),
    "blocked_not_enrolled": (
        "本终端暂不能办理授权", "Authorizations are not available here",
        "本终端尚未在区块链上登记或登记已过期，暂不能办理授权。请到窗口办理。",
        "This terminal is not registered on the chain, or its registration has expired, so "
        "it cannot take authorizations. Please go to the window."),
    "blocked_unavailable": (
        "本终端暂不能办理授权", "Authorizations are not available here",
        "本终端暂不能办理授权。请到窗口办理。",
        "Authorizations are not available on this terminal. Please go to the window."),
    "timeout": (
        "操作超时", "Time ran out",
        "操作时间已到，未记录任何信息。请重新开始。",
        "The time for this step ran out. Nothing was recorded. Please start again."),
    "cancelled": (
        "已取消", "Cancelled",
        "操作已取消，未记录任何信息。",
        "Cancelled. Nothing was recorded."),
}

# messages that replace the defaults once the transaction has left the terminal
_SENT_MESSAGES = {
    "blocked_alarm": (
        "授权已提交，但本终端检测到区块链数据冲突，无法出具回执。请凭交易编号向窗口工作人员查询。",
        "The authorization was submitted, but this terminal detected conflicting ledger "
        "data and cannot issue a receipt. Please ask the window clerk with the transaction "
        "number."),
    "node_unavailable": (
        "授权可能已提交，但无法确认。请凭交易编号向窗口工作人员查询。",
        "The authorization may have been submitted but could not be confirmed. Please ask "
        "the window clerk with the transaction number."),
}

ACTIONS_TEXT: dict[str, tuple[str, str]] = {
    "blink": ("请眨眼", "Blink"),
    "turn_left": ("请向左转头，再转回来", "Turn your head to your left, then back"),
    "turn_right": ("请向右转头，再转回来", "Turn your head to your right, then back"),
}

#: The screen of each §6 rule (appliance.node.rules) that refuses a matter, an attestation or
#: a confirmation, by the step that checked it; a rule not listed gets the step's default.
REFUSALS: dict[str, dict[str, str]] = {
    "matter": {
        "matter_signature": "matter_forged", "matter_pad": "matter_forged",
        "enrollment_key": "matter_forged", "matter_times": "matter_terms",
        "matter_future": "matter_terms", "use_until": "matter_terms",
        "matter_expired": "matter_expired", "enrollment_missing": "pad_not_enrolled",
        "enrollment_invalid": "pad_not_enrolled", "enrollment_role": "pad_not_enrolled",
        "enrollment_expired": "pad_expired", "enrollment_office": "pad_wrong_office",
        "deposit_missing": "license_not_found", "deposit_invalid": "license_unverifiable",
        "deposit_holder": "license_wrong_holder",
        "already_authorized": "matter_already_authorized",
        "node_unavailable": "node_unavailable",
    },
    "attest": {
        **{r: "attestation_invalid" for r in RULE_CODES
           if r.startswith(("attestation_", "enrollment_"))},
        "attestation_result": "identity_no_match",
    },
    "confirm": {
        **{r: "confirmation_invalid" for r in RULE_CODES if r.startswith("confirmation_")},
        **{r: "clerk_not_enrolled" for r in RULE_CODES if r.startswith("enrollment_")},
    },
    "sign": {"already_authorized": "matter_already_authorized"},
    "submit": {"duplicate_matter": "matter_already_authorized"},
}

# which failure codes each waiting step accepts from the runner (anything else: the default)
_STEP_CODES: dict[str, tuple[str, frozenset[str]]] = {
    "matter": ("matter_invalid", frozenset(REFUSALS["matter"].values())),
    "capture": ("camera_unavailable", frozenset({"camera_unavailable"})),
    "seal": ("camera_unavailable", frozenset({"camera_unavailable"})),
    "attest": ("identity_unavailable", frozenset({"identity_unavailable",
                                                  "attestation_invalid", "identity_no_match",
                                                  "node_unavailable"})),
    "confirm": ("confirmation_invalid", frozenset({"confirmation_invalid",
                                                   "clerk_not_enrolled", "node_unavailable"})),
    "nodes": ("node_unavailable", frozenset({"node_unavailable"})),
    "sign": ("module_unavailable", frozenset({"module_unavailable",
                                              "matter_already_authorized"})),
    "submit": ("node_unavailable", frozenset({"node_unavailable",
                                              "matter_already_authorized"})),
    "include": ("inclusion_timeout", frozenset({"inclusion_timeout", "proof_invalid",
                                                "node_unavailable"})),
}
_TIMEOUT_CODE = {"checking": "node_unavailable", "verifying": "identity_unavailable",
                 "signing": "module_unavailable", "submitting": "node_unavailable",
                 "waiting": "inclusion_timeout"}


def refusal(step: str, rule: str) -> str:
    """The error screen for ``rule`` (a §6 rule, or an error code) refused at ``step``."""
    code = REFUSALS.get(step, {}).get(rule, rule)
    default, allowed = _STEP_CODES[step]
    return code if code in allowed else default


# -- events -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """A touch on the attract screen."""


@dataclass(frozen=True)
class MatterText:
    """A matter QR text (``GOVAUTH1:``): read by the camera (``camera``) or typed/scanned at
    the kiosk (``clerk``)."""

    text: str
    source: str = "clerk"


@dataclass(frozen=True)
class ConfirmationText:
    """A clerk's confirmation QR text (``GOVCONF1:``) shown by the PAD to the kiosk."""

    text: str
    source: str = "clerk"


@dataclass(frozen=True)
class Consent:
    pass


@dataclass(frozen=True)
class Decline:
    pass


@dataclass(frozen=True)
class Alternative:
    """The citizen asks for the clerk way (the clerk checks the ID card and confirms)."""


@dataclass(frozen=True)
class Extend:
    pass


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Done:
    """Leave the receipt or error screen."""


@dataclass(frozen=True)
class Activity:
    """Any touch: resets the timer of an interactive screen (not an extension)."""


@dataclass(frozen=True)
class Tick:
    """Time passes (the runner sends it at the deadlines :meth:`next_deadline` gives)."""


@dataclass(frozen=True)
class MatterVerified:
    """The runner verified the session's matter (§6): ``display`` is
    :meth:`appliance.node.rules.VerifiedMatter.display`, what the consent screen shows."""

    session: bytes
    display: dict[str, Any]


@dataclass(frozen=True)
class ConfirmationVerified:
    """The runner verified the confirmation (a clerk of the matter's office, this session,
    this kiosk, this action and target, fresh)."""

    session: bytes
    staff: str = ""


@dataclass(frozen=True)
class CaptureUpdate:
    """An event of the running :class:`~appliance.kiosk.capture.CaptureSession`."""

    session: bytes
    attempt: int
    event: Hint | ChallengeIssued | Progress | Passed | Failed


@dataclass(frozen=True)
class CaptureSealed:
    """The passed capture is sealed in an envelope (held by the runner) with this digest."""

    session: bytes
    capture_digest: bytes


@dataclass(frozen=True)
class AttestationVerified:
    """A signed attestation that the runner verified whole (§6 "Face way": signed by an
    enrolled identity service, a match above its minimum score, for this subject, capture,
    session, kiosk, action and target, fresh). ``signed`` is the map to embed in
    license.authorize."""

    session: bytes
    signed: dict[str, Any]
    result: str
    score: int


@dataclass(frozen=True)
class NodesChecked:
    """Whether a district node answered just now (checked before signing)."""

    session: bytes
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class AuthorizationSigned:
    """The license.authorize is signed in the crypto module (the runner holds the tx)."""

    session: bytes
    tx_id: bytes


@dataclass(frozen=True)
class Submitted:
    session: bytes
    tx_id: bytes


@dataclass(frozen=True)
class Included:
    """The tx is in block ``height``, its proof verified against the verified header chain;
    ``time_ms`` is that block's timestamp."""

    session: bytes
    tx_id: bytes
    height: int
    block_id: bytes
    time_ms: int


@dataclass(frozen=True)
class StepFailed:
    """A runner step failed. ``step``: matter, capture, seal, attest, confirm, nodes, sign,
    submit, include; ``code``: one of :data:`ERRORS` (see :func:`refusal`; a code the step
    cannot give becomes its default)."""

    session: bytes
    step: str
    code: str
    detail: str = ""


@dataclass(frozen=True)
class AlarmChanged:
    """A reason to refuse new authorizations was raised (``active``) or cleared.

    ``kind`` names the reason (see :data:`BLOCK_CODES`): the light node's equivocation
    alarm, an audit log that can no longer record authorizations, a terminal that is not
    enrolled, or anything else that makes this terminal unfit to authorize. Several can be
    active at once; the terminal authorizes again when all are cleared."""

    active: bool
    detail: str = ""
    kind: str = "equivocation"


#: The error screen of each blocking reason, most serious first; other kinds get the last.
BLOCK_CODES = {"equivocation": "blocked_alarm", "audit": "blocked_audit",
               "not_enrolled": "blocked_not_enrolled", "unavailable": "blocked_unavailable"}


Event = (Start | MatterText | ConfirmationText | Consent | Decline | Alternative | Extend
         | Cancel | Done | Activity | Tick | MatterVerified | ConfirmationVerified
         | CaptureUpdate | CaptureSealed | AttestationVerified | NodesChecked
         | AuthorizationSigned | Submitted | Included | StepFailed | AlarmChanged)


def ui_event(obj: object) -> Event | None:
    """The event of a UI message (``POST /api/event`` JSON), or None if it is not one.
    Only the UI's own events: results of I/O never come from the UI."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    kind = obj["type"]
    simple = {"start": Start, "consent": Consent, "decline": Decline,
              "alternative": Alternative, "extend": Extend, "cancel": Cancel, "done": Done,
              "activity": Activity}
    if kind in simple:
        return simple[kind]()
    if kind == "matter_text" and isinstance(obj.get("text"), str):
        return MatterText(obj["text"], "clerk")
    if kind == "confirmation_text" and isinstance(obj.get("text"), str):
        return ConfirmationText(obj["text"], "clerk")
    return None


# -- effects ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Effect:
    pass


@dataclass(frozen=True)
class StartScan(Effect):
    """Read QR codes from the camera frames: ``kind`` ``matter`` (GOVAUTH1) or
    ``confirmation`` (GOVCONF1)."""

    session: bytes
    kind: str = "matter"


@dataclass(frozen=True)
class StopScan(Effect):
    pass


@dataclass(frozen=True)
class VerifyMatter(Effect):
    """Verify ``matter`` (§6, with proofs from the chain) and that this kiosk has not signed
    it before; answer MatterVerified or StepFailed(matter, rule)."""

    session: bytes
    matter: ob.Signed[ob.MatterBody]


@dataclass(frozen=True)
class VerifyConfirmation(Effect):
    """Verify the clerk's ``confirmation`` for this session, kiosk and target; answer
    ConfirmationVerified or StepFailed(confirm, rule)."""

    session: bytes
    confirmation: ob.Signed[ob.ConfirmationBody]
    matter: ob.Signed[ob.MatterBody]


@dataclass(frozen=True)
class StartCapture(Effect):
    """Start a new CaptureSession and feed it the camera frames."""

    session: bytes
    attempt: int


@dataclass(frozen=True)
class StopCapture(Effect):
    """Stop feeding, cancel and close the capture session (its buffers are overwritten)."""

    session: bytes


@dataclass(frozen=True)
class SealCapture(Effect):
    """Seal the passed capture for the identity service; answer CaptureSealed."""

    session: bytes


@dataclass(frozen=True)
class RequestAttestation(Effect):
    """Send the sealed envelope; answer AttestationVerified or StepFailed(attest). The
    attestation must name ``terminal``, ``action`` and ``target`` (the signed matter's
    digest) and, for an enterprise matter, ``represents``."""

    session: bytes
    subject: bytes
    capture_digest: bytes
    target: bytes
    represents: bytes | None = None
    action: str = "authorize"


@dataclass(frozen=True)
class CheckNodes(Effect):
    """Is a district node reachable now? Answer NodesChecked (before anything is signed)."""

    session: bytes


@dataclass(frozen=True)
class SignAuthorization(Effect):
    """Sign ``license.authorize`` with ``data`` (:class:`appliance.node.objects.AuthorizeData`
    as its map) in the crypto module, once this kiosk has recorded that it signs ``matter``
    (a matter is signed at most once)."""

    session: bytes
    data: dict[str, Any]
    matter: ob.Signed[ob.MatterBody]


@dataclass(frozen=True)
class SubmitTx(Effect):
    session: bytes
    tx_id: bytes


@dataclass(frozen=True)
class AwaitInclusion(Effect):
    session: bytes
    tx_id: bytes


@dataclass(frozen=True)
class Wipe(Effect):
    """Drop everything of the session: capture buffers, envelope, attestation, signed tx."""

    session: bytes | None


@dataclass(frozen=True)
class Audit(Effect):
    """An audit log entry (bytes already as hex)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


# -- the machine --------------------------------------------------------------------------------

class AuthorizationFlow:
    """``terminal_id``: this kiosk's peer_id; ``enrollment``: the tx_id of its
    ``device.enroll`` (None: not enrolled, nothing can be signed); ``new_session``: 16 fresh
    random bytes per flow (the kiosk's RNG, never the crypto module's login session)."""

    def __init__(self, config: FlowConfig | None = None, *, terminal_id: bytes,
                 new_session: Callable[[], bytes], enrollment: bytes | None = None) -> None:
        if type(terminal_id) is not bytes or len(terminal_id) != 32:
            raise ValueError("terminal_id must be 32 bytes (the terminal's peer_id)")
        if enrollment is not None and (type(enrollment) is not bytes or len(enrollment) != 32):
            raise ValueError("enrollment must be a 32-byte tx_id")
        self.config = config or FlowConfig()
        self.terminal_id = terminal_id
        self.enrollment = enrollment
        self._new_session = new_session
        self.screen = "attract"
        self._seq = 0
        self._now = 0  # wall time (ms): matter expiry, what the view's deadlines are in
        self._mono = 0  # monotonic time (ms): every timer runs on it
        self._wall_offset = 0  # wall - monotonic when the running timer was set
        self._blocks: dict[str, str] = {}  # kind -> detail, while authorizations are refused
        if enrollment is None:
            self._blocks["not_enrolled"] = "this terminal's enrollment is not configured"
        self._view: dict[str, Any] | None = None
        self._reset()
        if self._blocks:
            self._error = self._error_view(self._block_code())
            self.screen = "blocked"
        self._view = self._build_view()
        self._view["seq"] = self._seq

    # -- state ---------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.session: bytes | None = None
        self.matter: ob.Signed[ob.MatterBody] | None = None
        self._display: dict[str, Any] | None = None  # the verified matter, as shown
        self._entered = self._mono
        self._deadline: int | None = None  # monotonic ms
        self._warn_at: int | None = None
        self._extends = 0
        self._attempt = 0
        self._challenge: ChallengeIssued | None = None
        self._hints: tuple[str, ...] = ()
        self._progress = 0
        self._capture_digest: bytes | None = None
        self._attestation: dict[str, Any] | None = None
        self._confirmation: ob.Signed[ob.ConfirmationBody] | None = None
        self._clerk: dict[str, Any] | None = None  # the clerk screen's state
        self._awaiting: str | None = None  # the runner result the flow waits for
        self._tx_id: bytes | None = None
        self._sent = False  # SubmitTx emitted
        self._receipt: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None

    def next_deadline(self) -> int | None:
        """When the runner should send a Tick (ms, on the clock of ``mono_ms``), or None."""
        return self._deadline

    def _enter(self, screen: str) -> None:
        self.screen = screen
        self._entered = self._mono
        self._extends = 0
        self._set_timer()

    def _set_timer(self) -> None:
        limit = self.config.limit(self.screen)
        if limit is None:
            self._deadline = self._warn_at = None
            return
        self._deadline = self._mono + limit
        # the view gives deadlines in wall time (the browser counts down on its own clock):
        # wall now + what remains, fixed when the timer is set
        self._wall_offset = self._now - self._mono
        if self.screen in EXTENDABLE:
            lead = max(round(limit * (1 - self.config.warn_fraction)),
                       self.config.min_warn_lead_ms)
            self._warn_at = max(self._mono, self._deadline - lead)
        else:
            self._warn_at = None

    # -- the entry point ------------------------------------------------------------------------

    def handle(self, event: Event, now_ms: int, mono_ms: int | None = None) -> list[Effect]:
        """Apply ``event`` at wall time ``now_ms``; the effects to execute, in order.

        ``mono_ms`` is a monotonic clock in ms: the timers run on it, so a step of the wall
        clock neither stretches nor shortens a screen; wall time is used only for the matter's
        expiry and for the view's deadlines (the browser compares them with its wall clock).
        Without ``mono_ms`` both are ``now_ms``, never going backwards."""
        if mono_ms is None:
            self._now = self._mono = max(self._mono, int(now_ms))
        else:
            self._now = int(now_ms)
            self._mono = max(self._mono, int(mono_ms))
        out: list[Effect] = []
        if self._deadline is not None and self._mono >= self._deadline:
            self._timeout(out)
        self._dispatch(event, out)
        view = self._build_view()
        if self._view is None or view != {k: v for k, v in self._view.items() if k != "seq"}:
            self._seq += 1
        view["seq"] = self._seq
        self._view = view
        return out

    def view(self) -> dict[str, Any]:
        """What the UI shows (a fresh JSON-safe dict; ``seq`` grows on every change)."""
        assert self._view is not None
        return _copy(self._view)

    def _dispatch(self, ev: Event, out: list[Effect]) -> None:
        s = self.screen
        if isinstance(ev, Tick):
            return
        if isinstance(ev, AlarmChanged):
            self._on_alarm(ev, out)
        elif isinstance(ev, Start):
            if s == "attract":
                self._begin(out)
                self._enter("scan")
                out.append(StartScan(self._sid(), "matter"))
        elif isinstance(ev, MatterText):
            self._on_matter(ev, out)
        elif isinstance(ev, ConfirmationText):
            self._on_confirmation(ev, out)
        elif isinstance(ev, Consent):
            if s == "consent":
                if self._expired():
                    self._fail(out, "matter_expired", "consent")
                else:
                    self._start_capture(out, 1)
        elif isinstance(ev, Decline):
            if s == "consent":
                self._fail(out, "consent_declined", "consent")
        elif isinstance(ev, Alternative):
            if s in ("consent", "capture"):
                self._to_clerk(out)
        elif isinstance(ev, Extend):
            if s in EXTENDABLE and self._extends < self.config.max_extends \
                    and self._deadline is not None:
                self._extends += 1
                self._set_timer()
        elif isinstance(ev, Activity):
            if s in ACTIVE and self._deadline is not None:
                self._set_timer()
        elif isinstance(ev, Cancel):
            if s in ("receipt", "error"):
                self._to_attract(out)
            elif s in CANCELLABLE:
                self._fail(out, "cancelled", s)
        elif isinstance(ev, Done):
            if s in ("receipt", "error"):
                self._to_attract(out)
        else:
            self._on_result(ev, out)

    # -- internals -----------------------------------------------------------------------------

    def _sid(self) -> bytes:
        assert self.session is not None
        return self.session

    def _expired(self) -> bool:
        return self.matter is not None and self._now > self.matter.body.expires_at

    def _begin(self, out: list[Effect]) -> None:
        self._reset()
        sid = self._new_session()
        if type(sid) is not bytes or len(sid) != 16:
            raise ValueError("new_session must return 16 bytes")
        self.session = sid

    def _audit_failed(self, out: list[Effect], step: str, code: str) -> None:
        fields: dict[str, Any] = {"session": self.session.hex() if self.session else None,
                                  "step": step, "code": code}
        if self.matter is not None:
            fields.update(matter_id=self.matter.body.matter_id.hex(),
                          pad=self.matter.body.pad.hex())
        out.append(Audit("authorization_failed", fields))

    def _error_view(self, code: str) -> dict[str, Any]:
        title_zh, title_en, msg_zh, msg_en = ERRORS[code]
        if self._sent and code in _SENT_MESSAGES:
            msg_zh, msg_en = _SENT_MESSAGES[code]
        return {"code": code, "title_zh": title_zh, "title_en": title_en,
                "message_zh": msg_zh, "message_en": msg_en,
                "tx_id": self._tx_id.hex() if self._sent and self._tx_id else None}

    def _fail(self, out: list[Effect], code: str, step: str) -> None:
        """End the session on the error screen: stop what runs, wipe, audit."""
        if self.screen == "capture":
            out.append(StopCapture(self._sid()))
        if self.screen in ("scan", "clerk"):
            out.append(StopScan())
        self._audit_failed(out, step, code)
        error = self._error_view(code)
        sid = self.session
        self._reset()
        self._error = error
        out.append(Wipe(sid))
        if code in _BLOCKED_CODES:
            self._enter("blocked")
        else:
            self._enter("error")

    def _to_attract(self, out: list[Effect]) -> None:
        sid = self.session
        if self.screen in ("scan", "clerk"):
            out.append(StopScan())
        self._reset()
        out.append(Wipe(sid))
        if self._blocks:
            self._error = self._error_view(self._block_code())
            self._enter("blocked")
        else:
            self._enter("attract")

    def _timeout(self, out: list[Effect]) -> None:
        s = self.screen
        if s in ("receipt", "error"):
            self._to_attract(out)
        elif s in _TIMEOUT_CODE:
            self._fail(out, _TIMEOUT_CODE[s], s)
        elif s in ("scan", "consent", "clerk", "capture"):
            self._fail(out, "timeout", s)

    # -- scan, check and consent ----------------------------------------------------------------

    def _on_matter(self, ev: MatterText, out: list[Effect]) -> None:
        if self.screen not in ("attract", "scan") or self._blocks:
            return
        if not isinstance(ev.text, str):
            return
        try:
            matter = ob.decode_matter_qr(ev.text)
        except MalformedError as exc:
            if ev.source == "camera" and exc.reason == "prefix":
                return  # some other QR code in view: keep looking
            if self.screen == "attract":
                self._begin(out)
            self._fail(out, "matter_invalid", "scan")
            return
        if self.screen == "attract":
            self._begin(out)
        else:
            out.append(StopScan())
        self.matter = matter
        self._awaiting = "matter"
        self._enter("checking")
        out.append(VerifyMatter(self._sid(), matter))

    def _on_matter_verified(self, ev: MatterVerified, out: list[Effect]) -> None:
        if self.screen != "checking" or not isinstance(ev.display, dict):
            return
        self._awaiting = None
        self._display = ev.display
        self._enter("consent")

    def _to_clerk(self, out: list[Effect]) -> None:
        """The clerk way: show the session (code and QR), read the PAD's confirmation."""
        assert self.matter is not None
        if self.screen == "capture":
            out.append(StopCapture(self._sid()))
        self._awaiting = None
        request = ob.SessionRequest(self._sid(), self.terminal_id, "authorize",
                                    self.matter.digest)
        self._clerk = {"code": request.code,
                       "qr": ob.encode_qr(ob.SESSION_PREFIX, request), "checking": False}
        self._enter("clerk")
        out.append(StartScan(self._sid(), "confirmation"))

    def _on_confirmation(self, ev: ConfirmationText, out: list[Effect]) -> None:
        if self.screen != "clerk" or self._awaiting is not None or not isinstance(ev.text, str):
            return
        assert self.matter is not None and self._clerk is not None
        try:
            conf = ob.decode_confirmation_qr(ev.text)
        except MalformedError as exc:
            if ev.source == "camera" and exc.reason == "prefix":
                return  # the matter's own QR, or another code in view
            self._fail(out, "confirmation_invalid", "confirm")
            return
        b = conf.body
        if b.session != self.session or b.terminal != self.terminal_id \
                or b.action != "authorize" or b.target != self.matter.digest:
            if ev.source == "camera":
                return  # an older confirmation still on the PAD's screen: keep looking
            self._fail(out, "confirmation_invalid", "confirm")
            return
        out.append(StopScan())
        self._awaiting = "confirm"
        self._clerk["checking"] = True
        self._set_timer()
        out.append(VerifyConfirmation(self._sid(), conf, self.matter))
        self._confirmation = conf

    # -- capture and the steps after it -----------------------------------------------------------

    def _start_capture(self, out: list[Effect], attempt: int) -> None:
        if self.screen != "capture":
            self._enter("capture")
        else:
            self._set_timer()
        self._attempt = attempt
        self._challenge, self._hints, self._progress = None, (), 0
        self._awaiting = "capture"
        out.append(StartCapture(self._sid(), attempt))

    def _on_result(self, ev: Event, out: list[Effect]) -> None:
        sid = getattr(ev, "session", None)
        if sid is None or sid != self.session or self._awaiting is None:
            return
        if isinstance(ev, StepFailed):
            if ev.step != self._awaiting:
                return
            self._fail(out, refusal(ev.step, ev.code), ev.step)
            return
        if isinstance(ev, MatterVerified):
            if self._awaiting == "matter":
                self._on_matter_verified(ev, out)
        elif isinstance(ev, ConfirmationVerified):
            if self._awaiting == "confirm" and self.screen == "clerk":
                assert self._clerk is not None
                self._clerk["staff"] = ev.staff if isinstance(ev.staff, str) else ""
                self._awaiting = "nodes"
                self._enter("signing")
                out.append(CheckNodes(self._sid()))
        elif isinstance(ev, CaptureUpdate):
            self._on_capture(ev, out)
        elif isinstance(ev, CaptureSealed):
            if self._awaiting != "seal" or type(ev.capture_digest) is not bytes \
                    or len(ev.capture_digest) != 32:
                return
            assert self.matter is not None
            self._capture_digest = ev.capture_digest
            self._awaiting = "attest"
            b = self.matter.body
            out.append(RequestAttestation(self._sid(), b.subject, ev.capture_digest,
                                          self.matter.digest, b.on_behalf_of))
        elif isinstance(ev, AttestationVerified):
            if self._awaiting == "attest":
                self._on_attestation(ev, out)
        elif isinstance(ev, NodesChecked):
            if self._awaiting == "nodes":
                if ev.ok:
                    self._sign(out)
                else:
                    self._fail(out, "node_unavailable", "nodes")
        elif isinstance(ev, AuthorizationSigned):
            if self._awaiting == "sign" and type(ev.tx_id) is bytes and len(ev.tx_id) == 32:
                self._tx_id = ev.tx_id
                self._awaiting = "submit"
                self._sent = True
                self._enter("submitting")
                out.append(SubmitTx(self._sid(), ev.tx_id))
        elif isinstance(ev, Submitted):
            if self._awaiting == "submit" and ev.tx_id == self._tx_id:
                self._awaiting = "include"
                self._enter("waiting")
                out.append(AwaitInclusion(self._sid(), ev.tx_id))
        elif isinstance(ev, Included):
            if self._awaiting == "include" and ev.tx_id == self._tx_id:
                self._on_included(ev, out)

    def _on_capture(self, ev: CaptureUpdate, out: list[Effect]) -> None:
        if self.screen != "capture" or self._awaiting != "capture" \
                or ev.attempt != self._attempt:
            return
        e = ev.event
        if isinstance(e, Hint):
            self._hints = tuple(c for c in e.codes if c in HINTS)
        elif isinstance(e, ChallengeIssued):
            self._challenge = e
        elif isinstance(e, Progress):
            self._progress = max(self._progress, e.index + 1)
        elif isinstance(e, Passed):
            self._awaiting = "seal"
            self._enter("verifying")
            out.append(SealCapture(self._sid()))
        elif isinstance(e, Failed):
            if e.reason == "cancelled":
                return
            if self._attempt < self.config.capture_attempts:
                out.append(StopCapture(self._sid()))
                self._start_capture(out, self._attempt + 1)
            else:
                self._fail(out, "liveness_failed", "capture")

    def _on_attestation(self, ev: AttestationVerified, out: list[Effect]) -> None:
        """The runner verified the attestation whole; the flow checks again what binds it to
        this session (belt and braces: a runner bug must not sign another's attestation)."""
        assert self.matter is not None and self._capture_digest is not None
        body = ev.signed.get("body") if isinstance(ev.signed, dict) else None
        b = self.matter.body
        if not isinstance(body, dict) or body.get("session") != self.session \
                or body.get("subject") != b.subject \
                or body.get("capture_digest") != self._capture_digest \
                or body.get("terminal") != self.terminal_id \
                or body.get("action") != "authorize" \
                or body.get("target") != self.matter.digest \
                or body.get("represents") != b.on_behalf_of \
                or body.get("result") != ev.result or ev.result not in ("match", "no_match"):
            self._fail(out, "attestation_invalid", "attest")
            return
        if ev.result != "match":
            self._fail(out, "identity_no_match", "attest")
            return
        self._attestation = ev.signed
        self._awaiting = "nodes"
        self._enter("signing")
        out.append(CheckNodes(self._sid()))

    def _sign(self, out: list[Effect]) -> None:
        m = self.matter
        assert m is not None
        if self._blocks or self.enrollment is None:  # belt and braces: already aborted
            self._fail(out, self._block_code(), "sign")
            return
        if self._expired():
            self._fail(out, "matter_expired", "sign")
            return
        data: dict[str, Any] = {"matter": m.to_obj(), "session": self._sid(),
                                "terminal": self.terminal_id, "enrollment": self.enrollment}
        if self._attestation is not None:
            assert self._capture_digest is not None
            data["capture_digest"] = self._capture_digest
            data["attestation"] = self._attestation
        else:
            assert self._confirmation is not None
            data["confirmation"] = self._confirmation.to_obj()
        self._awaiting = "sign"
        out.append(SignAuthorization(self._sid(), data, m))

    def _on_included(self, ev: Included, out: list[Effect]) -> None:
        m = self.matter
        assert m is not None and self._tx_id is not None and self._display is not None
        d = self._display
        way = "face" if self._attestation is not None else "clerk"
        self._receipt = {"tx_id": self._tx_id.hex(), "height": int(ev.height),
                         "block_id": ev.block_id.hex(), "time_ms": int(ev.time_ms),
                         "office": d.get("office"), "agencies": d.get("agencies"),
                         "title": d.get("title"), "use_until": d.get("use_until"),
                         "way": way, "qr": RECEIPT_PREFIX + self._tx_id.hex()}
        self._awaiting = None
        out.append(Audit("authorization", {
            "session": self._sid().hex(), "tx_id": self._tx_id.hex(), "height": int(ev.height),
            "matter_id": m.body.matter_id.hex(), "pad": m.body.pad.hex(),
            "office": d.get("office"), "agencies": d.get("agencies"), "way": way,
            "terminal": self.terminal_id.hex()}))
        self._enter("receipt")

    # -- the alarm ------------------------------------------------------------------------------

    def _block_code(self) -> str:
        """The error code of the most serious active blocking reason."""
        for kind, code in BLOCK_CODES.items():
            if kind in self._blocks:
                return code
        return "blocked_unavailable"

    def _on_alarm(self, ev: AlarmChanged, out: list[Effect]) -> None:
        kind = ev.kind if isinstance(ev.kind, str) and ev.kind else "equivocation"
        kind = kind[:64]
        if ev.active:
            detail = ev.detail if isinstance(ev.detail, str) and ev.detail else \
                f"{kind} alarm"
            self._blocks[kind] = detail[:1000]
            code = self._block_code()
            if self.screen in BEFORE_SUBMIT or (
                    # a proof against a chain in doubt is worth nothing: abort after the
                    # submission too; other reasons let a sent authorization finish
                    kind == "equivocation" and self.screen in ("submitting", "waiting")):
                self._fail(out, BLOCK_CODES.get(kind, code), self.screen)
            elif self.screen in ("attract", "blocked"):
                self._error = self._error_view(code)
                self._enter("blocked")
        else:
            if self._blocks.pop(kind, None) is None:
                return
            if self.screen == "blocked":
                if self._blocks:
                    self._error = self._error_view(self._block_code())
                    self._enter("blocked")
                else:
                    self._to_attract(out)

    # -- the view -------------------------------------------------------------------------------

    def _alarm_view(self) -> dict[str, Any] | None:
        if not self._blocks:
            return None
        kind = next((k for k in BLOCK_CODES if k in self._blocks), next(iter(self._blocks)))
        return {"active": True, "kind": kind, "detail": self._blocks[kind],
                "kinds": sorted(self._blocks)}

    def _build_view(self) -> dict[str, Any]:
        s = self.screen
        m = self._display if s in ("consent", "clerk", "capture", "verifying", "signing",
                                   "submitting", "waiting") else None
        capture = None
        if s == "capture":
            ch = self._challenge
            capture = {
                "challenge": None if ch is None else {
                    "action": ch.action, "index": ch.index, "total": ch.total,
                    "time_limit_s": ch.time_limit_s,
                    "text_zh": ACTIONS_TEXT.get(ch.action, ("", ""))[0],
                    "text_en": ACTIONS_TEXT.get(ch.action, ("", ""))[1]},
                "hints": [{"code": c, "en": HINTS[c][0], "zh": HINTS[c][1]}
                          for c in self._hints],
                "progress": {"done": self._progress,
                             "total": ch.total if ch is not None else None},
                "attempt": self._attempt, "attempts": self.config.capture_attempts,
            }
        extendable = s in EXTENDABLE and self._deadline is not None
        return {
            "screen": s,
            "session": self.session.hex() if self.session else None,
            "deadline_ms": None if self._deadline is None else self._deadline + self._wall_offset,
            "warn_at_ms": None if self._warn_at is None else self._warn_at + self._wall_offset,
            "can_extend": bool(extendable and self._extends < self.config.max_extends),
            "extends_left": (self.config.max_extends - self._extends) if extendable else 0,
            "can_cancel": s in CANCELLABLE,
            "matter": dict(m) if m is not None else None,
            "capture": capture,
            "clerk": dict(self._clerk) if s == "clerk" and self._clerk else None,
            "error": dict(self._error) if s in ("error", "blocked") and self._error else None,
            "receipt": dict(self._receipt) if s == "receipt" and self._receipt else None,
            "alarm": self._alarm_view(),
        }


_BLOCKED_CODES = frozenset(BLOCK_CODES.values())


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj
