"""Light-node firmware for the terminals of Beijing's government service halls.

Subpackages: ``gm`` (national crypto), ``wire`` (canonical CBOR), and, as they land,
``node`` (SPV light client), ``hsm`` (crypto-module driver) and ``kiosk`` (the citizen and
clerk flows). See docs/architecture.md for where each feature lives.
"""

__version__ = "0.1.0"
