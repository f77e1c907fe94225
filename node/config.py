"""The node's configuration: a TOML file, then the environment, then the command line.

``load()`` returns a frozen ``NodeConfig`` that is passed around, never stored in a global.
Every process of a node reads the same effective configuration: ``nodectl serve`` writes it
to ``<run_dir>/node.toml`` and starts each actor with ``--config`` pointing there, so a
listener, the workers and the writer cannot disagree about the store or the endpoints.

File layout (every key optional; the embedded defaults run a node on port 11112)::

    [node]
    aet = "NODE"            # our AE title
    directory = "store"     # the store, relative to the config file's directory
    database = "node.sqlite"
    workers = 2             # association worker processes (default: CPU count)
    run_dir = ".nodectl"    # ipc sockets, pid and ready files
    transport = "ipc"       # ipc | tcp | inproc (threads of one process)

    [[listeners]]           # one listener process per entry
    port = 11112
    host = ""               # bind address, "" = all interfaces
    aet = "NODE"            # called AE title required by this listener ("" = any)
    accept = []             # calling AE titles allowed (empty = any)

    [store]   filepath, ignore, status, delays, rename retries, inline threshold
    [network] PDU sizes, timeouts, TCP options, association limit
    [services] accept_unknown, sop_classes, verification transfer syntaxes
    [bus]     explicit endpoints (tcp://...) overriding the ones derived from run_dir
    [tls]     certificate, key, ca, protocols, ciphers, require_client_cert (PEM files),
              key_password, crl_check, dh_params
    [access]  allowed = { CALLED = ["CALLING", ...] }: calling AE titles per called AE title
    [metrics] enabled, host, port: the node's Prometheus endpoint (docs/operations.md)
    [cluster] node_id, endpoint (tcp://): this node among those sharing one PostgreSQL index

Environment: ``NODECTL_CONFIG`` names the file; ``NODECTL_AET``, ``NODECTL_PORT``,
``NODECTL_DIRECTORY``, ``NODECTL_DATABASE``, ``NODECTL_WORKERS``, ``NODECTL_RUN_DIR``
override single values (the Procfile's processes are pointed at a test's ports this way).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node.errors import ConfigError

DEFAULT_PORT = 11112
DEFAULT_AET = "NODE"
# A Unix socket where `nodectl` hands its listeners the ports it bound (node/tools/_lifetime.py).
LISTEN_FROM_ENV = "NODECTL_LISTEN_FROM"
# ipc:// endpoints are Unix socket paths, limited to 107 bytes by the kernel.
_MAX_IPC_PATH = 100

IMPLICIT_VR_LE = "1.2.840.10008.1.2"


@dataclass(frozen=True)
class ListenerConfig:
    """One listening port and the association policy that applies to it."""

    port: int = DEFAULT_PORT
    host: str = ""
    aet: str = ""
    accept: tuple[str, ...] = ()
    name: str = ""
    tls: bool = False  # wrap this listener's associations in TLS ([tls] section)

    @property
    def key(self) -> str:
        """A stable name used for endpoints and process names."""
        return self.name or str(self.port)


@dataclass(frozen=True)
class StoreConfig:
    """Where and how received instances are written (dcm4che storescp's storage options)."""

    filepath: str = ""
    ignore: bool = False
    status: int = 0x0000
    receive_delay: tuple[int, ...] = ()
    response_delay: tuple[int, ...] = ()
    rename_retries: int = 3
    rename_retry_jitter: int = 50
    # Datasets up to this size travel to the writer in the message and into its journal (one
    # flush per group); larger ones are spooled by the worker and take the direct path (three
    # flushes). 1 MiB takes 512 KiB CT images through the journal: 0.93x -> 1.17x Orthanc's
    # MB/s, 3.01 -> 1.2 flushes an instance (docs/benchmarks.md, 2026-12-02 14:37).
    inline_threshold: int = 1024 * 1024
    duplicates: str = "overwrite"
    # Issue 12: a success waits for one journal flush shared by the group; files reach their
    # final paths in background batches: at most every materialise_interval seconds while
    # instances keep coming (sooner once 16 MiB wait), at once when none came for
    # materialise_idle seconds (a batch costs ~4 flushes: fewer batches, fewer flushes per
    # instance; at 0.2 s they were 1-2% of the flushes on one association).
    journal: bool = True
    materialise_interval: float = 1.0
    materialise_idle: float = 0.2
    # With two or more associations storing, a group waits this long for more requests
    # before its flush (PostgreSQL's commit_delay); 0 turns it off.
    commit_delay: float = 0.003
    # Each worker journals the inline instances it receives itself and answers after its own
    # flush (node/worker_journal.py); the writer materialises from the workers' journals.
    # Only under duplicates = overwrite (keep and reject need the writer's view of the store).
    worker_journal: bool = True


@dataclass(frozen=True)
class NetworkConfig:
    """Association-level limits and timers; milliseconds follow dcm4che, seconds pynetdicom."""

    # 128 KiB (DCMTK's and Orthanc's upper bound) rather than dcm4che's 16378: a peer then
    # sends a 512 KiB dataset in 5 PDUs instead of 33, fewer reads and passes through the
    # upper layer for the worker (receiver CPU per 512 KiB instance 0.6-0.7 ms less:
    # docs/benchmarks.md, 2026-12-02). ``nodectl storescp`` keeps dcm4che's 16378.
    max_pdu_receive: int = 131072
    max_pdu_send: int = 16378
    max_associations: int = 64
    worker_capacity: int = 16
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    request_timeout_ms: int = 0
    idle_timeout_ms: int = 0
    release_timeout_ms: int = 0
    soclose_delay_ms: int = 50
    send_buffer: int = 0
    receive_buffer: int = 0
    tcp_nodelay: bool = True
    write_timeout: float = 30.0
    max_associations_per_aet: int = 0  # node-wide cap per calling AE title (0 = none)
    max_pending: int = 256  # per worker: connected peers that have not sent their A-ASSOCIATE-RQ yet
    # Asynchronous operations window offered to requestors that propose one (dcm4che's
    # --max-ops-invoked/--max-ops-performed, 0 = unlimited); 1 and 1: no window, one at a time.
    max_ops_invoked: int = 1
    max_ops_performed: int = 1


@dataclass(frozen=True)
class ServicesConfig:
    """Which SOP classes and transfer syntaxes the node accepts."""

    storage: bool = True
    accept_unknown: bool = False
    sop_classes: str = ""
    verification_transfer_syntaxes: tuple[str, ...] = (IMPLICIT_VR_LE,)
    commitment_only: bool = False  # accept Verification and Storage Commitment only (stcomscu)


@dataclass(frozen=True)
class TlsConfig:
    """TLS for listeners with ``tls = true`` (dcm4che storescp's --tls options, PEM files).

    ``protocols`` are ssl.TLSVersion names (TLSv1.2, TLSv1.3); ``ciphers`` an OpenSSL cipher
    string for TLS 1.2 (TLS 1.3 suites are OpenSSL's); ``ca`` the trust store for client
    certificates, required when ``require_client_cert``.
    """

    certificate: str = ""
    key: str = ""  # empty: the key is in the certificate's PEM file
    ca: str = ""
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str = ""
    require_client_cert: bool = False
    handshake_timeout: float = 10.0
    key_password: str = ""  # the key file is encrypted (PEM) under this password
    crl_check: str = ""  # "leaf" or "chain": CRLs in ``ca`` are checked (OpenSSL's CRL flags)
    dh_params: str = ""  # DH parameters file for DHE suites (OpenSSL's defaults if empty)


@dataclass(frozen=True)
class AccessConfig:
    """Calling AE titles allowed per called AE title: ``[access.allowed] NODE = ["MOD1"]``.

    A called AE title not in the table is open to every calling AE (the listener's own
    ``accept`` list still applies); refusals are answered A-ASSOCIATE-RJ (1, 1, 3).
    """

    allowed: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BusConfig:
    """Explicit endpoints; empty means derived from ``run_dir`` and ``transport``."""

    writer: str = ""
    tracker: str = ""  # the commitment tracker's ROUTER
    events: str = ""  # the commitment tracker's PUB (transaction ended)


@dataclass(frozen=True)
class PeerConfig:
    """A remote AE the node may have to call back (Storage Commitment reports): ``[[peers]]``.

    ``tls = true``: the association to it is TLS; ``ca`` is the trust store for the peer's
    certificate (required: a report is never sent to an unverified peer), ``certificate`` and
    ``key`` the node's client certificate (empty: ``[tls]``'s, and none when that is empty
    too), ``server_name`` the name the peer's certificate must carry (empty: ``host``).
    """

    aet: str
    host: str
    port: int
    tls: bool = False
    ca: str = ""
    certificate: str = ""
    key: str = ""
    server_name: str = ""


@dataclass(frozen=True)
class CommitmentConfig:
    """Storage Commitment: deadlines, the outbox's retry schedule, limits (seconds)."""

    transaction_timeout: float = 3600.0  # SCU side: a transaction without report expires
    same_association: bool = True  # SCP side: try the report on the N-ACTION's association first
    same_association_grace: float = 10.0  # ... and leave the outbox alone this long meanwhile
    retry_base: float = 1.0  # outbox back-off: 1, 2, 4, ... seconds
    retry_max: float = 60.0
    report_expiry: float = 86400.0  # an undelivered report is given up after this long
    orphan_window: float = 600.0  # a report for an unknown transaction is kept this long
    max_instances: int = 50_000  # more in one N-ACTION: 0x0213 Resource limitation
    request_timeout: float = 10.0  # worker -> tracker
    role_reject: bool = False  # refuse report associations without SCP role selection
    association_timeout: float = 30.0  # outbox sender: ACSE/DIMSE timeouts
    accept_unknown: bool = False  # answer 0x0000 to reports of transactions never recorded (stcomscu server)
    # SCP side, issue 16: how far a node checks before it reports an instance committed.
    # "file": the file is present with its size and checksum (on this node, or the owning
    # node's writer is asked over the bus); "index": the row in the (shared) index is proof.
    verify: str = "file"
    verify_timeout: float = 2.0  # an owning node that does not answer in this long: failed (0x0110)


@dataclass(frozen=True)
class ClusterConfig:
    """Issue 16: who this node is among the nodes sharing one PostgreSQL index (``[cluster]``).

    ``node_id`` is written into every index row this node stores (default: host name and
    store directory, so two nodes on one host differ). ``endpoint`` is a ``tcp://`` address
    the writer binds for ``VerifyInstances`` from other nodes' trackers and registers in the
    shared database; without it other nodes cannot ask this one (verify="file" then fails
    instances held here unless the store is a shared filesystem).
    """

    node_id: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    """The node's Prometheus endpoint (``[metrics]``): a ``metrics`` program when enabled."""

    enabled: bool = False  # off by default: a fixed port would clash between nodes on one host
    host: str = "127.0.0.1"  # loopback unless a scraper on another host needs it
    port: int = 9464  # 0 = any free port (written to <run_dir>/metrics.ready)


@dataclass(frozen=True)
class NodeConfig:
    """The whole effective configuration of one node."""

    aet: str = DEFAULT_AET
    directory: Path = Path("store")
    database: str = "node.sqlite"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    run_dir: Path = Path(".nodectl")
    transport: str = "ipc"
    log_level: str = "info"
    log_format: str = "text"
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    store: StoreConfig = StoreConfig()
    network: NetworkConfig = NetworkConfig()
    services: ServicesConfig = ServicesConfig()
    bus: BusConfig = BusConfig()
    peers: tuple[PeerConfig, ...] = ()
    commitment: CommitmentConfig = CommitmentConfig()
    metrics: MetricsConfig = MetricsConfig()
    tls: TlsConfig = TlsConfig()
    access: AccessConfig = AccessConfig()
    cluster: ClusterConfig = ClusterConfig()

    @property
    def node_id(self) -> str:
        """This node's name in the shared index (``[cluster] node_id``, else host and store)."""
        if self.cluster.node_id:
            return self.cluster.node_id
        digest = hashlib.sha256(str(self.directory.absolute()).encode()).hexdigest()[:8]
        return f"{os.uname().nodename}-{digest}"

    def peer(self, aet: str) -> PeerConfig | None:
        """The ``[[peers]]`` entry of an AE title (last one wins), or None."""
        for entry in reversed(self.peers):
            if entry.aet == aet:
                return entry
        return None

    @property
    def spool_dir(self) -> Path:
        """Temp and spool files: inside the store so that rename stays on one filesystem."""
        return self.directory / ".incoming"

    def endpoint(self, name: str) -> str:
        """The ZeroMQ endpoint of a bound actor socket (``writer``, ``listener-<key>``)."""
        explicit = getattr(self.bus, name, "") if hasattr(self.bus, name) else ""
        if explicit:
            return explicit
        if self.transport == "inproc":
            return f"inproc://{name}"
        # A listener and its workers pass descriptors, so they always share a host: their
        # channel stays ipc:// under transport "tcp"; only writer/tracker/events cross hosts.
        if self.transport == "ipc" or name.startswith("listener-"):
            return f"ipc://{self.run_dir / name}.ipc"
        raise ConfigError(f"transport {self.transport!r} needs an explicit [bus] {name} endpoint")

    def handoff_path(self, worker: str) -> Path:
        """The Unix socket on which a worker receives accepted connections."""
        return self.run_dir / f"handoff-{worker}.sock"

    def ready_path(self, listener: ListenerConfig) -> Path:
        """The file a listener writes once it accepts connections (holds the bound port)."""
        return self.run_dir / f"listener-{listener.key}.ready"

    @property
    def metrics_ready_path(self) -> Path:
        """The file the metrics actor writes once ``/metrics`` answers (holds the bound port)."""
        return self.run_dir / "metrics.ready"


def write_address(path: Path, host: str, port: int) -> None:
    """Write ``host port`` to a ready file all at once: whoever polls for it never reads half a line."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{host} {port}\n")
    os.replace(tmp, path)


SECTIONS: dict[str, type] = {
    "store": StoreConfig,
    "network": NetworkConfig,
    "services": ServicesConfig,
    "bus": BusConfig,
    "commitment": CommitmentConfig,
    "metrics": MetricsConfig,
    "tls": TlsConfig,
    "access": AccessConfig,
    "cluster": ClusterConfig,
}
_NODE_KEYS = {"aet", "directory", "database", "workers", "run_dir", "transport", "log_level", "log_format"}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a TOML value to the type a dataclass field declares, or raise ConfigError."""
    default = {f.name: f for f in fields(cls)}[name]
    sample = default.default if default.default is not dataclasses.MISSING else default.default_factory()  # type: ignore[misc]
    try:
        if isinstance(sample, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(sample, int):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if isinstance(sample, float):
            return float(value)
        if isinstance(sample, tuple):
            if isinstance(value, (str, int)):
                value = [value]
            return tuple(value)
        if isinstance(sample, Path):
            return Path(value)
        if isinstance(sample, str):
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{cls.__name__}.{name}: bad value {value!r}") from None
    return value


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Build a section dataclass from a TOML table, refusing unknown keys."""
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {', '.join(sorted(unknown))}")
    return cls(**{k: _coerce(cls, k, v) for k, v in table.items()})


def from_mapping(data: Mapping[str, Any], base_dir: Path = Path(".")) -> NodeConfig:
    """Build a NodeConfig from parsed TOML; relative paths are relative to ``base_dir``."""
    unknown = set(data) - {"node", "listeners", "peers", *SECTIONS}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")
    node_table = dict(data.get("node", {}))
    bad = set(node_table) - _NODE_KEYS
    if bad:
        raise ConfigError(f"[node]: unknown key(s) {', '.join(sorted(bad))}")
    kwargs: dict[str, Any] = {k: _coerce(NodeConfig, k, v) for k, v in node_table.items()}
    for key in ("directory", "run_dir"):
        if key in kwargs and not kwargs[key].is_absolute():
            kwargs[key] = base_dir / kwargs[key]
    if "database" in kwargs and "://" not in kwargs["database"] and not Path(kwargs["database"]).is_absolute():
        kwargs["database"] = str(base_dir / kwargs["database"])
    if "listeners" in data:
        kwargs["listeners"] = tuple(_build(ListenerConfig, t, "listeners") for t in data["listeners"])
    if "peers" in data:
        kwargs["peers"] = tuple(_build_peer(t, base_dir) for t in data["peers"])
    for section, cls in SECTIONS.items():
        if section in data:
            kwargs[section] = _build(cls, data[section], section)
    if "tls" in kwargs:
        kwargs["tls"] = _tls_paths(kwargs["tls"], base_dir)
    if "access" in kwargs:
        kwargs["access"] = AccessConfig(allowed={str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in kwargs["access"].allowed.items()})
    return validate(NodeConfig(**kwargs))


def _tls_paths(tls: TlsConfig, base_dir: Path) -> TlsConfig:
    """Certificate, key and CA paths relative to the config file's directory."""
    updates = {name: str(base_dir / value) for name in ("certificate", "key", "ca", "dh_params")
               if (value := getattr(tls, name)) and not Path(value).is_absolute()}
    return replace(tls, **updates) if updates else tls


_PEER_REQUIRED = frozenset({"aet", "host", "port"})
_PEER_TLS = frozenset({"tls", "ca", "certificate", "key", "server_name"})


def _build_peer(table: Mapping[str, Any], base_dir: Path | None = None) -> PeerConfig:
    """A ``[[peers]]`` entry: aet, host and port are all required; the TLS keys are optional,
    their paths relative to the config file's directory."""
    unknown = set(table) - _PEER_REQUIRED - _PEER_TLS
    if unknown or not _PEER_REQUIRED <= set(table):
        raise ConfigError(f"[[peers]]: needs aet, host and port (and optionally {', '.join(sorted(_PEER_TLS))}), "
                          f"got {', '.join(sorted(table))}")
    try:
        port = int(table["port"])
    except (TypeError, ValueError):
        raise ConfigError(f"[[peers]]: bad port {table.get('port')!r}") from None
    if not isinstance(table.get("tls", False), bool):
        raise ConfigError(f"[[peers]] {table['aet']}: tls must be true or false")
    paths = {name: _relative_to(str(table[name]), base_dir) for name in ("ca", "certificate", "key") if table.get(name)}
    peer = PeerConfig(aet=check_aet(str(table["aet"])), host=str(table["host"]), port=port, tls=table.get("tls", False),
                      server_name=str(table.get("server_name", "")), **paths)
    if peer.tls and not peer.ca:
        raise ConfigError(f"[[peers]] {peer.aet}: tls = true needs ca (the trust store for the peer's certificate)")
    if (peer.ca or peer.certificate or peer.key or peer.server_name) and not peer.tls:
        raise ConfigError(f"[[peers]] {peer.aet}: ca, certificate, key and server_name need tls = true")
    return peer


def _relative_to(path: str, base_dir: Path | None) -> str:
    return str(base_dir / path) if base_dir is not None and not Path(path).is_absolute() else path


def parse_peer(text: str) -> PeerConfig:
    """``AET@host:port`` (``nodectl serve --peer``) as a PeerConfig."""
    aet, at, address = text.rpartition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not aet or not host:
        raise ConfigError(f"peer {text!r} is not AET@host:port")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"peer {text!r}: port {port!r} is not a number") from None
    if not 1 <= number <= 65535:
        raise ConfigError(f"peer {text!r}: port {number} is outside 1..65535")
    return PeerConfig(aet=check_aet(aet), host=host, port=number)


def to_mapping(config: NodeConfig) -> dict[str, Any]:
    """The inverse of ``from_mapping``: a TOML-ready dict with absolute paths."""

    def plain(obj: Any) -> dict[str, Any]:
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out[f.name] = value
        return out

    node_table = {k: v for k, v in plain(config).items() if k in _NODE_KEYS}
    data: dict[str, Any] = {"node": node_table, "listeners": [plain(lc) for lc in config.listeners]}
    if config.peers:
        data["peers"] = [plain(peer) for peer in config.peers]
    for section in SECTIONS:
        data[section] = plain(getattr(config, section))
    return data


def dump(config: NodeConfig, path: Path) -> None:
    """Write the effective configuration where every actor of the node will read it."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(tomli_w.dumps(to_mapping(config)).encode())
    os.replace(tmp, path)


def load_file(path: Path) -> NodeConfig:
    """Read a TOML file; relative paths in it are relative to the file's directory."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    return from_mapping(data, path.resolve().parent)


def apply_environment(config: NodeConfig, environ: Mapping[str, str]) -> NodeConfig:
    """Apply the single-value ``NODECTL_*`` overrides."""
    updates: dict[str, Any] = {}
    if "NODECTL_AET" in environ:
        updates["aet"] = environ["NODECTL_AET"]
    if "NODECTL_DIRECTORY" in environ:
        updates["directory"] = Path(environ["NODECTL_DIRECTORY"])
    if "NODECTL_DATABASE" in environ:
        updates["database"] = environ["NODECTL_DATABASE"]
    if "NODECTL_RUN_DIR" in environ:
        updates["run_dir"] = Path(environ["NODECTL_RUN_DIR"])
    try:
        if "NODECTL_WORKERS" in environ:
            updates["workers"] = int(environ["NODECTL_WORKERS"])
        if "NODECTL_PORT" in environ:
            port = int(environ["NODECTL_PORT"])
            updates["listeners"] = tuple(replace(lc, port=port) for lc in config.listeners[:1]) + config.listeners[1:]
    except ValueError as exc:
        raise ConfigError(f"environment: {exc}") from None
    return validate(replace(config, **updates)) if updates else config


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Embedded defaults, then the file (``path`` or ``$NODECTL_CONFIG``), then the environment."""
    env = os.environ if environ is None else environ
    if path is None and env.get("NODECTL_CONFIG"):
        path = Path(env["NODECTL_CONFIG"])
    config = load_file(path) if path is not None else NodeConfig()
    return apply_environment(config, env)


def validate(config: NodeConfig) -> NodeConfig:
    """Refuse settings no node could run with; say which and why."""
    if config.workers < 1:
        raise ConfigError(f"workers must be at least 1, not {config.workers}")
    if config.transport not in ("ipc", "tcp", "inproc"):
        raise ConfigError(f"transport must be ipc, tcp or inproc, not {config.transport!r}")
    if not config.listeners:
        raise ConfigError("at least one listener is needed")
    for lc in config.listeners:
        if not 0 <= lc.port <= 65535:
            raise ConfigError(f"port {lc.port} is outside 0..65535")
        check_aet(lc.aet, allow_empty=True)
        for aet in lc.accept:
            check_aet(aet)
    keys = [lc.key for lc in config.listeners]
    if len(set(keys)) != len(keys):
        raise ConfigError("two listeners share a port/name")
    check_aet(config.aet)
    if config.store.duplicates not in ("overwrite", "keep", "reject"):
        raise ConfigError(f"store.duplicates must be overwrite, keep or reject, not {config.store.duplicates!r}")
    if min(config.store.materialise_interval, config.store.materialise_idle, config.store.commit_delay) < 0:
        raise ConfigError("store.materialise_interval, materialise_idle and commit_delay must not be negative")
    if not 0 <= config.store.status <= 0xFFFF:
        raise ConfigError(f"store.status {config.store.status} is not a 16-bit status")
    _validate_security(config)
    _validate_cluster(config)
    return config


def _validate_cluster(config: NodeConfig) -> None:
    """[commitment] verify is index or file; [cluster] endpoint is tcp:// (other hosts dial it)."""
    if config.commitment.verify not in ("index", "file"):
        raise ConfigError(f"commitment.verify must be index or file, not {config.commitment.verify!r}")
    if not 0 < config.commitment.verify_timeout < config.commitment.request_timeout:
        # the worker waits request_timeout for the tracker, which waits verify_timeout for owners
        raise ConfigError("commitment.verify_timeout must be positive and below commitment.request_timeout")
    if config.cluster.endpoint and not config.cluster.endpoint.startswith("tcp://"):
        raise ConfigError(f"cluster.endpoint must be a tcp:// address, not {config.cluster.endpoint!r}")


def _validate_security(config: NodeConfig) -> None:
    """TLS listeners need a certificate and key; access tables hold AE titles; caps are >= 0."""
    if any(lc.tls for lc in config.listeners) and not config.tls.certificate:
        raise ConfigError("a listener has tls = true but [tls] certificate is not set (key: same file if empty)")
    if config.tls.require_client_cert and not config.tls.ca:
        raise ConfigError("[tls] require_client_cert needs ca (the trust store for client certificates)")
    for name in config.tls.protocols:
        if name not in ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3", "TLSv1.1", "TLSv1.2", "TLSv1.3"):
            raise ConfigError(f"[tls] protocols: unknown {name!r} (TLSv1.2, TLSv1.3)")
    if config.tls.crl_check not in ("", "leaf", "chain"):
        raise ConfigError(f"[tls] crl_check must be \"leaf\" or \"chain\" (or empty), not {config.tls.crl_check!r}")
    for called, callers in config.access.allowed.items():
        check_aet(called)
        for aet in callers:
            check_aet(aet)
    if config.network.max_associations_per_aet < 0 or config.network.max_pending < 1:
        raise ConfigError("network.max_associations_per_aet must be >= 0 and max_pending >= 1")
    if config.network.max_ops_invoked < 0 or config.network.max_ops_performed < 0:
        raise ConfigError("network.max_ops_invoked and max_ops_performed must be >= 0 (0: unlimited)")


def check_aet(aet: str, *, allow_empty: bool = False) -> str:
    """An AE title is 1..16 characters of the default repertoire, no backslash or control."""
    if aet == "" and allow_empty:
        return aet
    if not 0 < len(aet.strip()) <= 16 or len(aet) > 16:
        raise ConfigError(f"AE title {aet!r} must be 1 to 16 characters")
    if any(ord(ch) < 0x20 or ord(ch) > 0x7E or ch == "\\" for ch in aet):
        raise ConfigError(f"AE title {aet!r} has a character not allowed in an AE title")
    return aet


def short_run_dir(run_dir: Path) -> Path:
    """``run_dir`` itself when its ipc paths fit the kernel limit, else a short one in /tmp."""
    absolute = run_dir.resolve()
    if len(str(absolute)) + 40 <= _MAX_IPC_PATH:
        return absolute
    digest = hashlib.sha1(str(absolute).encode()).hexdigest()[:12]
    return Path("/tmp") / f"nodectl-{digest}"
