"""Who may open an association, decided on the A-ASSOCIATE-RQ before negotiation (pure).

A worker calls these on the decoded A-ASSOCIATE-RQ, before presentation contexts are
negotiated, and answers a refusal with A-ASSOCIATE-RJ. They refuse a calling AE title that
the ``[access]`` table does not allow for the called AE title, one that already holds
``network.max_associations_per_aet`` associations across the node, and any association
beyond ``network.max_associations``:

| why | result, source, reason (PS3.8 9.3.4) |
| --- | --- |
| calling AE not allowed for the called AE | 1 permanent, 1 service user, 3 calling AE title not recognized |
| per-AE cap or node cap reached | 2 transient, 3 service provider (presentation), 2 local limit exceeded |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from node.config import ListenerConfig, NodeConfig


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


def admit(rq: AssociateRequest, config: NodeConfig, listener: ListenerConfig, *, node_total: int, aet_totals: Mapping[str, int]) -> Refusal | None:
    """None to go on with negotiation, else the refusal: the access table, then the caps.

    ``node_total`` and ``aet_totals`` count the node's running associations (this one not
    included). The listener's own ``aet``/``accept`` checks stay with the worker, which
    answers them with dcm4che's reasons.
    """
    return allowed(rq, config) or within_caps(rq, config, node_total=node_total, aet_totals=aet_totals)


def allowed(rq: AssociateRequest, config: NodeConfig) -> Refusal | None:
    """The ``[access]`` table: may this calling AE call this called AE?"""
    permitted = config.access.allowed.get(rq.called)
    if permitted is not None and rq.calling not in permitted:
        return Refusal(1, 1, 3, f"calling AE {rq.calling!r} is not allowed to call {rq.called!r}")
    return None


def within_caps(rq: AssociateRequest, config: NodeConfig, *, node_total: int, aet_totals: Mapping[str, int]) -> Refusal | None:
    """The per-calling-AE cap, then the node's association limit.

    The listener that handed the association over answers this from its exact counts
    (``actors.listener``); a worker uses its own view only when the listener is unreachable.
    """
    cap = config.network.max_associations_per_aet
    if cap and aet_totals.get(rq.calling, 0) >= cap:
        return Refusal(2, 3, 2, f"calling AE {rq.calling!r} already has {aet_totals.get(rq.calling, 0)} association(s), cap {cap}")
    limit = config.network.max_associations
    if limit and node_total >= limit:
        return Refusal(2, 3, 2, f"node association limit {limit} reached")
    return None
