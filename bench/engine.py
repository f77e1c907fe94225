"""CPU per small C-STORE in the upper layer alone (node/ul).

No sockets, no storage: the bytes DCMTK's storescu sends for one 5 KiB instance (a command
P-DATA-TF, a dataset P-DATA-TF) go into an established acceptor, the events come out, the
C-STORE-RSP bytes are made. (The lean path this was first compared with, node/acceptor.py,
is gone since every association runs on node/ul; its figures stay in docs/benchmarks.md.)
The node's budget for the whole receive path is 1.5 ms per instance::

    python -m bench engine [--instances 20000] [--size 5120]
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node import ul

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"


def _established() -> tuple[ul.Association, ul.Association]:
    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    contexts = (ul.ProposedContext(context_id=1, abstract_syntax=CT, transfer_syntaxes=(IMPLICIT,)),)
    unlimited = ul.AsyncWindow(max_invoked=0, max_performed=0)  # the requestor's side never hears the answers
    policy = ul.AcceptorPolicy(contexts={CT: (ul.ANY,)}, max_pdu=16384, async_window=unlimited)
    scp.receive_data(scu.send(ul.AssociateRequest(called_ae="NODE", calling_ae="SCU", contexts=contexts, max_pdu=16384,
                                                  async_window=unlimited)))
    scu.receive_data(scp.send(ul.negotiate(next(scp.events()), policy)))  # type: ignore[arg-type]
    list(scu.events())
    return scu, scp


def _wire(scu: ul.Association, size: int, message_id: int) -> bytes:
    rq = ul.CStoreRQ(message_id=message_id, affected_sop_class_uid=CT,
                     affected_sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{10**12 + message_id}")
    return scu.send_message(1, rq, bytes(size))


def engine_receive(size: int) -> Callable[[bytes], bytes]:
    _, scp = _established()

    def one(data: bytes) -> bytes:
        scp.receive_data(data)
        command, dataset = None, []
        for event in scp.events():
            if isinstance(event, ul.Command):
                command = event
            elif isinstance(event, ul.DatasetFragment):
                dataset.append(event.data)
        rq = command.message  # type: ignore[union-attr]
        return scp.send_message(1, ul.CStoreRSP(message_id_being_responded_to=rq.message_id, status=0,
                                                affected_sop_class_uid=rq.affected_sop_class_uid,
                                                affected_sop_instance_uid=rq.affected_sop_instance_uid))
    return one


def measure(make: Callable[[int], Callable[[bytes], bytes]], instances: int, size: int) -> float:
    """Microseconds of process CPU per instance."""
    scu, _ = _established()
    wires = [_wire(scu, size, n % 65535 + 1) for n in range(min(instances, 2000))]
    one = make(size)
    for data in wires[:200]:  # warm caches
        one(data)
    started = time.process_time()
    for n in range(instances):
        one(wires[n % len(wires)])
    return (time.process_time() - started) / instances * 1e6


def main(instances: int = 20000, size: int = 5120) -> int:
    print(f"node/ul engine {measure(engine_receive, instances, size):8.1f} us CPU per {size}-byte C-STORE (receive + response)")
    return 0
