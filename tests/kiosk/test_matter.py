"""The matter QR (appliance.kiosk.matter): format rules one by one, fuzzing, image round trip."""

from __future__ import annotations

import base64
import dataclasses

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.gm import sm3
from appliance.kiosk.matter import (
    MAX_PAYLOAD,
    PREFIX,
    License,
    Matter,
    MatterError,
    QrReader,
    decode_qr,
    encode_qr,
    read_qr,
    render_qr,
)

NOW = 1_790_000_000_000


def sample(**changes: object) -> Matter:
    fields = {
        "matter": "企业开办 business registration",
        "agency": "市场监督管理局 market supervision",
        "office": "朝阳区政务服务中心 Chaoyang service hall, window 12",
        "licenses": (License(sm3.digest(b"ID card of ZHANG SAN"), "居民身份证 ID card"),
                     License(sm3.digest(b"lease contract"), "租赁合同 lease")),
        "subject": sm3.digest(b"ZHANG SAN"),
        "not_after": NOW + 3_600_000,
    }
    fields.update(changes)
    return Matter(**fields)  # type: ignore[arg-type]


def qr_of(obj: object) -> str:
    """A QR text around any CBOR object (to build payloads encode_qr would refuse)."""
    return PREFIX + base64.urlsafe_b64encode(wire.encode(obj)).rstrip(b"=").decode()


def reason(text: object) -> str:
    with pytest.raises(MatterError) as e:
        decode_qr(text)
    return e.value.reason


def test_round_trip_is_exact_and_deterministic() -> None:
    m = sample()
    text = encode_qr(m)
    assert text.startswith(PREFIX) and "=" not in text and len(text) <= MAX_PAYLOAD
    assert decode_qr(text) == m
    assert encode_qr(decode_qr(text)) == text
    assert decode_qr(f"  {text}\r\n") == m  # a clerk's paste with whitespace around it
    assert m.display()["licenses"][0] == {"id": m.licenses[0].id.hex(),
                                          "name": "居民身份证 ID card"}
    assert "subject" not in m.display()


def test_expiry() -> None:
    m = sample(not_after=NOW)
    assert not m.expired(NOW) and m.expired(NOW + 1)  # not_after itself is still valid


def test_size_is_checked_before_decoding() -> None:
    # 2049 characters that would also fail base64: the size check comes first
    assert reason(PREFIX + "!" * (MAX_PAYLOAD - len(PREFIX) + 1)) == "oversize"
    assert reason(PREFIX + "!" * (MAX_PAYLOAD - len(PREFIX))) == "base64"
    # encode_qr refuses a matter whose text would not fit: 16 licenses with long names
    big = sample(licenses=tuple(License(sm3.digest(bytes([i])), "名" * 21) for i in range(16)))
    with pytest.raises(MatterError) as e:
        encode_qr(big)
    assert e.value.reason == "oversize"


def test_each_format_rule() -> None:
    good = sample().to_obj()
    text = encode_qr(sample())
    body = text[len(PREFIX):]
    assert reason(b"GOVAUTH1:") == "type"
    assert reason("GOVAUTH2:" + body) == "prefix"
    assert reason(body) == "prefix"
    assert reason(text + "=") == "base64"  # padding
    assert reason(text[:-1] + "+") == "base64"  # base64 (not url) alphabet
    assert reason(text + "A" * ((1 - len(body)) % 4 or 4)) == "base64"  # length 4k+1
    # non-zero trailing bits: another spelling of the same bytes
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    raw_len = len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if raw_len % 3:
        i = last.index(text[-1])
        assert reason(text[:-1] + last[i + 1]) == "base64"
    # CBOR that is not canonical (a map with keys in the wrong order)
    noncanon = b"\xa2\x61b\x01\x61a\x02"
    assert reason(PREFIX + base64.urlsafe_b64encode(noncanon).rstrip(b"=").decode()) == "cbor"
    assert reason(qr_of([1, 2])) == "fields"
    assert reason(qr_of({**good, "extra": 1})) == "fields"
    assert reason(qr_of({k: v for k, v in good.items() if k != "office"})) == "fields"
    assert reason(qr_of({**good, "licenses": []})) == "licenses"
    assert reason(qr_of({**good, "licenses": [good["licenses"][0]] * 17})) == "licenses"
    assert reason(qr_of({**good, "licenses": [good["licenses"][0]] * 2})) == "duplicate_license"
    assert reason(qr_of({**good, "licenses": [{"id": bytes(32)}]})) == "licenses"
    assert reason(qr_of({**good, "licenses": [{"id": bytes(31), "name": "x"}]})) == "field"
    assert reason(qr_of({**good, "licenses": [{"id": bytes(32), "name": ""}]})) == "field"
    assert reason(qr_of({**good, "licenses": [{"id": bytes(32), "name": "x" * 65}]})) == "field"
    assert reason(qr_of({**good, "subject": bytes(33)})) == "field"
    assert reason(qr_of({**good, "subject": "ab" * 16})) == "field"
    assert reason(qr_of({**good, "matter": "x" * 65})) == "field"
    assert reason(qr_of({**good, "matter": "两" * 22})) == "field"  # 66 bytes
    assert decode_qr(qr_of({**good, "matter": "两" * 21})).matter == "两" * 21  # 63 bytes
    assert reason(qr_of({**good, "agency": ""})) == "field"
    assert reason(qr_of({**good, "office": "o" * 129})) == "field"
    assert reason(qr_of({**good, "office": "window\n12"})) == "field"  # control character
    assert reason(qr_of({**good, "office": "right\u202eto left"})) == "field"  # bidi override
    assert reason(qr_of({**good, "not_after": -1})) == "field"
    assert reason(qr_of({**good, "not_after": True})) == "field"
    assert reason(qr_of({**good, "not_after": "soon"})) == "field"


def test_the_dataclass_refuses_what_the_decoder_refuses() -> None:
    with pytest.raises(MatterError):
        sample(licenses=())
    with pytest.raises(MatterError):
        sample(subject=b"short")
    with pytest.raises(MatterError):
        sample(not_after=-5)
    with pytest.raises(MatterError):
        dataclasses.replace(sample(), matter="")


# -- fuzzing: only MatterError, never anything else ------------------------------------------

def only_matter_errors(text: object) -> None:
    try:
        m = decode_qr(text)
    except MatterError:
        return
    assert isinstance(m, Matter)
    assert decode_qr(encode_qr(m)) == m


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.text(max_size=300).map(lambda s: PREFIX + s),
                 st.binary(max_size=300).map(
                     lambda b: PREFIX + base64.urlsafe_b64encode(b).rstrip(b"=").decode())))
def test_fuzz_text(text: str) -> None:
    only_matter_errors(text)


cbor_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64 - 1),
                      st.binary(max_size=40), st.text(max_size=70))
cbor_tree = st.recursive(cbor_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.text("abcdefgh_", max_size=10), inner, max_size=7)),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional={
    "matter": cbor_tree, "agency": cbor_tree, "office": cbor_tree, "licenses": cbor_tree,
    "subject": cbor_tree, "not_after": cbor_tree, "other": cbor_tree}))
def test_fuzz_structures(obj: dict) -> None:
    only_matter_errors(qr_of(obj))


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ é"),
    st.booleans())
def test_fuzz_mutations(pos: int, char: str, cut: bool) -> None:
    text = encode_qr(sample())
    pos %= len(text)
    mutated = text[:pos] if cut else text[:pos] + char + text[pos + 1:]
    only_matter_errors(mutated)


names = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")),
                min_size=1, max_size=16)


@settings(max_examples=100)
@given(names, names, names, st.lists(st.tuples(st.binary(min_size=32, max_size=32), names),
                                     min_size=1, max_size=4, unique_by=lambda t: t[0]),
       st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1))
def test_valid_matters_round_trip(matter: str, agency: str, office: str, lics: list,
                                  subject: bytes, not_after: int) -> None:
    m = Matter(matter, agency, office, tuple(License(i, n) for i, n in lics), subject, not_after)
    assert decode_qr(encode_qr(m)) == m


# -- the image --------------------------------------------------------------------------------

def test_render_and_read_back() -> None:
    text = encode_qr(sample())
    image = render_qr(text)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert read_qr(image) == text
    assert decode_qr(read_qr(image)) == sample()


def test_read_from_a_camera_like_frame() -> None:
    """The code held up to the camera (~4 px per module, as at arm's length at 640x480):
    in a colour frame, turned a little, in perspective, blurred and noisy."""
    text = encode_qr(sample())
    code = render_qr(text, module_px=4)
    h, w = code.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[130, 30], [520, 45], [510, 450], [120, 440]])
    frame = np.full((480, 640, 3), 90, np.uint8)
    warped = cv2.warpPerspective(cv2.cvtColor(code, cv2.COLOR_GRAY2BGR),
                                 cv2.getPerspectiveTransform(src, dst), (640, 480),
                                 borderValue=(0, 0, 0))
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8),
                               cv2.getPerspectiveTransform(src, dst), (640, 480))
    frame[mask > 0] = warped[mask > 0]
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)
    rng = np.random.default_rng(1)
    frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    reader = QrReader()
    assert reader.read(frame) == text
    assert reader.read(np.full((480, 640, 3), 90, np.uint8)) is None  # nothing there


def test_a_dense_code_is_read() -> None:
    """Near the size limit (16 licenses): the dense code is still read back."""
    m = sample(licenses=tuple(License(sm3.digest(bytes([i])), f"licence {i}")
                              for i in range(16)))
    text = encode_qr(m)
    assert len(text) > 1200
    assert decode_qr(read_qr(cv2.cvtColor(render_qr(text), cv2.COLOR_GRAY2BGR))) == m
