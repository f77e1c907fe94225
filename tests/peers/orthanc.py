"""An Orthanc peer for tests: generated configuration, free ports, stopped by PID.

Usage in a test module::

    from tests.peers.orthanc import Orthanc, orthanc_available

    @pytest.fixture(scope="module")
    def orthanc(tmp_path_factory):
        with Orthanc.start(tmp_path_factory.mktemp("orthanc"),
                           modalities={"NODE": ("NODE", "127.0.0.1", 11112)}) as peer:
            yield peer

    def test_x(orthanc):
        ... send to ("127.0.0.1", orthanc.dicom_port, called AE orthanc.aet) ...
        assert len(orthanc.rest.instances()) == 3

The configuration is a JSON file written into the temporary directory; storage and index
live there too, so each peer starts empty and leaves nothing behind. ``extra`` entries
are merged last, for tests that need more (Storage Commitment options, ``DicomCheckCalledAet``).
Orthanc binds its DICOM port on every interface (1.10 has no bind address option); the HTTP
server answers only 127.0.0.1 (``RemoteAccessAllowed`` false), and tests only use loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import free_port, start_process, stop_process, wait_for_port

ORTHANC_BIN = "/usr/sbin/Orthanc"
START_TIMEOUT = 30.0  # seconds until the REST API must answer


def orthanc_available() -> bool:
    """True when Debian's Orthanc binary is installed (tests skip otherwise)."""
    return os.access(ORTHANC_BIN, os.X_OK)


@dataclass(frozen=True, slots=True)
class OrthancRest:
    """A few REST calls over urllib: enough to check what arrived and fetch it."""

    base: str  # http://127.0.0.1:<port>
    timeout: float = 10.0

    def get(self, path: str) -> bytes:
        """GET ``path`` and return the body; raises ``urllib.error.URLError`` on failure."""
        with urllib.request.urlopen(self.base + path, timeout=self.timeout) as rsp:
            return rsp.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def post_json(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as rsp:
            return json.loads(rsp.read() or b"null")

    def delete(self, path: str) -> None:
        req = urllib.request.Request(self.base + path, method="DELETE")
        with urllib.request.urlopen(req, timeout=self.timeout):
            pass

    def alive(self) -> bool:
        """True once ``/system`` answers."""
        try:
            self.get_json("/system")
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(self.get_json("/instances"))

    def tags(self, instance_id: str) -> dict[str, Any]:
        """``simplified-tags`` of one instance: {keyword: value}."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def file(self, instance_id: str) -> bytes:
        """The stored DICOM file of one instance, as Orthanc wrote it."""
        return self.get(f"/instances/{instance_id}/file")

    def sop_instance_uids(self) -> dict[str, str]:
        """{SOP Instance UID: Orthanc ID} for every stored instance."""
        return {self.tags(iid)["SOPInstanceUID"]: iid for iid in self.instances()}

    def clear(self) -> None:
        """Delete every patient, so a module-scoped peer can serve several tests."""
        for patient in self.get_json("/patients"):
            self.delete(f"/patients/{patient}")


@dataclass(slots=True)
class Orthanc:
    """A running Orthanc: its ports, AE title, directory, process and REST client."""

    directory: Path
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def rest(self) -> OrthancRest:
        return OrthancRest(f"http://127.0.0.1:{self.http_port}")

    @property
    def log(self) -> Path:
        return self.directory / "orthanc.log"

    @staticmethod
    def configuration(
        directory: Path,
        *,
        aet: str,
        dicom_port: int,
        http_port: int,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The generated configuration: everything in ``directory``, plugins and Lua off.

        ``modalities`` maps a symbolic name to (AE title, host, port), Orthanc's
        ``DicomModalities`` format.
        """
        config: dict[str, Any] = {
            "Name": f"test-{aet}",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "WebDavEnabled": False,
            "OrthancExplorerEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScpTimeout": 30,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "DicomModalities": {
                name: list(entry) for name, entry in (modalities or {}).items()
            },
        }
        config.update(extra or {})
        return config

    @classmethod
    @contextmanager
    def start(
        cls,
        directory: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra: Mapping[str, Any] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> Iterator["Orthanc"]:
        """Start Orthanc, wait until its REST API answers, yield it, stop it by PID."""
        directory.mkdir(parents=True, exist_ok=True)
        config = cls.configuration(
            directory, aet=aet, dicom_port=free_port(), http_port=free_port(),
            modalities=modalities, extra=extra,
        )
        config_path = directory / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        proc = start_process([ORTHANC_BIN, str(config_path)], cwd=directory, log=directory / "orthanc.log")
        peer = cls(directory, aet, config["DicomPort"], config["HttpPort"], proc, config)
        try:
            peer.wait_ready(timeout)
            yield peer
        finally:
            stop_process(proc)

    def wait_ready(self, timeout: float) -> None:
        """Poll the REST API under a deadline; fail early, with its log, if Orthanc died."""
        deadline = time.monotonic() + timeout
        rest = self.rest
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if rest.alive():
                wait_for_port(self.dicom_port, timeout=max(0.5, deadline - time.monotonic()))
                return
            time.sleep(0.1)
        raise TimeoutError(f"Orthanc REST API not answering after {timeout} s")
