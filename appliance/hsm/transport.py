"""Opening the crypto module's port: a tty path or any pyserial ``serial_for_url`` URL.

A tty is opened exclusively (protocol §3, sessions): ``TIOCEXCL`` makes the kernel refuse every
later ``open()`` of it (with ``EBUSY``) except by a process with ``CAP_SYS_ADMIN``, and
pyserial's ``exclusive=True`` adds an ``flock`` that refuses cooperating openers, root
included. The session the module hands out is a bearer value on the link: no other process
may read or write the link while the appliance holds it. The flag is cleared again on
close (``TIOCNXCL``): on a real tty the last close clears it anyway, but the HIL emulator
keeps its pty open, so without it the next open by the appliance's user would be refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import termios

import serial

from .errors import PortBusy

DEFAULT_DEVICE = "/dev/gmcrypto0"  # the name the image's udev rule gives the module
DEFAULT_BAUDRATE = 115200
_BUSY = (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK)


def default_device() -> str:
    """``APPLIANCE_HSM_DEVICE`` or the udev name."""
    return os.environ.get("APPLIANCE_HSM_DEVICE") or DEFAULT_DEVICE


class ExclusiveSerial(serial.Serial):
    """A tty held exclusively while open: ``TIOCEXCL`` on open, ``TIOCNXCL`` before close."""

    def open(self) -> None:
        super().open()
        try:
            fcntl.ioctl(self.fd, termios.TIOCEXCL)
        except OSError as exc:
            super().close()
            raise serial.SerialException(exc.errno, f"cannot hold {self.port} exclusively: "
                                         f"{exc.strerror}") from None

    def close(self) -> None:
        if self.is_open and self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, termios.TIOCNXCL)
        super().close()


def open_port(port: str, baudrate: int = DEFAULT_BAUDRATE) -> serial.SerialBase:
    """An open, non-blocking port (``timeout=0``; the driver waits with its own deadlines).

    ``port`` is a device path (``/dev/ttyACM0``, a pty), opened exclusively, or a URL such as
    ``loop://`` or, with the HIL handlers registered, ``faulty://?port=...``. Raises
    :class:`~appliance.hsm.errors.PortBusy` when another process has the tty open, else
    ``serial.SerialException``.
    """
    if "://" in port:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0)
    try:
        return ExclusiveSerial(port, baudrate=baudrate, timeout=0, exclusive=True)
    except serial.SerialException as exc:
        if exc.errno in _BUSY:
            raise PortBusy(f"{port} is held by another process (the appliance service?); "
                           "the crypto module's port is opened by one process at a time: "
                           "stop the other one first") from None
        raise
