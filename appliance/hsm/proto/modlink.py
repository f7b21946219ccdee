"""Module side of the link (protocol §2, rules 2-4): NAKs and the exactly-once duplicate cache.

The firmware's main loop feeds it the bytes read from the port and acts on what comes back:

    ("request", seq, payload)  execute the command, then call respond(seq, payload, result)
    ("send", wire)             write these bytes: a NAK, or the cached RSP of a duplicate REQ

Exactly once: the host retransmits a REQ unchanged when it saw no answer, so the module keeps
the last REQ (seq and payload) with its RSP frame; the same REQ again is answered from that
cache and is not executed again. A REQ with the same seq but another payload is a new request.
A REQ that was handed out as ("request", ...) but not yet answered (its retransmission arrived
in the same read) is dropped rather than executed twice: respond() will answer it.

Frames that fail their checks are answered with NAK {"reason": ...} (seq 0 unless known);
frames of other types than REQ are ignored, as nothing but the host talks to the module.
"""

try:
    from . import frame as _frame
    from . import mcbor
except ImportError:
    import frame as _frame
    import mcbor


def nak_frame(reason, seq=0):
    """The wire bytes of a NAK carrying {"reason": reason}."""
    return _frame.encode_frame(_frame.NAK, seq, mcbor.encode({"reason": reason}))


class ModuleLink:
    def __init__(self):
        self._decoder = _frame.FrameDecoder()
        self._cache = None  # (seq, request payload, RSP wire) of the last answered REQ
        self._pending = []  # (seq, payload) handed out as "request", not yet responded

    def feed(self, data):
        """Bytes from the host in, list of actions out; never raises."""
        actions = []
        for item in self._decoder.feed(data):
            if isinstance(item, _frame.FrameError):
                actions.append(("send", nak_frame(item.reason, item.seq)))
                continue
            if item.type != _frame.REQ:
                continue
            key = (item.seq, item.payload)
            cache = self._cache
            if cache is not None and cache[0] == item.seq and cache[1] == item.payload:
                actions.append(("send", cache[2]))
            elif key not in self._pending:
                self._pending.append(key)
                actions.append(("request", item.seq, item.payload))
        return actions

    def respond(self, seq, request_payload, response_payload):
        """Return the RSP wire for a request and cache it for retransmissions of that REQ."""
        wire = _frame.encode_frame(_frame.RSP, seq, response_payload)
        key = (seq, bytes(request_payload))
        if key in self._pending:
            self._pending.remove(key)
        self._cache = (seq, key[1], wire)
        return wire

    def wait(self, seq):
        """A WAIT frame: still working on seq (send at least every 200 ms after 100 ms)."""
        return _frame.encode_frame(_frame.WAIT, seq)

    def boot(self, info_payload):
        """A BOOT frame (seq 0); the module (re)started, so the cache and any partial input go."""
        self._decoder.reset()
        self._cache = None
        self._pending = []
        return _frame.encode_frame(_frame.BOOT, 0, info_payload)
