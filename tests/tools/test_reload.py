"""``nodectl serve`` on SIGHUP: a listener added and removed, live settings re-read, while an
association stays open and working throughout."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from node import config as configuration
from tests.nodes import RunningNode
from tests.support import associate_or_rejection, free_port, wait_for_port, wait_until

VERIFICATION = "1.2.840.10008.1.1"


def write_config(path: Path, ports: list[int], max_associations: int) -> None:
    listeners = "".join(f"[[listeners]]\nport = {p}\nhost = \"127.0.0.1\"\naet = \"NODE\"\n" for p in ports)
    path.write_text(f"""
[node]
aet = "NODE"
workers = 1
run_dir = "run"
{listeners}
[network]
max_associations = {max_associations}
[[peers]]
aet = "LATER"
host = "127.0.0.1"
port = 104
""")


def closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_sighup_adds_and_removes_a_listener_without_dropping_an_association(tmp_path: Path) -> None:
    from pynetdicom import AE

    first, second = free_port(), free_port()
    conf = tmp_path / "node.toml"
    write_config(conf, [first], 64)
    node = RunningNode(["serve", "--config", str(conf)], cwd=tmp_path, port=first).wait_ready()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", first, ae_title="NODE")
    try:
        assert assoc.is_established
        workers = {p.pid for p in node.children("run worker")}

        write_config(conf, [first, second], 32)
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for_port(second, timeout=20)
        wait_until(lambda: node.log().count("configuration reloaded from") >= 2, 10, "tracker and listener to re-read the file")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        other = ae.associate("127.0.0.1", second, ae_title="NODE")  # the worker learns of the new listener
        assert other.is_established and other.send_c_echo().Status == 0
        other.release()
        effective = configuration.load_file(configuration.short_run_dir(tmp_path / "run") / "node.toml")
        assert [lc.port for lc in effective.listeners] == [first, second] and effective.network.max_associations == 32

        write_config(conf, [first], 32)
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_until(lambda: closed(second), 20, "the removed listener's port to close")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assert {p.pid for p in node.children("run worker")} == workers  # no worker restarted

        conf.write_text("[node]\nworkers = 0\n")  # invalid: refused, the node goes on as it was
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in node.log(), 10, "the bad configuration to be refused")
        assert assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()
        assert node.stop() == 0


def test_sighup_reloads_the_access_table_in_the_workers(tmp_path: Path) -> None:
    """A calling AE refused by ``[access.allowed]`` is admitted after the table is edited and
    SIGHUP sent, by the same worker process (no restart)."""
    from pynetdicom import AE

    port = free_port()
    conf = tmp_path / "node.toml"

    def write(allowed: list[str]) -> None:
        write_config(conf, [port], 64)
        conf.write_text(conf.read_text() + f"[access.allowed]\nNODE = {allowed!r}\n".replace("'", '"'))

    write(["MODALITY"])
    node = RunningNode(["serve", "--config", str(conf)], cwd=tmp_path, port=port).wait_ready()
    try:
        # nodectl signals only programs supervisord reports RUNNING (startsecs=1): a SIGHUP in
        # the first second after the port opens would reach nobody ("signalled -").
        wait_until(lambda: all(time.time() - p.create_time() > 1.5 for p in node.children(" run ")), 20,
                   "every actor past supervisord's startsecs")
        workers = {p.pid for p in node.children("run worker")}
        ae = AE(ae_title="LATECOMER")
        ae.add_requested_context(VERIFICATION)
        _, rejected = associate_or_rejection(ae, "127.0.0.1", port, ae_title="NODE")
        assert rejected == (1, 1, 3)

        write(["MODALITY", "LATECOMER"])
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_until(lambda: "access rules reloaded" in node.log(), 20, "the worker to re-read the access table")
        admitted = ae.associate("127.0.0.1", port, ae_title="NODE")
        assert admitted.is_established and admitted.send_c_echo().Status == 0
        admitted.release()
        assert {p.pid for p in node.children("run worker")} == workers
    finally:
        assert node.stop() == 0
