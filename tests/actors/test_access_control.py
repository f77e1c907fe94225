"""Who may associate: the [access] table (calling AEs per called AE), the per-calling-AE cap
and the node's cap, across two workers; refusals logged with peer address and AE titles."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from tests.nodes import RunningNode, serve
from tests.support import NODECTL, associate_or_rejection, have, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK not installed (tests.nodes serve)")

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "node.toml").write_text("""
[network]
max_associations_per_aet = 2
max_associations = 4
[access.allowed]
NODE = ["MOD1", "HOG", "OTHER", "A", "B", "C", "D", "E"]
""")
    running = serve(tmp, "--config", str(tmp / "node.toml"), workers=2)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def node(shared_node: RunningNode) -> RunningNode:
    """The module's node once the listener counts no association: a test's releases reach the
    listener a moment after pynetdicom returns, and the caps count them until then, whichever
    test ran before."""
    wait_until(lambda: listener_associations(shared_node) == 0, 20, "associations of earlier tests to end")
    return shared_node


def associate(port: int, aet: str, aec: str = "NODE"):  # noqa: ANN201
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=aec)


def listener_associations(node: RunningNode) -> int:
    """The associations the listener counts (what the caps are checked against), by ``nodectl status``."""
    result = subprocess.run([*NODECTL, "status", "--config", "node.toml", "--json"],
                            cwd=node.cwd, capture_output=True, text=True, timeout=30)
    return sum(entry.get("associations", 0) for entry in json.loads(result.stdout)["listeners"])


def rejection(port: int, aet: str, aec: str = "NODE") -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ's (result, source, reason) an association request got, or None."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    assoc, rejected = associate_or_rejection(ae, "127.0.0.1", port, ae_title=aec)
    if assoc.is_established:
        assoc.release()
    return rejected


def test_calling_ae_not_in_the_table_is_refused_and_logged(node: RunningNode) -> None:
    assert rejection(node.port, "MOD2") == (1, 1, 3)
    allowed = associate(node.port, "MOD1")
    try:
        assert allowed.is_established
    finally:
        allowed.release()
    wait_until(lambda: "calling=MOD2 called=NODE" in node.log(), 5, "the refusal in the log")
    line = next(l for l in node.log().splitlines() if "calling=MOD2 called=NODE" in l)
    assert re.search(r"peer=127\.0\.0\.1:\d+", line), line


def test_per_calling_ae_cap_holds_across_workers(node: RunningNode) -> None:
    """The listener admits every association of its port itself: no heartbeat to wait for."""
    held = []
    try:
        for _ in range(2):
            held.append(associate(node.port, "HOG"))
            assert held[-1].is_established
        assert rejection(node.port, "HOG") == (2, 3, 2)
        other = associate(node.port, "OTHER")
        assert other.is_established
        other.release()
    finally:
        for assoc in held:
            assoc.release()
    wait_until(lambda: listener_associations(node) == 0, 20, "the listener to count the released associations as ended")
    again = associate(node.port, "HOG")
    assert again.is_established, "the cap must free up when associations end"
    again.release()


def test_node_cap_refuses_beyond_max_associations(node: RunningNode) -> None:
    held = []
    try:
        for aet in ("A", "B", "C", "D"):
            held.append(associate(node.port, aet))
            assert held[-1].is_established
        assert rejection(node.port, "E") == (2, 3, 2)
    finally:
        for assoc in held:
            assoc.release()
