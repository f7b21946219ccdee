"""Crypto-module driver: the host side of the serial SM2/SM3/SM4 module (docs/crypto-module.md).

Kept import-light on purpose: importing ``appliance.hsm`` (or ``appliance.hsm.proto``, which the
firmware shares) must not pull in pyserial or pyudev.
"""
