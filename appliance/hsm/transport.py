"""Opening the crypto module's port: a tty path or any pyserial ``serial_for_url`` URL."""

from __future__ import annotations

import os

import serial

DEFAULT_DEVICE = "/dev/gmcrypto0"  # the name the image's udev rule gives the module
DEFAULT_BAUDRATE = 115200


def default_device() -> str:
    """``APPLIANCE_HSM_DEVICE`` or the udev name."""
    return os.environ.get("APPLIANCE_HSM_DEVICE") or DEFAULT_DEVICE


def open_port(port: str, baudrate: int = DEFAULT_BAUDRATE) -> serial.SerialBase:
    """An open, non-blocking port (``timeout=0``; the driver waits with its own deadlines).

    ``port`` is a device path (``/dev/ttyACM0``, a pty) or a URL such as ``loop://`` or, with
    the HIL handlers registered, ``faulty://?port=...``. Raises ``serial.SerialException``.
    """
    if "://" in port:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0)
    return serial.Serial(port, baudrate=baudrate, timeout=0, exclusive=True)
