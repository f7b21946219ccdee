"""pyserial URL handlers of the HIL rig: ``faulty://`` (line faults in front of another port).

pyserial finds ``serial_for_url("faulty://...")`` by importing ``protocol_faulty`` from each
package named in ``serial.protocol_handler_packages``; :func:`register` adds this package to
that list. It is explicit rather than an import side effect so that nothing outside the rig
and the tests can open a faulty port by accident.
"""

from __future__ import annotations

PACKAGE = __name__


def register() -> None:
    """Make ``faulty://`` URLs known to ``serial.serial_for_url``; safe to call repeatedly."""
    import serial

    if PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(PACKAGE)
