"""actors/metrics.py: the hooks alone, then one node's scrape endpoint covering all its processes."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from actors import metrics
from node import config as configuration
from tests.nodes import RunningNode
from tests.support import NODECTL, free_port, make_ct, wait_until


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from an exposition text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_status_classes() -> None:
    assert metrics.status_class(0) == "success"
    assert metrics.status_class(0xB007) == metrics.status_class(0x0107) == "warning"
    assert metrics.status_class(0xA700) == metrics.status_class(0xC000) == "failure"


def test_hooks_count_without_a_multiprocess_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"x" * 1000)

    class Worker:
        @metrics.c_store
        def _store(self, event: object, live: object) -> int:
            return 0xA700

    before = metrics.CSTORE.labels("failure")._value.get()
    bytes_before = metrics.CSTORE_BYTES._value.get()
    assert Worker()._store(SimpleNamespace(dataset_path=spool), None) == 0xA700
    assert metrics.CSTORE.labels("failure")._value.get() == before + 1
    assert metrics.CSTORE_BYTES._value.get() == bytes_before + 1000

    class Writer:
        @metrics.durable_writes
        def _write(self, requests: list) -> list:
            return [([b"id"], SimpleNamespace(kind="instance.written"), "c") for _ in requests]

    count = sum(s.value for s in metrics.DURABLE_SECONDS.collect()[0].samples if s.name.endswith("_count"))
    Writer()._write([SimpleNamespace(envelope=SimpleNamespace(sent=0.0))])
    assert sum(s.value for s in metrics.DURABLE_SECONDS.collect()[0].samples if s.name.endswith("_count")) == count + 1


def test_one_endpoint_covers_every_process_of_a_node(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    (tmp_path / "node.toml").write_text(f"""
[node]
aet = "NODE"
workers = 2
run_dir = "run"
[[listeners]]
port = {port}
aet = "NODE"
[metrics]
enabled = true
port = {metrics_port}
""")
    node = RunningNode(["serve", "--config", str(tmp_path / "node.toml")], cwd=tmp_path, port=port).wait_ready()
    try:
        for n in range(3):
            make_ct(tmp_path / "in" / f"{n}.dcm")
        subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(port), str(tmp_path / "in"), "-aec", "NODE", "--recurse"],
                       capture_output=True, timeout=60, check=True)
        node.materialised()  # nodectl_instances counts the index, which follows the journal
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def scrape() -> str:
            try:
                with urllib.request.urlopen(url, timeout=10) as rsp:
                    return rsp.read().decode()
            except OSError:
                return ""

        processes = ("writer", "tracker", "worker-0", "worker-1", f"listener-{port}", "metrics")
        # Every actor but the first worker and listener starts once the port is open (deferred
        # start), and counts as up once supervisord has it RUNNING (startsecs, 1 s): wait for all.
        def all_up() -> bool:
            page = scrape()
            return all(sample(page, "nodectl_process_up", process=name) == 1 for name in processes)

        wait_until(all_up, 15, "every process up on the metrics endpoint")
        text = scrape()
        assert sample(text, "nodectl_cstore_total", status="success") == 3
        assert sample(text, "nodectl_cstore_bytes_total") > 3 * 64 * 64 * 2
        assert sample(text, "nodectl_cstore_seconds_count") == 3
        assert sample(text, "nodectl_durable_ack_seconds_count") == 3
        assert sample(text, "nodectl_associations_total", listener=str(port), outcome="accepted") >= 1
        assert sample(text, "nodectl_instances") == 3
        for name in processes:
            assert sample(text, "nodectl_process_up", process=name) == 1, name
            assert sample(text, "nodectl_process_restarts_total", process=name) == 0, name
        assert sample(text, "nodectl_associations_active", listener=str(port)) == 0
        run_dir = configuration.short_run_dir(tmp_path / "run")
        assert (run_dir / "metrics.ready").read_text().split() == ["127.0.0.1", str(metrics_port)]
    finally:
        assert node.stop() == 0
