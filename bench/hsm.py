"""Crypto-module link benchmark: the driver and the firmware over the emulator's paced pty.

For each runtime (CPython with fast crypto, real MicroPython) and baud rate (115200, 921600):

- sign round trips per second, as a fraction of what the wire allows (the REQ and RSP bytes
  at 10 bits per byte); the driver's CPU time per command; and the wall time per command
  beyond wire time and module compute (driver plus the emulator's pty/pipe bridge);
- SM3 streaming throughput (hash_update with 3 KiB chunks) as a fraction of the wire's byte
  rate. Goals: >= 0.9 for streaming, <= 1 ms driver overhead per command.

Baselines, measured in the same run: the wire's capacity at that baud, and the module's own
compute time for the same request timed inside its interpreter (bench/_mp_module_timing.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report  # noqa: E402

from appliance import wire  # noqa: E402
from appliance.hsm.client import MAX_CHUNK, Client  # noqa: E402
from appliance.hsm.proto import frame  # noqa: E402
from hil.hsm_emulator import (  # noqa: E402
    FIRMWARE_DIR,
    PROTO_DIR,
    PURE_DIR,
    HsmEmulator,
    find_micropython,
    provision_store,
)

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
BAUDS = (115200, 921600)


def wire_bytes(request: dict, response: dict) -> int:
    """Bytes on the wire for one round trip: both frames, COBS and delimiters included."""
    return (len(frame.encode_frame(frame.REQ, 1, wire.encode(request)))
            + len(frame.encode_frame(frame.RSP, 1, wire.encode(response))))


def module_compute(runtime: str, tmp: Path) -> tuple[float, float]:
    """(sign, 3 KiB hash_update) seconds per request inside the firmware's interpreter."""
    exe = sys.executable if runtime == "cpython" else find_micropython()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([exe, str(Path(__file__).parent / "_mp_module_timing.py"),
                          str(FIRMWARE_DIR), str(PROTO_DIR), str(PURE_DIR),
                          str(tmp / f"timing-{runtime}.bin"), "50"],
                         capture_output=True, text=True, check=True, timeout=600, env=env).stdout
    values = dict(line.split() for line in out.splitlines())
    return int(values["sign_us"]) / 1e6, int(values["sm3_update_us"]) / 1e6


def timed(fn, seconds: float) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) per call of ``fn``."""
    fn()
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def bench(runtime: str, baud: int, tmp: Path, compute: tuple[float, float]) -> None:
    store = tmp / f"store-{runtime}-{baud}.bin"
    pin = provision_store(store)
    with HsmEmulator(tmp / f"gm-{runtime}-{baud}", store, runtime=runtime, baud=baud) as emu, \
            Client(emu.port, baudrate=baud, pin=pin, response_timeout=2.0) as client:
        client.generate_key(0, overwrite=True)
        message = b"m" * 32
        sample = client.sign(0, message)
        per_sign, driver_cpu = timed(lambda: client.sign(0, message), SECONDS)
        bits = 10 / baud
        sign_wire = wire_bytes({"op": "sign", "slot": 0, "message": message,
                                "session": bytes(16)},
                               {"ok": True, "signature": sample.signature,
                                "counter": sample.counter}) * bits
        label = f"{runtime} @ {baud}"
        report(f"sign/s {label}", 1 / per_sign, "op/s", "wire limit (REQ+RSP bytes)",
               1 / sign_wire)
        # The driver's own work per command is its CPU time (it sleeps in select otherwise);
        # the rest of the time beyond wire and compute is the emulator's pty/pipe bridge.
        report(f"driver CPU ms per sign {label}", driver_cpu * 1e3, "ms",
               "goal (1 ms)", 1.0)
        overhead = per_sign - sign_wire - compute[0]
        report(f"sign ms beyond wire+compute {label}", overhead * 1e3, "ms",
               "goal (1 ms)", 1.0)
        size = 64 * 1024 if baud < 500_000 else 256 * 1024
        data = os.urandom(size)
        start = time.perf_counter()
        client.sm3(data)
        throughput = size / (time.perf_counter() - start)
        report(f"sm3 stream B/s {label}", throughput, "B/s", "wire byte rate (baud/10)",
               baud / 10, goal=0.9)
        per_chunk_wire = wire_bytes({"op": "hash_update", "context": 1, "data": data[:MAX_CHUNK],
                                     "session": bytes(16)}, {"ok": True}) * bits
        report(f"  of which framing-limited {label}", MAX_CHUNK / per_chunk_wire, "B/s",
               "wire byte rate (baud/10)", baud / 10)
        report(f"  module compute per 3 KiB {label}", compute[1] * 1e3, "ms",
               "wire time per 3 KiB chunk", per_chunk_wire * 1e3)


def main() -> None:
    runtimes = ["cpython"] + (["micropython"] if find_micropython() else [])
    if len(runtimes) == 1:
        print("bench: micropython not found; only the cpython runtime is measured")
    with tempfile.TemporaryDirectory(prefix="bench-hsm-") as d:
        tmp = Path(d)
        for runtime in runtimes:
            compute = module_compute(runtime, tmp)
            print(f"-- {runtime}: module compute sign {compute[0] * 1e3:.2f} ms, "
                  f"3 KiB hash_update {compute[1] * 1e3:.2f} ms", flush=True)
            for baud in BAUDS:
                bench(runtime, baud, tmp, compute)


if __name__ == "__main__":
    main()
