"""Finding the crypto module when it is plugged in, and noticing when it goes.

:class:`DeviceMatcher` is the sans-I/O part: feed it udev-style events (action, device node,
properties) and it says when the module attached or detached. :class:`HotplugMonitor` is the
pyudev adapter that feeds it from the kernel's netlink socket (subsystem ``tty``). Tests feed
the matcher synthetic events; the image also names the device ``/dev/gmcrypto0`` through the
udev rule in ``image/udev/99-gmcrypto.rules`` (same vendor and model as the defaults here).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# USB vendor/model of the module's CDC-ACM interface; set per deployment in the config.
DEFAULT_VENDOR_ID = "1209"
DEFAULT_MODEL_ID = "a5e1"


@dataclass(frozen=True)
class DeviceEvent:
    """What udev says about one device: ``action`` is "add", "remove", "change"..."""

    action: str
    devnode: str | None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attached:
    devnode: str


@dataclass(frozen=True)
class Detached:
    devnode: str


class DeviceMatcher:
    """Tracks the one module matching vendor/model (and serial, when configured)."""

    def __init__(self, vendor_id: str = DEFAULT_VENDOR_ID, model_id: str = DEFAULT_MODEL_ID,
                 serial: str | None = None) -> None:
        self.vendor_id = vendor_id.lower()
        self.model_id = model_id.lower()
        self.serial = serial
        self.current: str | None = None

    def matches(self, properties: Mapping[str, str]) -> bool:
        if properties.get("SUBSYSTEM", "tty") != "tty":
            return False
        if properties.get("ID_VENDOR_ID", "").lower() != self.vendor_id:
            return False
        if properties.get("ID_MODEL_ID", "").lower() != self.model_id:
            return False
        return self.serial is None or properties.get("ID_SERIAL_SHORT") == self.serial

    def feed(self, event: DeviceEvent) -> Attached | Detached | None:
        """The change this event makes, if any; a remove needs no properties (udev may omit
        them), only the node we attached."""
        if event.devnode is None:
            return None
        if event.action == "remove":
            if event.devnode == self.current:
                self.current = None
                return Detached(event.devnode)
            return None
        if event.action in ("add", "change", "bind") and self.matches(event.properties):
            if event.devnode != self.current:
                self.current = event.devnode
                return Attached(event.devnode)
        return None


class HotplugMonitor:
    """pyudev adapter: existing devices first, then netlink events, into a DeviceMatcher."""

    def __init__(self, matcher: DeviceMatcher,
                 on_change: Callable[[Attached | Detached], None]) -> None:
        self.matcher = matcher
        self.on_change = on_change
        self._observer = None
        self._lock = threading.Lock()

    def _feed(self, event: DeviceEvent) -> None:
        with self._lock:
            change = self.matcher.feed(event)
        if change is not None:
            self.on_change(change)

    def start(self) -> None:
        import pyudev  # imported here: only the terminal needs libudev

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context)
        monitor.filter_by(subsystem="tty")

        def handle(device: pyudev.Device) -> None:
            self._feed(DeviceEvent(device.action or "change", device.device_node,
                                   dict(device.properties)))

        self._observer = pyudev.MonitorObserver(monitor, callback=handle, daemon=True)
        self._observer.start()
        for device in context.list_devices(subsystem="tty"):
            self._feed(DeviceEvent("add", device.device_node, dict(device.properties)))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.send_stop()
            self._observer = None
