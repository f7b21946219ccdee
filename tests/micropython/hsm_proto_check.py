"""The sans-I/O protocol core (appliance/hsm/proto) on MicroPython (also runs on CPython).

Usage: micropython hsm_proto_check.py <proto dir> <gm pure dir> <cases.json>

The proto modules are imported flatly (their folder on sys.path), as the firmware freezes them.
cases.json holds CBOR inputs prepared by the pytest side with appliance.wire (cbor2): "valid"
(canonical encodings) and "invalid" (rejected by wire). Prints one ``name value`` line per
result (hex for bytes); tests/hsm/test_proto_micropython.py compares them with wire and with
the same script run by CPython. Nothing is asserted here: a mismatch must show up as a wrong
value, a crash as a missing line.
"""
# ruff: noqa: UP031  (MicroPython-portable: %-formatting, no f-strings)

import binascii
import json
import sys

sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[1])

import cobs  # noqa: E402
import codes  # noqa: E402
import frame  # noqa: E402
import hostlink  # noqa: E402
import mcbor  # noqa: E402
import modlink  # noqa: E402


def h(b):
    return binascii.hexlify(b).decode()


def show(x):
    """Deterministic text for events, actions and decoded values (no floats, sorted keys)."""
    if isinstance(x, (bytes, bytearray)):
        return "x" + h(x)
    if isinstance(x, (tuple, list)):
        return "(" + ",".join([show(i) for i in x]) + ")"
    if isinstance(x, dict):
        return "{" + ",".join([k + ":" + show(x[k]) for k in sorted(x)]) + "}"
    if isinstance(x, frame.Frame):
        return "F%d/%d/%s" % (x.type, x.seq, h(x.payload))
    if isinstance(x, frame.FrameError):
        return "E%s/%d" % (x.reason, x.seq)
    return str(x)


def out(name, value):
    print(name, value if isinstance(value, str) else show(value))


class Lcg:
    def __init__(self, seed):
        self.x = seed

    def next(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n

    def data(self, n, zeros=True):
        return bytes([self.next(256 if zeros else 255) + (0 if zeros else 1) for _ in range(n)])


def error_name(fn, *args):
    try:
        fn(*args)
        return "accepted"
    except Exception as exc:  # the class name is the result
        return type(exc).__name__


out("impl", sys.implementation.name)
rng = Lcg(12345)

# --- cobs ---------------------------------------------------------------------------------------
for i, raw in enumerate([b"", b"\x00", b"\x00\x00", b"\x11\x22\x00\x33", b"\x11\x00\x00\x00",
                         bytes(range(1, 255)), bytes(range(1, 256)),
                         bytes(range(3, 256)) + b"\x00\x01"]):
    out("cobs.enc.%d" % i, cobs.encode(raw))
for n in (0, 1, 253, 254, 255, 508, 509, 1000):
    for zeros in (True, False):
        raw = rng.data(n, zeros)
        enc = cobs.encode(raw)
        ok = cobs.decode(enc) == raw and b"\x00" not in enc
        out("cobs.rt.%d.%d" % (n, zeros), "%d %d %08x" % (ok, len(enc), frame.crc32(enc)))
out("cobs.short_form", cobs.decode(b"\xff" + bytes(range(1, 255))) == bytes(range(1, 255)))
for i, bad in enumerate([b"", b"\x00", b"\x02\x11\x00\x01", b"\x05\x11\x22", b"\xff\x01"]):
    out("cobs.bad.%d" % i, error_name(cobs.decode, bad))

# --- crc32: binascii (or the fallback) and the table ---------------------------------------------
out("crc.check", "%08x %08x" % (frame.crc32(b"123456789"), frame.crc32_py(b"123456789")))
for n in (0, 1, 100, 3000):
    data = rng.data(n)
    out("crc.%d" % n, "%08x %08x %08x" % (frame.crc32(data), frame.crc32_py(data),
                                          frame.crc32_py(data, 0x12345678)))

# --- codes --------------------------------------------------------------------------------------
out("codes", "%d %x %x %s %x" % (len(codes.CODES), codes.PIN_LOCKED, codes.PIN_DEFAULT,
                                 codes.NAMES[codes.INARGERR], codes.CODES["PARDENY"]))

# --- mcbor --------------------------------------------------------------------------------------
with open(sys.argv[3]) as f:
    cases = json.load(f)
for i, hx in enumerate(cases["valid"]):
    data = binascii.unhexlify(hx)
    try:
        value = mcbor.decode(data)
        out("cbor.valid.%d" % i, "%s %s" % (h(mcbor.encode(value)), show(value)))
    except mcbor.CborError:
        out("cbor.valid.%d" % i, "CborError")
for i, hx in enumerate(cases["invalid"]):
    out("cbor.invalid.%d" % i, error_name(mcbor.decode, binascii.unhexlify(hx)))
objects = [
    {"op": "sign", "slot": 3, "message": b"abc", "id": bytearray(b"1234567812345678")},
    [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615],
    [-1, -24, -25, -256, -257, -4294967296, -4294967297, -18446744073709551616],
    {"b": True, "a": False, "aa": None, "": [], "\u4e2d": {}},
    "\u00e9\u4e2d\U0001f600",
    (memoryview(b"mv"),),
]
for i, obj in enumerate(objects):
    out("cbor.enc.%d" % i, mcbor.encode(obj))
for i, bad in enumerate([18446744073709551616, -18446744073709551617, {"k" * 24: 1}, {1: 2},
                         1.5, chr(0xD800), {chr(0xDC00): 1}]):
    out("cbor.enc.bad.%d" % i, error_name(mcbor.encode, bad))
deep = []
for _ in range(16):
    deep = [deep]
out("cbor.enc.deep", error_name(mcbor.encode, deep))
out("cbor.dec.deep", error_name(mcbor.decode, b"\x81" * 16 + b"\x80"))
out("cbor.dec.huge", error_name(mcbor.decode, b"\x5b" + b"\xff" * 8))
out("cbor.dec.size", error_name(mcbor.decode, b"\x59\x10\x00" + bytes(4096)))
out("cbor.dec.types", show([type(mcbor.decode(bytearray(b"\x42ab"))) is bytes,
                            mcbor.decode(memoryview(b"\x83\xf5\xf4\xf6"))]))

# --- frames -------------------------------------------------------------------------------------
wires = [frame.encode_frame(t, s, p) for t, s, p in
         [(1, 0, b""), (2, 255, b"\xa1bok\xf5"), (4, 0, mcbor.encode({"reason": "crc"})),
          (5, 0, bytes(300)), (2, 7, rng.data(4096, False))]]
for i, w in enumerate(wires[:4]):
    out("frame.enc.%d" % i, w)
out("frame.max", "%d %08x" % (len(wires[4]), frame.crc32(wires[4])))
stream = (b"\x00\x00" + wires[0] + b"\x17garbage" + wires[1] + wires[2] + b"\x05\x11\x00"
          + b"\x01" * (frame.MAX_ENCODED + 5) + b"\x00" + wires[3] + wires[4])
whole = frame.FrameDecoder().feed(stream)
out("frame.stream", [show(i)[:40] for i in whole])
dec = frame.FrameDecoder()
single = []
for i in range(len(stream)):
    single += dec.feed(stream[i:i + 1])
out("frame.bytewise", [show(i) for i in single] == [show(i) for i in whole])
body = b"\x02\x01\x2a\x00\x00"
out("frame.version", frame.FrameDecoder().feed(
    cobs.encode(body + frame.crc32(body).to_bytes(4, "big")) + b"\x00"))
for i in range(6):
    out("frame.fuzz.%d" % i, [show(x)[:12] for x in frame.FrameDecoder().feed(rng.data(60))])

# --- modlink ------------------------------------------------------------------------------------
sign = mcbor.encode({"op": "sign", "slot": 1, "message": b"m"})
ok = mcbor.encode({"ok": True})
link = modlink.ModuleLink()
req7 = frame.encode_frame(frame.REQ, 7, sign)
out("mod.req", link.feed(req7 + req7))
rsp7 = link.respond(7, sign, ok)
out("mod.rsp", rsp7)
out("mod.dup", link.feed(req7) == [("send", rsp7)])
out("mod.other_payload", link.feed(frame.encode_frame(frame.REQ, 7, ok)))
out("mod.nak", link.feed(b"\x05\x11\x00" + b"\x01" * (frame.MAX_ENCODED + 1) + b"\x00"))
out("mod.wait", link.wait(9))
out("mod.boot", link.boot(mcbor.encode({"firmware": "1", "serial": "S", "boot_count": 1})))
out("mod.after_boot", link.feed(req7))

# --- hostlink -----------------------------------------------------------------------------------
host = hostlink.HostLink(first_seq=254)
w1 = host.request(sign, 0.0)
out("host.req", w1)
out("host.busy", "%d %d" % (host.busy, host.deadline() * 1000))
out("host.nak", host.feed(frame.encode_frame(frame.NAK, 0, b""), 0.1) == [("send", w1)])
out("host.wait", host.feed(frame.encode_frame(frame.WAIT, 254, b""), 0.2))
out("host.poll_early", host.poll(0.69))
out("host.poll", host.poll(0.7) == [("send", w1)])
out("host.corrupt", host.feed(b"\x05junk\x00", 0.8) == [("send", w1)])
out("host.probe", host.poll(1.3))
out("host.stale", host.feed(frame.encode_frame(frame.RSP, 253, ok), 1.4))
out("host.probe_ok", host.feed(frame.encode_frame(frame.RSP, 255, ok), 1.5))
w2 = host.request(sign, 2.0)
out("host.seq_wrap", w2)
out("host.boot", host.feed(frame.encode_frame(frame.BOOT, 0, b"\xa0"), 2.1))
host.request(sign, 3.0)
events = []
for t in range(1, 9):
    events += host.poll(3.0 + t * 0.5)
out("host.link_down", [e[0] if e[0] == "send" else e for e in events])
out("host.random_seq", 0 <= hostlink.HostLink().seq <= 255)


# --- a small lossy end-to-end run ---------------------------------------------------------------
def lossy(data, rng):
    r = rng.next(10)
    if r == 0:
        return b""
    if r == 1 and data:
        data = bytearray(data)
        data[rng.next(len(data))] ^= 1 << rng.next(8)
        return bytes(data)
    return data


host = hostlink.HostLink(first_seq=100)
mod = modlink.ModuleLink()
executed = {}
results = []
now = 0.0
for n in range(30):
    pending = [lossy(host.request(mcbor.encode({"op": "echo", "n": n}), now), rng)]
    done = None
    for _step in range(200):
        to_host = b""
        for data in pending:
            for action in mod.feed(data):
                if action[0] == "send":
                    to_host += lossy(action[1], rng)
                else:
                    req = mcbor.decode(action[2])
                    if req["op"] == "echo":
                        executed[req["n"]] = executed.get(req["n"], 0) + 1
                    to_host += lossy(mod.respond(action[1], action[2], mcbor.encode(req)), rng)
        pending = []
        now += 0.1
        events = host.feed(to_host, now) + host.poll(now)
        for event in events:
            if event[0] == "send":
                pending.append(lossy(event[1], rng))
            elif event[0] in ("response", "failed"):
                done = event
        if done:
            break
    results.append(show(done))
out("e2e.results", results)
out("e2e.max_executions", max(executed.values()))
out("done", "1")
