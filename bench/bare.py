"""The floor under ``nodectl serve``: the node's engine and one durable write per instance, nothing else.

``python -m bench ingest`` runs this receiver (``bare``, and ``bare-noflush`` without the write's
flush) beside the node, so one run shows how far the node's own work per instance (the
dataset's checks, its path, the journal record, the group commit, metrics, the process
layout) keeps it from what Python with this engine and one flush per acknowledged instance
can do on the machine, and how much of DCMTK's lead is the flush itself.

One thread per association (the node's association shells do the same), no checks, no
files at final paths, no index: each complete C-STORE dataset is written into one journal
file that was filled with zeros when the receiver started (as the node's journals write into
blocks already allocated), with one ``pwritev2(RWF_DSYNC)`` (none under ``--no-flush``), and
then answered with Success. Every abstract syntax and transfer syntax is accepted. Not a
storage SCP anyone should run: the instances stay in the journal and are overwritten when it
wraps. The count of instances answered is written to ``<directory>/stored`` at the end of
every association (the harness's check that all arrived). ``--processes N`` spreads the
associations over N processes, each with a journal and a count of its own (``stored-N``),
as the node spreads them over its workers; ``--group`` gathers the writes of a process's
associations into one flush, as the node's worker journal does. ``--shared`` (with
``--processes``) is the journal shared by worker processes that the node does not have: the
processes write into regions of one file, and a flush of that file by one process covers the
groups every other process had written when it began (``SharedFlush``)::

    python bench/bare.py PORT DIRECTORY [--no-flush] [--group [--shared]] [--processes N]
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from node import ul
from node.config import NetworkConfig

JOURNAL_BYTES = 64 << 20
ZEROS = bytes(1 << 20)
READ_SIZE = 1 << 16


def zero_filled(path: Path, size: int) -> None:
    """A file of ``size`` zero bytes, flushed: writes into it allocate nothing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(ZEROS)):
            os.write(fd, ZEROS)
        os.fsync(fd)
    finally:
        os.close(fd)


class SharedFlush:
    """One flush of a file shared by several processes covers what each had written before it.

    A shared page (``counters``, mapped before the fork) holds two numbers per process: the
    groups it has written into the page cache, and the groups known to be flushed. After its
    write, a process takes the lock file's ``flock``; if a flush that began after that write
    has already covered it, it is done; else it notes what every process has written, runs
    ``fdatasync`` (which flushes every page of the file dirtied before the call, whoever wrote
    it) and marks all of that flushed. PostgreSQL's WAL group commit, across processes.
    """

    _U64 = struct.Struct("<Q")

    def __init__(self, lock_path: Path, counters: mmap.mmap, index: int, processes: int) -> None:
        self.lock_fd = os.open(lock_path, os.O_RDWR)  # per process: flock excludes open file descriptions
        self.counters = counters
        self.index = index
        self.processes = processes

    def _get(self, process: int, slot: int) -> int:
        return self._U64.unpack_from(self.counters, 16 * process + 8 * slot)[0]

    def _set(self, process: int, slot: int, value: int) -> None:
        self._U64.pack_into(self.counters, 16 * process + 8 * slot, value)

    def after_write(self, fd: int) -> None:
        """Return once this process's last write (already returned) is flushed."""
        mine = self._get(self.index, 0) + 1
        self._set(self.index, 0, mine)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            if self._get(self.index, 1) >= mine:
                return
            written = [self._get(n, 0) for n in range(self.processes)]
            os.fdatasync(fd)
            for n, upto in enumerate(written):
                self._set(n, 1, max(upto, self._get(n, 1)))
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)


class Journal:
    """Where each instance goes: the next free bytes of one zero-filled file, wrapping at its end.

    With ``group``, the associations' writes are gathered as the node's worker journal
    gathers them (without its wait for siblings): a writer that finds no flush under way
    writes everything queued so far with one ``pwritev2(RWF_DSYNC)``; the others wait for it.
    With ``shared``, the journal is region ``base`` of a file other processes write too, and
    each write is followed by the flush they share instead of carrying ``RWF_DSYNC``.
    """

    def __init__(self, path: Path, flush: bool, group: bool = False, shared: SharedFlush | None = None, base: int = 0) -> None:
        if shared is None:
            zero_filled(path, JOURNAL_BYTES)
        self.fd = os.open(path, os.O_RDWR)
        self.base = base
        self.shared = shared if flush else None
        self.flags = os.RWF_DSYNC if flush and shared is None else 0
        self.group = group
        self.offset = 0
        self.stored = 0
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.queue: list[list[bytes]] = []
        self.flushing = False
        self.written = 0  # groups written: a waiter's group is done once this passes its number

    def write(self, parts: list[bytes]) -> None:
        """One write of the dataset's fragments (alone or in a group); durable on return unless ``--no-flush``."""
        if len(parts) > 256:  # under IOV_MAX (1024) whatever the fragment size
            parts = [b"".join(parts)]
        if self.group:
            self._write_in_group(parts)
        else:
            self._write_at(parts, self._reserve(sum(len(p) for p in parts)))
        with self.lock:
            self.stored += 1

    def _reserve(self, size: int) -> int:
        with self.lock:
            if self.offset + size > JOURNAL_BYTES:
                self.offset = 0
            offset = self.offset
            self.offset += size
            return offset

    def _write_at(self, parts: list[bytes], offset: int) -> None:
        os.pwritev(self.fd, parts, self.base + offset, self.flags)
        if self.shared is not None:
            self.shared.after_write(self.fd)

    def _write_in_group(self, parts: list[bytes]) -> None:
        with self.done:
            self.queue.append(parts)
            mine = self.written + (1 if self.flushing else 0)  # the group that will hold these parts
            while self.flushing and self.written <= mine:
                self.done.wait()
            if self.written > mine:
                return
            self.flushing, group, self.queue = True, self.queue, []
        buffers = [b for entry in group for b in entry]
        if len(buffers) > 1000:  # IOV_MAX is 1024
            buffers = [b"".join(buffers)]
        self._write_at(buffers, self._reserve(sum(len(b) for b in buffers)))
        with self.done:
            self.flushing = False
            self.written += 1
            self.done.notify_all()


def serve_association(conn: socket.socket, journal: Journal, policy: ul.AcceptorPolicy, count_file: Path) -> None:
    """Accept, then answer each C-STORE once its dataset is written (and C-ECHO at once)."""
    engine = ul.Association(ul.Role.ACCEPTOR)
    command: ul.Command | None = None
    parts: list[bytes] = []
    try:
        while engine.state is not ul.State.STA1:
            data = conn.recv(READ_SIZE)
            engine.receive_data(data)
            for event in engine.events():
                if isinstance(event, ul.AssociateRequest):
                    conn.sendall(engine.send(ul.negotiate(event, policy)))
                elif isinstance(event, ul.Command):
                    command, parts = event, []
                    if isinstance(event.message, ul.CEchoRQ):
                        conn.sendall(engine.send_message(event.context_id, ul.CEchoRSP(
                            message_id_being_responded_to=event.message.message_id, status=0,
                            affected_sop_class_uid=event.message.affected_sop_class_uid)))
                elif isinstance(event, ul.DatasetFragment):
                    parts.append(event.data)
                    if event.last and command is not None:
                        journal.write(parts)
                        rq = command.message
                        conn.sendall(engine.send_message(command.context_id, ul.CStoreRSP(
                            message_id_being_responded_to=rq.message_id, status=0,  # type: ignore[union-attr]
                            affected_sop_class_uid=rq.affected_sop_class_uid,  # type: ignore[union-attr]
                            affected_sop_instance_uid=rq.affected_sop_instance_uid)))  # type: ignore[union-attr]
                elif isinstance(event, ul.ReleaseRequest):
                    conn.sendall(engine.send(ul.ReleaseReply()))
            if not data:
                break
    except (OSError, ul.ProtocolViolation, ul.LocalProtocolError):
        pass
    finally:
        conn.close()
        with journal.lock:
            tmp = count_file.with_suffix(".tmp")
            tmp.write_text(str(journal.stored))
            tmp.replace(count_file)


def serve(connections: Iterator[socket.socket], journal: Journal, count_file: Path) -> None:
    """One process's associations, each in a thread, into its own journal and count file."""
    policy = ul.AcceptorPolicy(contexts=ul.AcceptEverything(), max_pdu=NetworkConfig().max_pdu_receive)
    count_file.write_text("0")
    for conn in connections:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_association, args=(conn, journal, policy, count_file), daemon=True).start()


def accepted(server: socket.socket) -> Iterator[socket.socket]:
    while True:
        yield server.accept()[0]


def handed(channel: socket.socket) -> Iterator[socket.socket]:
    """Connections the parent hands over (``socket.send_fds``); ends when the parent is gone."""
    while True:
        _, fds, _, _ = socket.recv_fds(channel, 1, 1)
        if not fds:
            os._exit(0)
        yield socket.socket(fileno=fds[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/bare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--no-flush", action="store_true", help="write without RWF_DSYNC (nothing waits for the disk)")
    parser.add_argument("--group", action="store_true", help="one flush for the writes of all associations waiting meanwhile")
    parser.add_argument("--processes", type=int, default=1,
                        help="receiving processes, each with its journal; the first accepts and hands connections round")
    parser.add_argument("--shared", action="store_true",
                        help="with --processes: one journal file for all, one flush covering every process's writes")
    opts = parser.parse_args(argv)
    if opts.shared and (opts.processes <= 1 or not opts.group):
        parser.error("--shared needs --group (one flushing thread per process) and --processes 2 or more")
    opts.directory.mkdir(parents=True, exist_ok=True)
    # Every journal is filled before the port opens: the harness starts its clock once it can connect.
    names = [""] if opts.processes <= 1 else [f"-{n}" for n in range(opts.processes)]
    counts = [opts.directory / f"stored{name}" for name in names]
    if opts.shared:
        zero_filled(opts.directory / "journal", JOURNAL_BYTES * len(names))
        (opts.directory / "journal.lock").write_bytes(b"")
        counters = mmap.mmap(-1, 16 * len(names))  # anonymous and shared: inherited by the forks
    else:
        journals = [Journal(opts.directory / f"journal{name}", flush=not opts.no_flush, group=opts.group) for name in names]
    if len(names) == 1:
        serve(accepted(socket.create_server(("127.0.0.1", opts.port), backlog=64)), journals[0], counts[0])
        return 0
    channels = []
    for n, count_file in enumerate(counts):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.fork() == 0:
            ours.close()
            if opts.shared:
                shared = SharedFlush(opts.directory / "journal.lock", counters, n, len(names))
                journal = Journal(opts.directory / "journal", flush=not opts.no_flush, group=opts.group, shared=shared,
                                  base=n * JOURNAL_BYTES)
            else:
                journal = journals[n]
            serve(handed(theirs), journal, count_file)
            os._exit(0)
        theirs.close()
        channels.append(ours)
    server = socket.create_server(("127.0.0.1", opts.port), backlog=64)
    for n, conn in enumerate(accepted(server)):
        socket.send_fds(channels[n % len(channels)], [b"c"], [conn.fileno()])
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
