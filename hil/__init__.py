"""HIL rig tools: test fixtures, not terminal firmware.

Everything under ``hil/`` runs on the rig or in the test suite, never on a terminal: the crypto
module emulator (a pty pair in front of the module firmware, with line faults and UART pacing),
seeded line-fault injection, and the pyserial ``faulty://`` URL handler. Unlike ``appliance/``,
this code may use the ``random`` module: faults are test input, not key material.
"""
