"""admit(): the access table, the per-calling-AE cap and the node cap, in that order (pure)."""

from __future__ import annotations

from dataclasses import replace

from node.access import AssociateRequest, admit
from node.config import AccessConfig, ListenerConfig, NetworkConfig, NodeConfig

LISTENER = ListenerConfig(port=11112, aet="NODE")
CONFIG = NodeConfig(access=AccessConfig(allowed={"NODE": ("MOD1", "MOD2")}),
                    network=NetworkConfig(max_associations=10, max_associations_per_aet=2))


def decide(called: str, calling: str, *, total: int = 0, aets: dict[str, int] | None = None, config: NodeConfig = CONFIG):  # noqa: ANN201
    return admit(AssociateRequest(called=called, calling=calling), config, LISTENER, node_total=total, aet_totals=aets or {})


def test_allowed_calling_ae_is_admitted_and_others_refused_permanently() -> None:
    assert decide("NODE", "MOD1") is None
    refusal = decide("NODE", "INTRUDER")
    assert (refusal.result, refusal.source, refusal.reason) == (1, 1, 3)
    assert decide("OTHER", "INTRUDER") is None  # a called AE title not in the table is open


def test_caps_refuse_transiently_with_local_limit_exceeded() -> None:
    assert decide("NODE", "MOD1", aets={"MOD1": 1}) is None
    per_aet = decide("NODE", "MOD1", aets={"MOD1": 2})
    assert (per_aet.result, per_aet.source, per_aet.reason) == (2, 3, 2) and "MOD1" in per_aet.why
    assert decide("NODE", "MOD2", aets={"MOD1": 2}) is None  # other callers are not affected
    node = decide("NODE", "MOD2", total=10)
    assert (node.result, node.source, node.reason) == (2, 3, 2) and "limit 10" in node.why


def test_no_table_and_no_caps_admit_everyone() -> None:
    open_config = replace(CONFIG, access=AccessConfig(), network=NetworkConfig(max_associations=0))
    assert decide("NODE", "ANYONE", total=10_000, aets={"ANYONE": 500}, config=open_config) is None
