"""``nodectl run``: which actors wait for a listener before they import, and the wait itself.
(The whole node's start with this ordering: tests/tools/test_lifetime.py, bench startstop.)"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from node import config as configuration
from node.tools import run


@pytest.mark.parametrize(("actor", "args", "waits"), [
    ("listener", ["--listener", "11112"], False),
    ("worker", ["--worker-id", "0"], False),
    ("worker", [], False),  # a worker named by its PID (Procfile): it may be the only one
    ("worker", ["--worker-id", "1"], True),
    ("writer", [], True),
    ("tracker", [], True),
    ("metrics", [], True),
])
def test_only_the_first_associations_way_starts_at_once(actor: str, args: list[str], waits: bool) -> None:
    assert run.starts_after_ready(actor, args) is waits


def node_config(tmp_path: Path) -> configuration.NodeConfig:
    return replace(configuration.load(None), run_dir=tmp_path)


def test_the_wait_ends_when_a_listener_accepts(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    ready = config.ready_path(config.listeners[0])
    threading.Timer(0.2, ready.write_text, args=("127.0.0.1 11112\n",)).start()
    started = time.monotonic()
    assert run.await_a_listener(config, timeout=10.0)
    assert 0.15 < time.monotonic() - started < 5.0


def test_the_wait_is_bounded_when_no_listener_comes(tmp_path: Path) -> None:
    started = time.monotonic()
    assert not run.await_a_listener(node_config(tmp_path), timeout=0.3)
    assert time.monotonic() - started >= 0.3
