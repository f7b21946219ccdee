"""Sans-I/O core of the crypto-module protocol v1, shared by the host driver and the firmware.

Bytes and times go in, bytes and events come out; nothing here reads a clock, sleeps, spawns a
thread or touches a port, so the same files are tested on CPython and run on MicroPython.

- ``cobs``: COBS framing (Cheshire & Baker).
- ``codes``: GM/T 0018 SDR error codes and their names.
- ``mcbor``: small canonical CBOR codec, byte-identical to ``appliance.wire``.
- ``frame``: frame encoding, CRC-32 and the streaming ``FrameDecoder``.
- ``modlink``: module receive side (NAKs, exactly-once duplicate cache).
- ``hostlink``: host request state machine (seq, timeout, retransmit, WAIT, BOOT, probe).

MicroPython subset: no f-strings, annotations, typing or dataclasses; siblings are imported with
``try: from . import x`` / ``except ImportError: import x`` so the folder also works flat.
"""
