"""The crypto module's firmware entry point: the protocol on a byte stream (stdin/stdout).

    python|micropython main.py --store FILE [--serial S] [--seed N] [--cut-write P]
                               [--kat-fail] [--slow-ms N] [--crypto auto|openssl|pure]
                               [--presence FILE]

* ``--store FILE``   the key store (A/B record file, created when missing).
* ``--serial S``     the serial number reported in BOOT and ``info``.
* ``--seed N``       seeds the fault-injection PRNG (xorshift32; never used for anything secret:
                     keys, nonces, salts and ``random`` output come from ``os.urandom``).
* ``--cut-write P``  each key-store write is cut (simulated power loss) with probability P at
                     a random byte; the process then exits with status 75 (EX_TEMPFAIL) and
                     the emulator restarts it.
* ``--kat-fail``     injected fault: the power-up self test fails (crypto commands HARDFAIL).
* ``--slow-ms N``    every command first spends N ms sleeping in small steps (to exercise WAIT).
* ``--crypto``       ``auto`` (default): OpenSSL through ``appliance.gm`` when it imports
                     (CPython with the repo root importable), else the pure-Python code;
                     ``openssl``/``pure`` force one. MicroPython always runs the pure code.
* ``--presence FILE`` the module's reset button: held while FILE exists (the emulator's
                     rig presses it by creating the file; an MCU reads a GPIO instead).

Start-up sends BOOT; then each REQ runs through ``ModuleLink`` and ``Module.handle``. While a
request runs, ``progress()`` (called by the module at checkpoints) sends WAIT for its seq: the
first after 100 ms, then every 150 ms (the protocol asks for at least every 200 ms). After a
``reset`` request the RSP goes out first, then the module restarts (new ``Module``: contexts
and session gone, KATs again, boot_count + 1) and sends BOOT. EOF on stdin exits with status 0.

I/O: CPython uses ``os.read(0, 4096)``/``os.write(1, ...)``. The MicroPython unix port has no
``os.read`` and its ``stdin.buffer.read(n)`` blocks until n bytes arrived, so it waits with
``select.poll`` and then reads single bytes for as long as poll reports more. When stdin is a
terminal (the emulator's pty) it is put in raw mode (no echo, no CR/LF mapping), once.
"""

import os
import sys
import time

_MICROPYTHON = sys.implementation.name == "micropython"

if _MICROPYTHON:
    import crypto
    import keystore
    import mcbor
    import modlink
    import module
else:
    try:
        from appliance.hsm.firmware import crypto, keystore, module
        from appliance.hsm.proto import mcbor, modlink
    except ImportError:  # CPython with the three folders on the path instead of the repo root
        import crypto
        import keystore
        import mcbor
        import modlink
        import module

EXIT_POWER_CUT = 75
WAIT_FIRST_MS = 100
WAIT_EVERY_MS = 150
READ_MAX = 4096

USAGE = ("usage: main.py --store FILE [--serial S] [--seed N] [--cut-write P] [--kat-fail] "
         "[--slow-ms N] [--crypto auto|openssl|pure] [--presence FILE]")


class UsageError(Exception):
    pass


def parse_args(argv):
    """argv (without the program name) -> dict of options; UsageError when wrong."""
    opts = {"store": None, "serial": "GMCM-EMU-000001", "seed": 1, "cut_write": 0.0,
            "kat_fail": False, "slow_ms": 0, "crypto": "auto", "presence": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--kat-fail":
            opts["kat_fail"] = True
            i += 1
            continue
        if arg not in ("--store", "--serial", "--seed", "--cut-write", "--slow-ms",
                       "--crypto", "--presence"):
            raise UsageError("unknown option " + arg)
        if i + 1 >= len(argv):
            raise UsageError(arg + " needs a value")
        value = argv[i + 1]
        i += 2
        try:
            if arg == "--store":
                opts["store"] = value
            elif arg == "--serial":
                opts["serial"] = value
            elif arg == "--seed":
                opts["seed"] = int(value)
            elif arg == "--cut-write":
                opts["cut_write"] = float(value)
            elif arg == "--slow-ms":
                opts["slow_ms"] = int(value)
            elif arg == "--presence":
                opts["presence"] = value
            else:
                if value not in ("auto", "openssl", "pure"):
                    raise ValueError(value)
                opts["crypto"] = value
        except ValueError:
            raise UsageError("bad value for " + arg) from None
    if opts["store"] is None:
        raise UsageError("--store is required")
    if not 0.0 <= opts["cut_write"] <= 1.0 or opts["slow_ms"] < 0:
        raise UsageError("--cut-write must be in 0..1 and --slow-ms >= 0")
    return opts


class XorShift32:
    """A tiny deterministic PRNG for fault injection only (never for keys or nonces)."""

    def __init__(self, seed):
        # spread small seeds (1, 2, 3...) over the state, then warm up: xorshift's first
        # outputs from a sparse state are small and alike
        self.x = ((seed * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF) or 0x9E3779B9
        for _ in range(8):
            self.next()

    def next(self):
        x = self.x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.x = x
        return x


def make_cut(probability, rng):
    """The KeyStore cut hook: with ``probability`` cut the n-byte write at a random byte."""
    if probability <= 0:
        return None
    threshold = int(probability * 0xFFFFFFFF)

    def cut(n):
        if rng.next() <= threshold:
            return rng.next() % n
        return None

    return cut


def _clock():
    """A monotonic millisecond clock that does not wrap (ticks_ms does on MicroPython)."""
    if not _MICROPYTHON:
        def now_ms():
            return int(time.monotonic() * 1000)

        return now_ms

    state = [time.ticks_ms(), 0]

    def now_ms():
        t = time.ticks_ms()
        state[1] += time.ticks_diff(t, state[0])
        state[0] = t
        return state[1]

    return now_ms


def make_presence(path):
    """The reset button of the emulated module: held while ``path`` exists."""
    if path is None:
        return None

    def held():
        try:
            os.stat(path)
            return True
        except OSError:
            return False

    return held


def _sleep_ms(ms):
    if _MICROPYTHON:
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class StdIO:
    """Raw bytes on stdin/stdout for both interpreters."""

    def __init__(self):
        if _MICROPYTHON:
            import select

            self._in = sys.stdin.buffer
            self._out = sys.stdout.buffer
            self._poll = select.poll()
            self._poll.register(self._in, select.POLLIN)
            self._byte = bytearray(1)
            try:
                import termios

                termios.setraw(0)
            except Exception:  # not a terminal
                pass
        else:
            try:
                if os.isatty(0):
                    import tty

                    tty.setraw(0)
            except Exception:
                pass

    def read(self):
        """Some bytes (blocking until at least one); b"" at end of input."""
        if not _MICROPYTHON:
            try:
                return os.read(0, READ_MAX)
            except OSError:  # EIO: the pty's other side went away
                return b""
        out = bytearray()
        poll = self._poll
        try:
            poll.poll(-1)
            while len(out) < READ_MAX:
                n = self._in.readinto(self._byte)
                if not n:
                    break
                out.append(self._byte[0])
                if not poll.poll(0):
                    break
        except OSError:
            pass
        return bytes(out)

    def write(self, data):
        if not _MICROPYTHON:
            view = memoryview(data)
            while len(view):
                n = os.write(1, view)
                view = view[n:]
            return
        self._out.write(data)
        self._out.flush()


class Waiter:
    """Sends WAIT frames for the request in progress from the module's progress() calls."""

    def __init__(self, link, io, now_ms):
        self.link, self.io, self.now_ms = link, io, now_ms
        self.seq = None
        self.start = 0
        self.last = None

    def begin(self, seq):
        self.seq, self.start, self.last = seq, self.now_ms(), None

    def end(self):
        self.seq = None

    def progress(self):
        if self.seq is None:
            return
        now = self.now_ms()
        if self.last is None:
            due = now - self.start >= WAIT_FIRST_MS
        else:
            due = now - self.last >= WAIT_EVERY_MS
        if due:
            self.io.write(self.link.wait(self.seq))
            self.last = now


def serve(opts, io):
    """The main loop; returns the exit status."""
    rng = XorShift32(opts["seed"])
    store = keystore.KeyStore(opts["store"], make_cut(opts["cut_write"], rng))
    choice = opts["crypto"]
    backend = crypto.load(None if choice == "auto" else choice == "openssl")
    link = modlink.ModuleLink()
    now_ms = _clock()
    waiter = Waiter(link, io, now_ms)
    presence = make_presence(opts["presence"])

    def start():
        mod = module.Module(store, backend, os.urandom, now_ms, waiter.progress,
                            serial=opts["serial"], kat_fail=opts["kat_fail"],
                            slow_ms=opts["slow_ms"], sleep_ms=_sleep_ms, presence=presence)
        io.write(link.boot(mcbor.encode(mod.boot())))
        return mod

    try:
        mod = start()
        while True:
            data = io.read()
            if not data:
                return 0
            for action in link.feed(data):
                if action[0] == "send":
                    io.write(action[1])
                    continue
                seq, payload = action[1], action[2]
                waiter.begin(seq)
                try:
                    rsp = mod.handle(payload)
                finally:
                    waiter.end()
                io.write(link.respond(seq, payload, rsp))
                if mod.reset_requested:
                    mod = start()  # what was still queued belonged to the old run: dropped
                    break
    except keystore.PowerCut:
        sys.stderr.write("gmcm-fw: simulated power cut during a key-store write\n")
        return EXIT_POWER_CUT


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write("gmcm-fw: %s\n%s\n" % (exc.args[0], USAGE))
        return 2
    return serve(opts, StdIO())


if __name__ == "__main__":
    sys.exit(main())
