"""``python -m bench commit``: Storage Commitment round trips (issue 6). Not built yet.

What it is to measure: N-ACTION for 1000 stored instances to ``nodectl serve``, the time
until the N-EVENT-REPORT arrives on a new association (median of runs), and 100
transactions in flight at once, all completed without loss. The commitment service and
``nodectl commit`` are being built in parallel (issue 5); this harness waits for them to
land and be stable rather than timing a moving target.
"""

from __future__ import annotations

import sys


def main() -> int:
    print("python -m bench commit: not built yet (the Storage Commitment benchmark waits for "
          "issue 5's tracker and `nodectl commit` to land); nothing was measured.", file=sys.stderr)
    return 3
