"""supervisord as ``nodectl`` runs it: the same program, woken by signals instead of a 1 s tick.

supervisord's main loop polls its descriptors with a fixed 1 s timeout, and a signal does
not cut that wait short (Python retries ``poll`` after EINTR). It notices a child that
exited, or the SIGTERM asking it to stop, only at the next tick; and it stops its programs
one priority group per tick (listeners, then workers, then the tracker, then the writer),
so an idle node took about 4 s to go away, and its first programs were spawned only after
the first full tick. Here, before supervisord's own ``main``:

- ``signal.set_wakeup_fd`` makes every signal supervisord handles (SIGCHLD, SIGTERM,
  SIGINT, SIGHUP) write a byte to a pipe, and its poller watches that pipe too, so the loop
  runs as soon as a child exits or a stop is asked for;
- the very first poll does not wait, so the programs are spawned at once.

Everything else (programs, priorities, stop order, restarts, XML-RPC) is supervisord's.
Usage: ``python -m node.tools._supervisord -n -c FILE`` (the arguments of supervisord).
"""

from __future__ import annotations

import os
import signal
import sys


def install() -> None:
    """Patch supervisord's poller class; call in the main thread, before ``main``."""
    from supervisor import poller as pollers

    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    cls = pollers.Poller
    original = cls.poll
    state = {"first": True}

    def poll(self: object, timeout: float) -> tuple[list[int], list[int]]:
        if read_end not in self.readables:  # type: ignore[attr-defined]
            self.register_readable(read_end)  # type: ignore[attr-defined]
        if state["first"]:
            state["first"] = False
            timeout = 0
        readable, writable = original(self, timeout)
        if read_end in readable:
            try:
                while os.read(read_end, 512):
                    pass
            except BlockingIOError:
                pass
            readable = [fd for fd in readable if fd != read_end]
        return readable, writable

    cls.poll = poll  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    from supervisor import supervisord

    install()
    supervisord.main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
