"""The status words a run, a results row and a budget point carry, in one place: every file the
package writes and every comparison it makes reads them from here.

A run (``summary.json``) ends ``DONE`` or ``FAILED``, or stops ``PAUSED`` at its ``stop_at`` epoch
(not done: running it again continues it; its row is ``PENDING`` again); a results-store row is ``PENDING`` until an
engine claims it, ``RUNNING`` while claimed, then its run's status. A budget point is ``FITTED``
(it has a run) or ``UNREACHABLE`` (its reason says why; nothing trains).
"""

from __future__ import annotations

__all__ = [
    "PENDING",
    "RUNNING",
    "DONE",
    "FAILED",
    "PAUSED",
    "STOPPED",
    "RUN_STATUSES",
    "ROW_STATUSES",
    "FITTED",
    "UNREACHABLE",
    "BUDGET_STATUSES",
]

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
PAUSED = "paused"
#: How a run ends (``summary.json``'s ``status``), or pauses.
RUN_STATUSES = (DONE, FAILED, PAUSED)
#: A ``reduce`` candidate that successive halving stopped at a rung (its runs stay paused there).
STOPPED = "stopped"
#: A results-store row's life.
ROW_STATUSES = (PENDING, RUNNING, DONE, FAILED)

FITTED = "fitted"
UNREACHABLE = "unreachable"
#: A budget point's status.
BUDGET_STATUSES = (FITTED, UNREACHABLE)
