"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, ``postgres`` in the
foreground on a free loopback port, stopped by its PID.

PostgreSQL refuses to run as root, so under root the server runs as the Debian package's
``postgres`` user (``Popen(user=...)``: the PID we hold is the server's own, no ``runuser``
in between). The data directory lives under /tmp, not pytest's tmp_path, because the latter
is private to root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, stop_process

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
START_TIMEOUT_S = 30.0


def binary(name: str) -> str | None:
    """``initdb``/``postgres`` from PATH or Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    for directory in BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return None


def missing() -> str:
    """Why a PostgreSQL server cannot be started here ('' when it can)."""
    if binary("initdb") is None or binary("postgres") is None:
        return "PostgreSQL is not installed (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return ""


@dataclass
class Postgres:
    """A running server: its URL and the process we started."""

    url: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.directory / "postgres.log").read_text(errors="replace")


def _as_user() -> dict[str, object]:
    """Popen arguments that drop root to the postgres user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# Tests need no durability from their throwaway server; a benchmark passes fsync="on".
DEFAULT_SETTINGS = {"fsync": "off", "max_connections": "100"}


@contextmanager
def running_postgres(settings: Mapping[str, str] | None = None) -> Iterator[Postgres]:
    """initdb, start, wait until it answers, yield; stop by PID and remove the directory.

    ``settings`` (``-c name=value``) are added to DEFAULT_SETTINGS or override them
    (``bench cluster``: fsync on, pg_stat_statements preloaded)."""
    # dir: /tmp itself, not tempfile.tempdir (an in-process worker points that at its spool)
    directory = Path(tempfile.mkdtemp(prefix="nodectl-pg-", dir="/tmp"))
    drop = _as_user()
    if drop:
        os.chown(directory, drop["user"], drop["group"])  # type: ignore[arg-type]
    data = directory / "data"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "HOME": str(directory)}
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([binary("initdb"), "-D", str(data), "-U", "nodectl", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=60, env=env, cwd=directory, **drop)  # type: ignore[call-overload]
        log = open(directory / "postgres.log", "wb")
        proc = subprocess.Popen(
            [binary("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(directory),
             *(arg for name, value in {**DEFAULT_SETTINGS, **(settings or {})}.items() for arg in ("-c", f"{name}={value}"))],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=directory,
            start_new_session=True, **drop,  # type: ignore[arg-type]
        )
        log.close()
        url = f"postgresql://nodectl@127.0.0.1:{port}/postgres"
        _wait_ready(url, proc, directory)
        yield Postgres(url=url, port=port, directory=directory, proc=proc)
    finally:
        if proc is not None:
            stop_process(proc, grace=20)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], directory: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("postgres exited: " + (directory / "postgres.log").read_text(errors="replace")[-2000:])
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise TimeoutError(f"PostgreSQL did not answer within {START_TIMEOUT_S} s")


def create_database(url: str, name: str) -> str:
    """A fresh database on the server of ``url``; returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"
