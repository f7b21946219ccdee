"""Light-client verification (protocol §5), sans-I/O.

Pure functions over the objects of :mod:`appliance.node.model`: no network, no clock (the
caller passes ``now_ms``), no mutation of their arguments. Every failure raises
:class:`~appliance.node.errors.VerificationError` with a stable ``rule`` code and the
``height`` of the offending header:

========================  =========================================================
rule                      meaning
========================  =========================================================
``anchor``                the anchor header is not the provisioned one (§5)
``validator_set_hash``    a validator set does not hash to the value a header names,
                          or the set a header names was not supplied
``chain_id``              rule 1: another chain
``version``               rule 1: version != "1"
``height``                rule 2: height != prev.height + 1
``prev_hash``             rule 2: prev_hash != block_id(prev)
``timestamp``             rule 3: before prev.timestamp or after now + max_skew
``validators_hash``       rule 4: validators_hash != prev.next_validators_hash
``set_change_commit``     rule 5: a set change without a valid commit of the signing set
``last_commit``           rule 6: the segment's last header without a valid commit
``commit``                a commit is invalid (verify_commit), or strict mode found a
                          header without a valid commit
``proof``                 an inclusion proof does not lead to the header's tx_root
``tx_root``               a block's txs do not hash to its header's tx_root
``sender``, ``tx_signature``  a signed_tx whose key is not its sender's or whose signature fails
========================  =========================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import merkle, signatures
from .errors import VerificationError
from .model import (
    PROTOCOL_VERSION,
    Block,
    Commit,
    Header,
    Proof,
    SignedTx,
    TrustAnchor,
    ValidatorSet,
    vote_bytes,
)

__all__ = [
    "DEFAULT_MAX_SKEW_MS", "Equivocation", "SegmentResult", "SetChange", "check_anchor",
    "check_block", "check_equivocation", "check_validator_set", "commit_is_valid",
    "verify_commit", "verify_proof", "verify_segment", "verify_tx",
]

DEFAULT_MAX_SKEW_MS = 60_000  # §5 rule 3


# --- anchor and sets ---------------------------------------------------------------------------


def check_anchor(
    anchor: TrustAnchor, header: Header, *, next_set: ValidatorSet | None = None
) -> None:
    """Check the fetched anchor header against the provisioned trust anchor (§5).

    ``H(enc(header)) == anchor.block_id``, the same height and chain_id, and
    ``header.validators_hash == H(enc(anchor.validators))`` (rule ``anchor``). When
    ``next_set`` (the set a node served for height anchor.height + 1) is given, it must hash
    to ``header.next_validators_hash`` (rule ``validator_set_hash``). The anchor header is then
    the ``trusted`` argument of the first :func:`verify_segment`.
    """
    h = header.height
    if header.block_id != anchor.block_id:
        raise VerificationError("anchor", h, "block_id differs from the trust anchor's")
    if header.height != anchor.height:
        raise VerificationError("anchor", h, f"height differs from the anchor's {anchor.height}")
    if header.chain_id != anchor.chain_id:
        raise VerificationError("anchor", h, "chain_id differs from the anchor's")
    if header.validators_hash != anchor.validators.hash:
        raise VerificationError("anchor", h, "the anchor's validators do not hash to the header's")
    if next_set is not None:
        check_validator_set(next_set, header.next_validators_hash, h)


def check_validator_set(vset: ValidatorSet, expected_hash: bytes, height: int | None) -> None:
    """Raise ``validator_set_hash`` unless ``H(enc(vset)) == expected_hash``."""
    if vset.hash != expected_hash:
        raise VerificationError("validator_set_hash", height, "set does not hash to the header's")


# --- commits -----------------------------------------------------------------------------------


def verify_commit(commit: Commit, header: Header, vset: ValidatorSet, chain_id: str) -> int:
    """Check ``commit`` as a quorum certificate of ``header`` under ``vset``; return the power.

    ``vset`` must be the set the header names (its validators_hash). The commit's height and
    block_id must be the header's; indices strictly increasing and in range; every signature
    must verify (by ``vset[index]`` with that validator's alg over enc(vote)), and one that
    does not makes the whole commit invalid; the signed power must exceed two thirds of the
    total: ``3 * signed > 2 * total``. The power is summed before any signature is checked, so
    a commit that could not reach a quorum costs no public-key operation.
    """
    h = header.height
    if header.chain_id != chain_id:
        raise VerificationError("chain_id", h, "header of another chain")
    if vset.hash != header.validators_hash:
        raise VerificationError("validator_set_hash", h, "commit checked against the wrong set")
    if commit.height != h:
        raise VerificationError("commit", h, f"commit is for height {commit.height}")
    if commit.block_id != header.block_id:
        raise VerificationError("commit", h, "commit is for another block_id")
    validators = vset.validators
    n = len(validators)
    signed = 0
    previous = -1
    for index, _ in commit.signatures:
        if index <= previous:
            raise VerificationError("commit", h, "signature indices not strictly increasing")
        if index >= n:
            raise VerificationError("commit", h, f"signature index {index} >= set size {n}")
        previous = index
        signed += validators[index].power
    if not 3 * signed > 2 * vset.total_power:
        raise VerificationError(
            "commit", h, f"signed power {signed} of {vset.total_power} is not above two thirds"
        )
    message = vote_bytes(chain_id, h, header.block_id)
    for index, signature in commit.signatures:
        v = validators[index]
        if not signatures.verify(v.alg, v.public_key, message, signature):
            raise VerificationError("commit", h, f"signature {index} does not verify")
    return signed


def commit_is_valid(commit: Commit, header: Header, vset: ValidatorSet, chain_id: str) -> bool:
    """:func:`verify_commit` as a boolean."""
    try:
        verify_commit(commit, header, vset, chain_id)
    except VerificationError:
        return False
    return True


# --- segments ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetChange:
    """Header ``height`` changed the set: ``next_set`` signs from ``height + 1`` on."""

    height: int
    next_set: ValidatorSet


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """A verified segment: its last header, the set that signs the block after it, the changes.

    ``commit_heights`` are the heights whose commits were verified (the set changes and the
    tip; every height in strict mode): the ones worth storing.
    """

    tip: Header
    next_set: ValidatorSet
    changes: tuple[SetChange, ...]
    commit_heights: tuple[int, ...]


def verify_segment(
    trusted: Header,
    next_set: ValidatorSet,
    headers: Sequence[Header],
    commits: Mapping[int, Commit],
    sets: Mapping[bytes, ValidatorSet],
    now_ms: int,
    *,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    strict: bool = False,
) -> SegmentResult:
    """Verify the segment ``headers`` (heights a+1..b) that follows the trusted header a (§5).

    ``next_set`` is the set that hashes to ``trusted.next_validators_hash`` (checked).
    ``commits`` maps heights to commits; those of set-change headers and of the last header
    are required (every header in ``strict`` mode), others are ignored in skipping mode.
    ``sets`` maps validator-set hashes to sets (each checked against its key when used); the
    set named by every set change's next_validators_hash is required.

    Rules 1-6 are applied in order to each header, and the first failure raises
    VerificationError: the segment is accepted whole or not at all. An empty segment returns
    the trusted state unchanged. The trusted header's chain_id is the anchor's (it descends
    from the anchor by these same rules).
    """
    check_validator_set(next_set, trusted.next_validators_hash, trusted.height)
    if not headers:
        return SegmentResult(trusted, next_set, (), ())
    chain_id = trusted.chain_id
    latest = now_ms + max_skew_ms
    version = PROTOCOL_VERSION
    last = len(headers) - 1
    current = next_set  # the set that signs the header being checked
    changes: list[SetChange] = []
    checked: list[int] = []
    prev = trusted
    for i, h in enumerate(headers):
        height = h.height
        # Rule 1
        if h.chain_id != chain_id:
            raise VerificationError("chain_id", height, f"chain {h.chain_id[:64]!r}")
        if h.version != version:
            raise VerificationError("version", height, f"version {h.version[:16]!r}")
        # Rule 2
        if height != prev.height + 1:
            raise VerificationError("height", height, f"expected {prev.height + 1}")
        if h.prev_hash != prev.block_id:
            raise VerificationError("prev_hash", height, "does not link to the previous header")
        # Rule 3
        if not prev.timestamp <= h.timestamp <= latest:
            raise VerificationError(
                "timestamp", height,
                "before the previous header's" if h.timestamp < prev.timestamp
                else f"more than {max_skew_ms} ms in the future",
            )  # fmt: skip
        # Rule 4 (with it, current.hash == h.validators_hash holds below)
        if h.validators_hash != prev.next_validators_hash:
            raise VerificationError("validators_hash", height, "not the previous next set")
        # Rule 5
        if h.next_validators_hash != h.validators_hash:
            _require_commit(commits, h, current, chain_id, "set_change_commit")
            checked.append(height)
            following = sets.get(h.next_validators_hash)
            if following is None:
                raise VerificationError("validator_set_hash", height, "next set not supplied")
            check_validator_set(following, h.next_validators_hash, height)
            changes.append(SetChange(height, following))
            current = following
        elif i == last:  # Rule 6 (a set-change tip was certified just above)
            _require_commit(commits, h, current, chain_id, "last_commit")
            checked.append(height)
        elif strict:
            _require_commit(commits, h, current, chain_id, "commit")
            checked.append(height)
        prev = h
    return SegmentResult(prev, current, tuple(changes), tuple(checked))


def _require_commit(
    commits: Mapping[int, Commit], header: Header, vset: ValidatorSet, chain_id: str, rule: str
) -> None:
    """verify_commit, reported under the rule that needed the commit."""
    commit = commits.get(header.height)
    if commit is None:
        raise VerificationError(rule, header.height, "commit missing")
    try:
        verify_commit(commit, header, vset, chain_id)
    except VerificationError as exc:
        raise VerificationError(rule, header.height, f"{exc.rule}: {exc.detail}") from exc


# --- equivocation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Evidence that more than a third of a set is faulty (§5): two valid commits at one height.

    ``double_signers`` are the indices (in the set hashing to ``validators_hash``) that signed
    both block_ids, ``double_signed_power`` their power (> a third of the total, necessarily).
    """

    chain_id: str
    height: int
    validators_hash: bytes
    header_a: Header
    commit_a: Commit
    header_b: Header
    commit_b: Commit
    double_signers: tuple[int, ...]
    double_signed_power: int

    def to_obj(self) -> dict[str, Any]:
        """A plain map for the audit log (canonical CBOR with appliance.wire.encode)."""
        return {
            "chain_id": self.chain_id,
            "height": self.height,
            "validators_hash": self.validators_hash,
            "header_a": self.header_a.to_obj(),
            "commit_a": self.commit_a.to_obj(),
            "header_b": self.header_b.to_obj(),
            "commit_b": self.commit_b.to_obj(),
        }


def check_equivocation(
    commit_a: Commit,
    header_a: Header,
    commit_b: Commit,
    header_b: Header,
    vset: ValidatorSet,
    chain_id: str,
) -> Equivocation | None:
    """Evidence when both commits are valid under ``vset`` for different blocks at one height.

    ``vset`` is the set the client trusts for that height; both headers must name it and be of
    ``chain_id``. Returns None when the heights differ, the block_ids are equal, a header is of
    another chain or either commit is invalid: that is not equivocation (an invalid commit is
    just bad data from one peer).
    """
    if header_a.height != header_b.height or header_a.block_id == header_b.block_id:
        return None
    if header_a.chain_id != chain_id or header_b.chain_id != chain_id:
        return None
    if not (
        commit_is_valid(commit_a, header_a, vset, chain_id)
        and commit_is_valid(commit_b, header_b, vset, chain_id)
    ):
        return None
    both = sorted({i for i, _ in commit_a.signatures} & {i for i, _ in commit_b.signatures})
    return Equivocation(
        chain_id=chain_id,
        height=header_a.height,
        validators_hash=vset.hash,
        header_a=header_a,
        commit_a=commit_a,
        header_b=header_b,
        commit_b=commit_b,
        double_signers=tuple(both),
        double_signed_power=sum(vset.validators[i].power for i in both),
    )


# --- transactions ------------------------------------------------------------------------------


def verify_proof(tx_id: bytes, proof: Proof, header: Header) -> None:
    """Raise ``proof`` unless ``proof`` includes ``tx_id`` under ``header.tx_root`` (§4, §5).

    ``header`` must already be in the verified store: that is what makes the proof mean
    anything.
    """
    if not merkle.verify_inclusion(
        tx_id, proof.leaf_index, proof.tree_size, proof.path, header.tx_root
    ):
        raise VerificationError("proof", header.height, "inclusion proof does not verify")


def verify_tx(tx: SignedTx, chain_id: str | None = None) -> None:
    """Check a signed_tx's own signature (§3): key hashes to sender, signature over enc(body).

    With ``chain_id``, the body must be of that chain (rule ``chain_id``).
    """
    body = tx.body
    if chain_id is not None and body.chain_id != chain_id:
        raise VerificationError("chain_id", None, "transaction of another chain")
    if merkle.digest(tx.public_key) != body.sender:
        raise VerificationError("sender", None, "public_key does not hash to sender")
    if not signatures.verify(tx.alg, tx.public_key, body.encoded, tx.signature):
        raise VerificationError("tx_signature", None, "transaction signature does not verify")


def check_block(block: Block) -> None:
    """Raise ``tx_root`` unless the block's tx_ids hash to its header's tx_root (§3)."""
    if merkle.root(block.tx_ids) != block.header.tx_root:
        raise VerificationError("tx_root", block.header.height, "txs do not match tx_root")
