"""Prometheus metrics of a node: the hooks the actors wear, and the scrape endpoint.

Every process of a node counts into one directory (``PROMETHEUS_MULTIPROC_DIR`` =
``<run_dir>/metrics``, set by the generated supervisord.conf when ``[metrics] enabled``),
prometheus-client's multiprocess mode; the ``metrics`` program (``nodectl run metrics``)
sums those files and adds what is cheaper to ask at scrape time than to count: processes
and restarts (supervisord), associations in progress (each listener), instances and
commitment transactions by state (the database). One endpoint per node covers it all.

Hooks are decorators, so an actor carries one line per hook and no metrics code:

* listener ``Listener.hand_off`` / ``reject_busy``: ``nodectl_associations_total{listener,outcome}``
* worker ``Worker._store``: ``nodectl_cstore_total{status}``, ``nodectl_cstore_bytes_total``,
  ``nodectl_cstore_seconds`` (dataset received to status decided, the durable write included)
* writer ``Writer._write`` and ``_journal``: ``nodectl_durable_ack_seconds`` (the worker's
  WriteInstance sent to the instance durable); worker ``Worker._journal``: the same
  histogram, from the instance handed to the worker's journal to the flush covering it

Without the environment variable (threads of one process: stcomscu, tests) the same
metrics count in the process's default registry and nothing is written to disk.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # before prometheus_client reads it
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402

from actors import bus  # noqa: E402
from node.config import write_address  # noqa: E402

log = logging.getLogger("actors.metrics")

F = TypeVar("F", bound=Callable[..., Any])
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ASSOCIATIONS = Counter("nodectl_associations_total", "Connections handed to a worker (accepted) or answered A-ASSOCIATE-RJ at the limit (rejected)", ["listener", "outcome"])
CSTORE = Counter("nodectl_cstore_total", "C-STORE requests answered, by status class (success, warning, failure)", ["status"])
CSTORE_BYTES = Counter("nodectl_cstore_bytes_total", "Dataset bytes received in C-STORE requests")
CSTORE_SECONDS = Histogram("nodectl_cstore_seconds", "C-STORE handling time: dataset received to status decided", buckets=LATENCY_BUCKETS)
DURABLE_SECONDS = Histogram("nodectl_durable_ack_seconds", "An instance handed to a journal (the writer's or its worker's) or the writer's direct path to it durable", buckets=LATENCY_BUCKETS)


def status_class(status: int) -> str:
    """PS3.7 C.4.2: 0x0000 success, 0xB000/0x0107/0x0116 warnings, anything else failure."""
    if status == 0:
        return "success"
    if status in (0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


# --------------------------------------------------------------------------- hooks


def handed_off(func: F) -> F:
    """Listener.hand_off: count an accepted association per listener."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        handed = func(self, *args, **kwargs)
        if handed:
            ASSOCIATIONS.labels(self.lc.key, "accepted").inc()
        return handed

    return wrapper  # type: ignore[return-value]


def rejected(func: F) -> F:
    """Listener.reject_busy: count an association refused at the node's limit."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        ASSOCIATIONS.labels(self.lc.key, "rejected").inc()
        return func(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def c_store(func: F) -> F:
    """Worker._store(event, live) -> status: count, bytes and time of each C-STORE."""

    @functools.wraps(func)
    def wrapper(self: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        size = _spool_size(event)
        status = func(self, event, *args, **kwargs)
        CSTORE_SECONDS.observe(time.monotonic() - started)
        CSTORE.labels(status_class(int(status))).inc()
        CSTORE_BYTES.inc(size)
        return status

    return wrapper  # type: ignore[return-value]


def durable_journal(func: F) -> F:
    """Worker._journal(live, write, parts) -> status: how long the instance waited for the
    worker journal's flush that covers it (successes only)."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        status = func(self, *args, **kwargs)
        if status == 0:
            DURABLE_SECONDS.observe(time.monotonic() - started)
        return status

    return wrapper  # type: ignore[return-value]


def durable_writes(func: F) -> F:
    """Writer._write(requests) -> replies: how long each written instance waited for durability."""

    @functools.wraps(func)
    def wrapper(self: Any, requests: list[Any], *args: Any, **kwargs: Any) -> Any:
        replies = func(self, requests, *args, **kwargs)
        now = time.time()
        for request, (_identity, message, _corr) in zip(requests, replies):
            if getattr(message, "kind", "") == "instance.written":
                DURABLE_SECONDS.observe(max(0.0, now - request.envelope.sent))
        return replies

    return wrapper  # type: ignore[return-value]


def _spool_size(event: Any) -> int:
    """The received dataset's size (the lean path counts it; pynetdicom's spool file), 0 when unknown."""
    size = getattr(event, "size", None)
    if isinstance(size, int):
        return size
    try:
        return os.path.getsize(event.dataset_path)
    except (AttributeError, OSError, TypeError):
        return 0


# --------------------------------------------------------------------------- the endpoint


class NodeCollector:
    """Scrape-time metrics: processes, restarts, associations, instances, commitment states,
    asked through the runtime's introspection (``actors/introspect.py``, as ``nodectl status``)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def collect(self) -> Iterator[Any]:
        # Imported here, in the metrics process only: the listener, workers and writer import this
        # module for its hooks and would pay for introspect's imports (supervisor's XML-RPC
        # client, the index and commitment modules) at every start.
        from actors import introspect

        try:
            procs = introspect.processes(self.config.run_dir)
        except OSError as exc:
            log.warning("supervisord not reachable: %s", exc)
            procs = []
        yield from _process_metrics(procs)
        yield _associations_metric(introspect.listeners(self.config))
        yield from _database_metrics(introspect.database(self.config))


def _process_metrics(procs: list[dict[str, Any]]) -> Iterator[Any]:
    up = GaugeMetricFamily("nodectl_process_up", "1 when supervisord reports the process RUNNING", labels=["process"])
    restarts = CounterMetricFamily("nodectl_process_restarts", "Times supervisord restarted the process (workers included)", labels=["process"])
    for proc in procs:
        up.add_metric([proc["name"]], 1.0 if proc["state"] == "RUNNING" else 0.0)
        restarts.add_metric([proc["name"]], float(proc["restarts"]))
    yield up
    yield restarts


def _associations_metric(listeners: list[dict[str, Any]]) -> Any:
    active = GaugeMetricFamily("nodectl_associations_active", "Associations in progress, per listener", labels=["listener"])
    for entry in listeners:
        if "error" not in entry:
            active.add_metric([str(entry["listener"])], float(entry["associations"]))
    return active


def _database_metrics(counts: dict[str, Any]) -> Iterator[Any]:
    instances = GaugeMetricFamily("nodectl_instances", "Instances in the index (the whole cluster's on PostgreSQL)")
    txns = GaugeMetricFamily("nodectl_commitment_transactions", "Storage Commitment transactions started, by state", labels=["state"])
    outbox = GaugeMetricFamily("nodectl_commitment_outbox", "Storage Commitment reports owed, by state", labels=["state"])
    if "error" not in counts:
        instances.add_metric([], float(counts["instances"]))
        for state, n in counts["transactions"].items():
            txns.add_metric([state], float(n))
        for state, n in counts["outbox"].items():
            outbox.add_metric([state], float(n))
    yield instances
    yield txns
    yield outbox


def forget_dead(directory: str) -> int:
    """Drop live-gauge files of processes that are gone (prometheus-client's mark_process_dead)."""
    removed = 0
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def registry(config: Any) -> Any:
    """The scrape registry: every process's counters (multiprocess files) and NodeCollector."""
    reg = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        multiprocess.MultiProcessCollector(reg, path=directory)
    else:  # one process (threads): its own counters, also in prometheus-client's default registry
        for collector in (ASSOCIATIONS, CSTORE, CSTORE_BYTES, CSTORE_SECONDS, DURABLE_SECONDS):
            reg.register(collector)
    reg.register(NodeCollector(config))
    return reg


def run(config: Any, stop: threading.Event) -> int:
    """Serve ``/metrics`` on ``[metrics] host:port`` until ``stop``."""
    cfg = config.metrics
    server, thread = start_http_server(cfg.port, addr=cfg.host, registry=registry(config))
    port = server.server_address[1]
    write_address(config.metrics_ready_path, cfg.host, port)
    log.info("metrics ready: http://%s:%d/metrics", cfg.host, port)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        while not stop.wait(5.0):
            if directory:
                forget_dead(directory)
    finally:
        config.metrics_ready_path.unlink(missing_ok=True)
        server.shutdown()
        server.server_close()
        thread.join(5)
    return 0


def main(config: Any, args: list[str]) -> int:
    """Entry point for ``nodectl run metrics``."""
    stop = threading.Event()
    bus.stop_on_signals(stop)
    return run(config, stop)
