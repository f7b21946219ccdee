"""The crypto module's firmware (MicroPython subset; also runs on CPython for the emulator).

* ``module``   -- the command processor (sans-I/O): PIN, slots, counters, hash contexts.
* ``keystore`` -- the whole persistent state as one A/B record, safe against power cuts.
* ``crypto``   -- one facade over appliance.gm (OpenSSL, CPython) or appliance.gm.pure.
* ``kat``      -- power-up known-answer tests (GM/T 0002/0003/0004).
* ``main``     -- the entry point on a byte stream (stdin/stdout or a UART).
* ``manifest`` -- the freeze list for the MCU build.

On MicroPython the modules import each other flatly (firmware/, proto/ and appliance/gm/pure/
on the module path); nothing here may use f-strings, annotations, typing or dataclasses.
This file stays import-free so that importing the package never pulls in the host side.
"""
