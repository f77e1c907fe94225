"""Token buckets: how long a sender waits so that it keeps to ``--rate N/s`` and ``--max-mbps``.

Why: a migration job that runs in office hours must not swamp a production PACS. A bucket
holds up to ``burst`` tokens and fills at ``rate`` tokens per second; taking ``n`` tokens
returns how long to wait first (0 when they are there). No clock of its own and no sleep:
the caller passes ``now`` (``time.monotonic()``) and sleeps, so tests drive time.

A sender has up to two buckets, files and bytes, and waits for the longer of the two
(``Pacer``). Each of N worker threads gets ``1/N`` of the rate in a pacer of its own: they
are dealt the same number of files, and no lock is shared between them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: float
    tokens: float | None = None  # None until first used: then a full bucket
    stamp: float = 0.0

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens (going into debt if they are not there); the seconds to wait
        before acting, so that over time no more than ``rate`` per second are taken."""
        tokens = self.burst if self.tokens is None else min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens = tokens - n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Pacer:
    """Files per second and bytes per second together; ``wait(size)`` before each file."""

    def __init__(self, files_per_s: float = 0.0, bytes_per_s: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.buckets: list[tuple[TokenBucket, bool]] = []  # (bucket, counts bytes)
        if files_per_s > 0:
            self.buckets.append((TokenBucket(files_per_s, burst=max(1.0, files_per_s / 10)), False))
        if bytes_per_s > 0:
            self.buckets.append((TokenBucket(bytes_per_s, burst=bytes_per_s / 10), True))
        self.clock = clock
        self.sleep = sleep

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def wait(self, size: int) -> float:
        """Sleep as long as the emptier bucket asks before sending a file of ``size`` bytes."""
        if not self.buckets:
            return 0.0
        now = self.clock()
        delay = max(bucket.take(size if by_bytes else 1, now) for bucket, by_bytes in self.buckets)
        if delay > 0:
            self.sleep(delay)
        return delay


_PER_THREAD = threading.local()


def pacer(files_per_s: float, bytes_per_s: float) -> Pacer:
    """One pacer per thread and limits: a worker thread's next association does not start a
    full bucket, and N worker threads each keep their own share (one pacer shared by all of
    them would hold the whole job to a single share)."""
    pacers: dict[tuple[float, float], Pacer] = _PER_THREAD.__dict__.setdefault("pacers", {})
    key = (files_per_s, bytes_per_s)
    if key not in pacers:
        pacers[key] = Pacer(files_per_s, bytes_per_s)
    return pacers[key]


def parse_rate(text: str) -> float:
    """``--rate`` values: ``50``, ``50/s``, ``3000/min``, ``100000/h`` -> files per second."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    value = float(number)
    if per is None or not value > 0:
        raise ValueError(f"{text!r}: expected a positive number of files per s, min or h (e.g. 50/s)")
    return value / per
