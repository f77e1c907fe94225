"""``python -m bench commit``: Storage Commitment round trips (issue 6). Not built yet.

What it is to measure: N-ACTION for 1000 stored instances to ``nodectl serve``, the time
until the N-EVENT-REPORT arrives on a new association (median of runs), and 100
transactions in flight at once, all completed without loss. ``nodectl commit`` landed
(59f6382) while the ingest harness was being written; the timing loop around it is the
next piece of work here (docs/benchmarks.md, next steps 5).
"""

from __future__ import annotations

import sys


def main() -> int:
    print("python -m bench commit: not built yet; nothing was measured. `nodectl commit` exists, "
          "the benchmark around it (1000-instance N-ACTION to N-EVENT-REPORT, 100 in flight) does not.",
          file=sys.stderr)
    return 3
