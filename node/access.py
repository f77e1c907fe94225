"""Who may open an association, decided from the first bytes of the A-ASSOCIATE-RQ (pure).

A worker peeks at a new connection's first bytes before pynetdicom sees them. The fixed part
of the A-ASSOCIATE-RQ (PS3.8 9.3.2) holds both AE titles at fixed offsets, so the node can
refuse a calling AE title that the ``[access]`` table does not allow for the called AE title,
or that already holds ``network.max_associations_per_aet`` associations across the node, or
any association beyond ``network.max_associations``, without a pynetdicom association (no
thread). Refusals are A-ASSOCIATE-RJ PDUs built here:

| why | result, source, reason (PS3.8 9.3.4) |
| --- | --- |
| calling AE not allowed for the called AE | 1 permanent, 1 service user, 3 calling AE title not recognized |
| per-AE cap or node cap reached | 2 transient, 3 service provider (presentation), 2 local limit exceeded |
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from node.config import ListenerConfig, NodeConfig

RQ_TYPE = 0x01
# type, reserved, length (4), protocol version (2), reserved (2), called AE (16), calling AE (16)
RQ_FIXED = 42


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    """The AE titles of an A-ASSOCIATE-RQ, trailing spaces removed."""

    called: str
    calling: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """An A-ASSOCIATE-RJ to send, and the reason to log."""

    result: int
    source: int
    reason: int
    why: str

    def pdu(self) -> bytes:
        """The A-ASSOCIATE-RJ PDU (type 3, length 4)."""
        return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, self.result, self.source, self.reason)


def parse_associate_rq(prefix: bytes) -> AssociateRequest | None:
    """AE titles from the first bytes of a connection; None if not an A-ASSOCIATE-RQ or too short."""
    if len(prefix) < RQ_FIXED or prefix[0] != RQ_TYPE:
        return None
    called = prefix[10:26].decode("ascii", "replace").strip(" \x00")
    calling = prefix[26:42].decode("ascii", "replace").strip(" \x00")
    return AssociateRequest(called=called, calling=calling)


def admit(rq: AssociateRequest, config: NodeConfig, listener: ListenerConfig, *, node_total: int, aet_totals: Mapping[str, int]) -> Refusal | None:
    """None to go on with pynetdicom's negotiation, else the refusal.

    ``node_total`` and ``aet_totals`` count the node's running associations (this one not
    included). The listener's own ``aet``/``accept`` checks stay with pynetdicom, which
    answers them with dcm4che's reasons.
    """
    allowed = config.access.allowed.get(rq.called)
    if allowed is not None and rq.calling not in allowed:
        return Refusal(1, 1, 3, f"calling AE {rq.calling!r} is not allowed to call {rq.called!r}")
    cap = config.network.max_associations_per_aet
    if cap and aet_totals.get(rq.calling, 0) >= cap:
        return Refusal(2, 3, 2, f"calling AE {rq.calling!r} already has {aet_totals.get(rq.calling, 0)} association(s), cap {cap}")
    limit = config.network.max_associations
    if limit and node_total >= limit:
        return Refusal(2, 3, 2, f"node association limit {limit} reached")
    return None
