"""Freeze manifest for the crypto module's MicroPython build (micropython-lib style).

Build with ``make -C ports/<port> FROZEN_MANIFEST=<this file>``; paths are relative to this
file's directory. Every module is frozen flat (``import sm2``, ``import mcbor``), which is how
firmware/, proto/ and appliance/gm/pure/ import each other on the device. ``main`` is frozen
too; a board's boot script calls ``main.main([...])``, which speaks on sys.stdin/sys.stdout
(the REPL UART or USB CDC on most ports; another UART needs a small adapter like StdIO).
tests/hsm/test_firmware_micropython.py checks that this list covers every module main.py
imports, transitively, and that every listed file exists.
"""
# ruff: noqa: F821  (module() is provided by the manifest runner, tools/manifestfile.py)

# the firmware (this folder)
module("main.py", base_path=".")
module("module.py", base_path=".")
module("keystore.py", base_path=".")
module("crypto.py", base_path=".")
module("kat.py", base_path=".")

# the shared protocol core
module("mcbor.py", base_path="../proto")
module("codes.py", base_path="../proto")
module("modlink.py", base_path="../proto")
module("frame.py", base_path="../proto")
module("cobs.py", base_path="../proto")

# the portable SM2/SM3/SM4 (ecdsa.py is not needed on the module)
module("sm2.py", base_path="../../gm/pure")
module("sm3.py", base_path="../../gm/pure")
module("sm4.py", base_path="../../gm/pure")
module("ec.py", base_path="../../gm/pure")
module("der.py", base_path="../../gm/pure")
