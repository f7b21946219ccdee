"""SPV light node of the municipal consortium chain (ledger protocol §1-§5, §8).

The pieces, each importable on its own (this package imports nothing at import time, so the
store, the sync engine and the HIL test double load only what they use):

- :mod:`appliance.node.errors`: the one error family, :class:`~appliance.node.errors.LedgerError`
  with :class:`~appliance.node.errors.MalformedError` (bad structure) and
  :class:`~appliance.node.errors.VerificationError` (a §5 rule broke);
- :mod:`appliance.node.model`: the protocol objects as frozen dataclasses, strict
  ``from_obj``/``decode_*`` with the §8 limits applied before decoding;
- :mod:`appliance.node.merkle`: RFC 9162 §2.1 trees and inclusion proofs over SM3 (§4);
- :mod:`appliance.node.signatures`: ``sm2`` / ``ecdsa-p256`` dispatch by the ``alg`` field (§2);
- :mod:`appliance.node.verify`: the sans-I/O light-client rules (§5): anchors, commits,
  segments, equivocation, transaction proofs.

See docs/light-node.md.
"""
