"""Host side of the link (protocol §2, rules 1, 3 and 5): one request at a time, sans-I/O.

The caller owns the port and the clock: it writes the bytes of request() and of every
("send", wire) event, feeds what it reads to feed(data, now), and calls poll(now) when
deadline() passes. Events:

    ("send", wire)          write these bytes (a retransmission, or resync zeros + probe)
    ("response", payload)   RSP payload of the current request; the request is done
    ("wait",)               WAIT for the current request; its timer restarted
    ("boot", payload)       the module (re)started; drop the login
    ("failed", reason)      the request is over without a response: "module_reset",
                            "timeout" (retries exhausted, probe answered: outcome unknown,
                            link up) or "link_down" (the probe failed too)

Retransmission: the current REQ is resent unchanged (same seq, same bytes, so the module's
duplicate cache answers it without executing twice) on a NAK for it (seq 0 or its own seq), on a
frame that fails its checks (ours: counts as a NAK), or when neither RSP nor WAIT came within
response_timeout; at most max_retries times. Then the host writes resync_zeros 0x00 bytes (the
module's decoder drops any partial frame) and a probe REQ {"op": "info"} with the next seq,
which is retransmitted by the same rules; its answer ends the original request with "timeout",
its failure with "link_down". The original request is never re-sent under a new seq.

While the probe is out, an RSP or WAIT for the original request's seq still counts for it
(a slow answer that finally arrived): its RSP completes the request with ("response", ...).

Initial seq (ours): random unless given, so a restarted host does not send its first REQ with
the same seq and payload as the module's cached last one (a fixed start would turn a repeated
first request into a "duplicate" answered from the cache). Frames with another seq (stale RSPs,
WAITs or NAKs of earlier requests) and frames of other types are ignored.
"""

try:
    from . import frame as _frame
    from . import mcbor
except ImportError:
    import frame as _frame
    import mcbor

PROBE_PAYLOAD = mcbor.encode({"op": "info"})

_IDLE, _REQUEST, _PROBE = 0, 1, 2


def _random_seq():
    """A random first seq, so a restarted host rarely meets the module's cached last REQ."""
    try:
        import os

        return os.urandom(1)[0]
    except (ImportError, AttributeError, OSError, NotImplementedError):
        return 0  # a port without an RNG: start at 1, as a fresh module expects nothing


class HostLink:
    def __init__(self, response_timeout=0.5, max_retries=3, resync_zeros=16, first_seq=None):
        """first_seq: seq of the first request (0..255); random when None."""
        self.response_timeout = response_timeout
        self.max_retries = max_retries
        self.resync_zeros = resync_zeros
        if first_seq is None:
            first_seq = _random_seq()
        self._seq = (first_seq - 1) & 0xFF  # seq of the previous request
        self._decoder = _frame.FrameDecoder()
        self._state = _IDLE
        self._orig_seq = 0  # seq of the caller's request
        self._wire = b""  # the REQ being (re)sent: the request, or the probe
        self._wire_seq = 0
        self._retries = 0
        self._deadline = None
        self.sends = 0  # times the current (or last) request's REQ was written

    @property
    def busy(self):
        return self._state != _IDLE

    @property
    def seq(self):
        """Seq of the last REQ sent (request or probe)."""
        return self._seq

    def deadline(self):
        """When poll() must be called next, or None when no request is running."""
        return self._deadline if self._state != _IDLE else None

    def request(self, payload, now):
        """Start a request; return the REQ wire to write. RuntimeError if one is running."""
        if self._state != _IDLE:
            raise RuntimeError("a request is already running")
        seq = (self._seq + 1) & 0xFF
        wire = _frame.encode_frame(_frame.REQ, seq, payload)  # ValueError if too long
        self._seq = seq
        self._orig_seq = seq
        self._start(_REQUEST, seq, wire, now)
        self.sends = 1
        return wire

    def feed(self, data, now):
        """Bytes from the module in, list of events out; never raises."""
        events = []
        for item in self._decoder.feed(data):
            if isinstance(item, _frame.FrameError):
                if self._state != _IDLE:
                    self._retry(now, events)  # ours: a damaged frame counts as a NAK
                continue
            ftype = item.type
            if ftype == _frame.BOOT:
                events.append(("boot", item.payload))
                if self._state != _IDLE:
                    self._finish(events, ("failed", "module_reset"))
            elif self._state == _IDLE:
                continue
            elif ftype == _frame.RSP:
                if item.seq == self._orig_seq:
                    self._finish(events, ("response", item.payload))
                elif item.seq == self._wire_seq:  # the probe's answer: the link is up
                    self._finish(events, ("failed", "timeout"))
            elif ftype == _frame.WAIT:
                if item.seq == self._orig_seq or item.seq == self._wire_seq:
                    self._deadline = now + self.response_timeout
                    events.append(("wait",))
            elif ftype == _frame.NAK:
                if item.seq == 0 or item.seq == self._wire_seq:
                    self._retry(now, events)
        return events

    def abort(self):
        """Forget the request in flight and any partial frame (the port was lost or closed).

        No event is produced: the caller already knows the request failed.
        """
        self._state = _IDLE
        self._deadline = None
        self._wire = b""
        self._decoder.reset()

    def poll(self, now):
        """Handle an expired response timer; returns events (empty before the deadline)."""
        events = []
        if self._state != _IDLE and now >= self._deadline:
            self._retry(now, events)
        return events

    # -----------------------------------------------------------------------------------------

    def _start(self, state, seq, wire, now):
        self._state = state
        self._wire = wire
        self._wire_seq = seq
        self._retries = 0
        self._deadline = now + self.response_timeout

    def _finish(self, events, event):
        self._state = _IDLE
        self._deadline = None
        self._wire = b""
        events.append(event)

    def _retry(self, now, events):
        if self._retries < self.max_retries:
            self._retries += 1
            self._deadline = now + self.response_timeout
            if self._state == _REQUEST:
                self.sends += 1
            events.append(("send", self._wire))
        elif self._state == _REQUEST:
            seq = (self._seq + 1) & 0xFF
            self._seq = seq
            wire = _frame.encode_frame(_frame.REQ, seq, PROBE_PAYLOAD)
            self._start(_PROBE, seq, wire, now)
            events.append(("send", b"\x00" * self.resync_zeros + wire))
        else:
            self._finish(events, ("failed", "link_down"))
