"""Face capture on the terminal: camera, detection, quality gate, challenge liveness, envelope.

Find one live, good face, pick the best frame and seal it for the identity service (which does
the comparison with the reference photo and its own liveness check; this is the first filter).
See docs/face-capture.md.
"""

from .config import ACTIONS, CaptureConfig
from .envelope import (
    DigestMismatchError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeKeyError,
    EnvelopeMacError,
    EnvelopePaddingError,
    EnvelopeSessionError,
    Sealed,
    check_digest,
    decode_envelope,
    encode_envelope,
    open_envelope,
    seal,
    seal_frame,
)
from .events import REASONS, ChallengeIssued, Event, Failed, Hint, Passed, Progress
from .quality import HINTS, Component, Quality
from .session import CaptureResult, CaptureSession
from .sources import Camera, EmulatedCamera, FrameSource, VideoCaptureSource

__all__ = [
    "ACTIONS", "Camera", "CaptureConfig", "CaptureResult", "CaptureSession", "ChallengeIssued",
    "Component", "DigestMismatchError", "EnvelopeError", "EnvelopeFormatError",
    "EnvelopeKeyError", "EnvelopeMacError", "EnvelopePaddingError", "EnvelopeSessionError",
    "EmulatedCamera", "Event", "Failed", "FrameSource", "HINTS",
    "Hint", "Passed", "Progress", "Quality", "REASONS", "Sealed", "check_digest",
    "decode_envelope", "encode_envelope", "open_envelope", "seal", "seal_frame",
    "VideoCaptureSource",
]
