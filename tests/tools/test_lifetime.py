"""``node/tools/_lifetime.py``: the ports nodectl binds and hands to its listeners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from actors.listener import fetch_listening_socket
from node.config import LISTEN_FROM_ENV, ListenerConfig, NodeConfig
from node.tools._lifetime import NODECTL_PID_ENV, ListeningSockets
from tests.support import die_with_parent as die_with_test


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    listening = ListeningSockets()
    listening.add("main", ("127.0.0.1", 0), sock)
    listening.serve(tmp_path / "listening.sock")
    listening.start()
    monkeypatch.setenv(LISTEN_FROM_ENV, str(tmp_path / "listening.sock"))
    try:
        yield listening, sock.getsockname()[1]
    finally:
        listening.close()


def test_a_listener_gets_the_socket_nodectl_bound_and_a_peer_queued_on_it(served) -> None:  # noqa: ANN001
    _listening, port = served
    peer = socket.create_connection(("127.0.0.1", port), timeout=5)  # before any listener runs
    got = fetch_listening_socket("main")
    try:
        assert got is not None and got.getsockname()[1] == port
        got.settimeout(5)
        conn, _ = got.accept()
        conn.close()
    finally:
        peer.close()
        if got is not None:
            got.close()


def test_an_unknown_listener_binds_its_own(served) -> None:  # noqa: ANN001
    assert fetch_listening_socket("added-by-a-reload") is None


def test_without_nodectl_the_listener_binds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LISTEN_FROM_ENV, raising=False)
    assert fetch_listening_socket("main") is None


def test_a_reload_that_moves_a_listener_drops_its_socket(served) -> None:  # noqa: ANN001
    listening, _port = served
    same = NodeConfig(listeners=(ListenerConfig(port=0, host="127.0.0.1", name="main"),))
    listening.retain(same)
    assert "main" in listening.sockets
    moved = NodeConfig(listeners=(ListenerConfig(port=11112, host="127.0.0.1", name="main"),))
    listening.retain(moved)
    assert fetch_listening_socket("main") is None


# ----- an actor started just as nodectl died ----------------------------------------------------

_ACTOR = ("import time; from node.tools._lifetime import die_with_parent; "
          "die_with_parent(from_nodectl=True); print('alive', flush=True); time.sleep(30)")


def _actor(nodectl_pid: int) -> subprocess.Popen[str]:
    """What ``nodectl run`` does first, in a child whose ``$NODECTL_PID`` says ``nodectl_pid``."""
    env = {**os.environ, NODECTL_PID_ENV: str(nodectl_pid)}
    return subprocess.Popen([sys.executable, "-c", _ACTOR], env=env, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_test)


def test_an_actor_whose_nodectl_is_not_its_grandparent_dies_at_once() -> None:
    """supervisord died between spawning an actor and the actor's prctl (nodectl SIGKILLed
    meanwhile): the actor's parent is then no child of the nodectl named in its environment."""
    stranger = subprocess.Popen(["sleep", "30"], preexec_fn=die_with_test)
    try:
        actor = _actor(stranger.pid)
        assert actor.wait(timeout=20) == -signal.SIGKILL
        assert actor.stdout is not None and actor.stdout.read() == ""
    finally:
        stranger.kill()
        stranger.wait()


def test_an_actor_under_its_nodectl_lives() -> None:
    """Our parent's parent (this test's pytest process) is the nodectl named: the actor lives."""
    actor = _actor(os.getppid())
    try:
        assert actor.stdout is not None and actor.stdout.readline().strip() == "alive"
        assert actor.poll() is None
    finally:
        actor.kill()
        actor.wait()
