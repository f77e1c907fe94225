"""Small adjustments to pynetdicom associations that both the node and the CLI tools need."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def cap_send_pdu(peer_user_information: Iterable[Any], cap: int) -> None:
    """Send P-DATA no larger than ``cap``, nor than the peer takes (dcm4che/DCMTK options).

    pynetdicom fragments by the peer's announced Maximum Length (0 = unlimited) and refuses
    to change ``maximum_length`` after negotiation; lowering the received item in place caps
    what we send without changing what was negotiated.
    """
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    for item in peer_user_information:
        if isinstance(item, MaximumLengthNotification):
            peer = item.maximum_length_received
            item.maximum_length_received = cap if not peer else min(peer, cap)
