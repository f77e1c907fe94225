"""The supervisord configuration of a node, generated from its NodeConfig (pure text).

Programs and their priorities: the writer starts first and stops last (100), then the
commitment tracker (150) (neither on a node that only answers C-ECHO), then the workers (200), then one listener per port (300); the
metrics endpoint (``[metrics] enabled``) starts first (50) and every program counts into
``<run_dir>/metrics`` (``PROMETHEUS_MULTIPROC_DIR``, actors/metrics.py). supervisord stops in reverse priority
order, so on shutdown the listeners stop accepting first, the workers finish or abort their
associations, and the writer drains its last batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.config import NodeConfig

STOP_WAIT_S = 20


def program(name: str, command: str, priority: int, *, numprocs: int = 1, log_to: str = "/dev/stderr") -> str:
    """One [program:x] section: restarted whenever it exits, stopped by SIGTERM."""
    lines = [
        f"[program:{name}]",
        f"command={command}",
        f"priority={priority}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "startretries=1000",
        "stopsignal=TERM",
        f"stopwaitsecs={STOP_WAIT_S}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_to}",
        "stdout_logfile_maxbytes=0",
    ]
    if numprocs > 1 or "%(process_num)" in command:
        lines += [f"numprocs={numprocs}", "process_name=%(program_name)s-%(process_num)d"]
    return "\n".join(lines) + "\n"


def render(config: NodeConfig, config_path: Path, *, python: str | None = None, log_to: str = "/dev/stderr") -> str:
    """supervisord.conf text running every actor of ``config`` (read from ``config_path``)."""
    run_dir = config.run_dir
    base = f"{python or sys.executable} -m node.cli run"
    conf = f"--config {config_path}"
    sections = [
        "\n".join(
            [
                "[supervisord]",
                "nodaemon=true",
                "silent=true",
                f"logfile={run_dir / 'supervisord.log'}",
                "logfile_maxbytes=5MB",
                "logfile_backups=1",
                f"pidfile={run_dir / 'supervisord.pid'}",
                f"childlogdir={run_dir}",
                "loglevel=info",
                *([f'environment=PROMETHEUS_MULTIPROC_DIR="{metrics_dir(config)}"'] if config.metrics.enabled else []),
                "",
                "[unix_http_server]",
                f"file={run_dir / 'supervisor.sock'}",
                "chmod=0700",
                "",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "",
                "[supervisorctl]",
                f"serverurl=unix://{run_dir / 'supervisor.sock'}",
                "",
            ]
        ),
        *([] if verification_only(config) else [
            program("writer", f"{base} writer {conf}", 100, log_to=log_to),
            program("tracker", f"{base} tracker {conf}", 150, log_to=log_to),
        ]),
        program("worker", f"{base} worker {conf} --worker-id %(process_num)d", 200, numprocs=config.workers, log_to=log_to),
    ]
    for lc in config.listeners:
        sections.append(program(f"listener-{lc.key}", f"{base} listener {conf} --listener {lc.key}", 300, log_to=log_to))
    if config.metrics.enabled:
        sections.append(program("metrics", f"{base} metrics {conf}", 50, log_to=log_to))
    return "\n".join(sections)


def verification_only(config: NodeConfig) -> bool:
    """A node that only answers C-ECHO (``nodectl echoscp``) has nothing to write or track: it
    runs without the writer and the tracker (two fewer interpreters to start, issue 14)."""
    services = config.services
    return not (services.storage or services.commitment_only or services.sop_classes or services.accept_unknown)


def metrics_dir(config: NodeConfig) -> Path:
    """Where every process of the node writes its Prometheus counters (emptied at start)."""
    return config.run_dir / "metrics"
