"""A whole node as threads of one process, over ``inproc://`` endpoints.

For a CLI tool that needs a small node of its own (``nodectl stcomscu`` in server or
combined mode): the same actor code as under supervisor, sharing one ZeroMQ context, with no
supervisor and no restarts: if a thread dies, ``InprocNode`` reports it and the tool ends.

    with InprocNode(config) as node:
        host, port = node.address()
        ...
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from collections.abc import Callable

import zmq

from actors import listener, worker, writer
from node.config import NodeConfig
from node.errors import NodeError

log = logging.getLogger("actors.inproc")

READY_TIMEOUT_S = 15.0


class InprocNode:
    """Writer, workers and listeners as daemon threads; ``stop()`` ends them all."""

    def __init__(self, config: NodeConfig, extra: dict[str, Callable[[NodeConfig, threading.Event, zmq.Context], object]] | None = None) -> None:
        self.config = replace(config, transport="inproc")
        self.ctx = zmq.Context()
        self.stop_event = threading.Event()
        # The writer stops last: its final pass reads what the workers journaled until they ended
        # (node/worker_journal.py), so every acknowledged instance is at its final path when stop() returns.
        self.writer_stop = threading.Event()
        self.writer_thread: threading.Thread | None = None
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.extra = extra or {}

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the owner, which decides to stop
                log.exception("%s died", name)
                self.errors.append(exc)
                self.stop_event.set()
                self.writer_stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def start(self) -> "InprocNode":
        """Start every actor, writer first (bound sockets before connecting ones)."""
        cfg, stop, ctx = self.config, self.stop_event, self.ctx
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("writer", lambda: writer.run(cfg, self.writer_stop, ctx))
        self.writer_thread = self.threads[-1]
        for name, run in self.extra.items():
            self._spawn(name, lambda run=run: run(cfg, stop, ctx))
        for lc in cfg.listeners:
            self._spawn(f"listener-{lc.key}", lambda lc=lc: listener.run(cfg, lc, stop, ctx))
        for n in range(cfg.workers):
            self._spawn(f"worker-{n}", lambda n=n: worker.run(cfg, str(n), stop, ctx))
        self._await_ready()
        return self

    def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.errors:
                self.stop()
                raise NodeError(f"in-process node failed to start: {self.errors[0]}")
            if all(self.config.ready_path(lc).exists() for lc in self.config.listeners):
                return
            time.sleep(0.02)
        self.stop()
        raise NodeError(f"in-process node not ready within {READY_TIMEOUT_S:.0f} s")

    def address(self, index: int = 0) -> tuple[str, int]:
        """The bound address of a listener (its port may have been chosen by the kernel)."""
        host, port = self.config.ready_path(self.config.listeners[index]).read_text().split()
        return host, int(port)

    def stop(self, timeout: float = 20.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread is not self.writer_thread:
                thread.join(max(0.0, deadline - time.monotonic()))
        self.writer_stop.set()
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in self.threads):
            self.ctx.term()  # only when every socket is closed, or term() would block

    def __enter__(self) -> "InprocNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
