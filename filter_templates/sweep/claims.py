"""Claims on a results store's rows: who trains which point, kept fresh by heartbeats, taken over
when their owner is gone, released on Ctrl-C, and ended by recording the run's summary. Every
change is one ``BEGIN IMMEDIATE`` transaction and, for a row in ``running``, takes effect only for
the claim (``token``) it was given: a process that lost its claim cannot overwrite the new owner's
work. :class:`Claims` is a part of :class:`.store.Store`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from filter_templates.core.status import FAILED, PAUSED, PENDING, RUNNING, RUN_STATUSES
from filter_templates.sweep.records import (
    DEFAULT_STALE_AFTER,
    HEARTBEAT_EVERY,
    StoreError,
    canonical_json,
    clean,
    num,
    owner_alive,
    owner_id,
    row_dict,
)

__all__ = ["Claims", "Heartbeats"]


def _at_stop(row: Mapping[str, Any], config_json: str) -> bool:
    """A paused row that a run of ``config_json`` would leave where it is: its ``stop_at`` is the
    epoch the row paused after, or an earlier one."""
    paused = row["paused_at"]
    if paused is None:
        return False
    stop = json.loads(config_json).get("stop_at") if config_json else None
    return stop is not None and int(paused) >= int(stop)

_BEAT = "UPDATE runs SET heartbeat=? WHERE key=? AND claim_token=? AND status='running'"


class Claims:
    """The claim methods of :class:`.store.Store` (its connection ``db``, ``_tx``, ``_event`` and
    ``_rows_for``)."""

    def claimable(self, row: Mapping[str, Any], *, stale_after: float = DEFAULT_STALE_AFTER,
                  now: float | None = None, config_json: str | None = None) -> bool:
        """A pending row, or a running row whose owner is gone (dead pid here, or stale heartbeat);
        not a paused row whose run would stop where it is (``config_json``: the configuration it
        would run with, by default its stored one)."""
        if row["status"] == PENDING:
            return not _at_stop(row, config_json or row["config_json"])
        if row["status"] != RUNNING:
            return False
        alive = owner_alive(row["claimed_by"])
        if alive is False:
            return True
        now = time.time() if now is None else now
        return (now - float(row["heartbeat"] or 0.0)) > stale_after

    def claim(
        self,
        keys: Sequence[str],
        *,
        owner: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        config_json: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Atomically take the first claimable row of ``keys`` (in that order) and mark it running.

        Returns the row (with ``claim_token`` and ``reclaimed``: whether a dead owner had it), or
        None when no row of ``keys`` can be claimed. ``config_json`` maps a key to the full
        configuration this process will run it with (it replaces the stored one).
        """
        got = self._claim(keys, 1, owner, stale_after, config_json)
        return got[0] if got else None

    def claim_many(self, keys: Sequence[str], *, owner: str | None = None,
                   stale_after: float = DEFAULT_STALE_AFTER,
                   config_json: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Claim every claimable row of ``keys`` in one transaction (the Ray driver hands them all
        to Tune at once)."""
        return self._claim(keys, len(keys), owner, stale_after, config_json)

    def _claim(self, keys: Sequence[str], limit: int, owner: str | None, stale_after: float,
               config_json: Mapping[str, str] | None) -> list[dict[str, Any]]:
        owner = owner or owner_id()
        wanted = list(dict.fromkeys(keys))
        out: list[dict[str, Any]] = []
        with self._tx() as db:
            rows = self._rows_for(wanted, "status IN ('pending', 'running')")
            now = time.time()
            for key in wanted:
                if len(out) >= limit:
                    break
                row = rows.get(key)
                cfg = (config_json or {}).get(key, row["config_json"] if row is not None else "")
                if row is None or not self.claimable(row, stale_after=stale_after, now=now, config_json=cfg):
                    continue
                token = uuid.uuid4().hex
                reclaimed = row["status"] == RUNNING
                db.execute(
                    "UPDATE runs SET status='running', claimed_by=?, claim_token=?, claimed_at=?, heartbeat=?, "
                    "attempts=attempts+1, started_at=COALESCE(started_at, ?), reason=NULL, config_json=?, "
                    "paused_at=NULL, "
                    "updated_at=? WHERE key=?",
                    (owner, token, now, now, now, cfg, now, key),
                )
                self._event(key, "reclaim" if reclaimed else "claim", owner,
                            {"from": row["claimed_by"]} if reclaimed else None)
                d = row_dict(row)
                d.update(status=RUNNING, claimed_by=owner, claim_token=token, claimed_at=now, heartbeat=now,
                         attempts=row["attempts"] + 1, reclaimed=reclaimed, config=json.loads(cfg),
                         previous_owner=row["claimed_by"] if reclaimed else None)
                out.append(d)
        return out

    def heartbeat(self, claims: Mapping[str, str]) -> int:
        """Refresh ``{key: token}`` claims; returns how many are still ours."""
        if not claims:
            return 0
        n = 0
        now = time.time()
        with self._tx() as db:
            for key, token in claims.items():
                n += db.execute(_BEAT, (now, key, token)).rowcount
        return n

    def record_epoch(self, key: str, token: str, metrics: Mapping[str, Any]) -> bool:
        """Add (or replace) one epoch's metrics of a running row; False if the claim was lost."""
        epoch = int(metrics["epoch"])
        with self._tx() as db:
            row = db.execute("SELECT epoch_metrics FROM runs WHERE key=? AND claim_token=? AND status='running'",
                             (key, token)).fetchone()
            if row is None:
                return False
            history = [m for m in json.loads(row[0]) if int(m.get("epoch", -1)) < epoch]
            history.append(clean(dict(metrics)))
            now = time.time()
            db.execute("UPDATE runs SET epoch_metrics=?, epochs_done=?, heartbeat=?, updated_at=? WHERE key=?",
                       (canonical_json(history), epoch, now, now, key))
        return True

    def finish(self, key: str, token: str | None, summary: Mapping[str, Any],
               epochs: Sequence[Mapping[str, Any]] | None = None, run_dir: str | None = None) -> bool:
        """Record a run's ``summary.json`` (status done or failed) on a row we hold.

        ``token=None`` records regardless of claim (reindexing). ``epochs`` (the run's
        ``metrics.jsonl``) replaces the per-epoch history when given. False if the claim was lost.
        """
        status = summary.get("status")
        if status == PAUSED:
            return self._pause(key, token, summary, epochs, run_dir)
        if status not in RUN_STATUSES:
            raise StoreError(f"a run's summary status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        res = summary.get("resources") or {}
        lat = res.get("latency_s") or {}
        batch = res.get("batch_size")
        now = time.time()
        with self._tx() as db:
            where = "key=? AND claim_token=? AND status='running'" if token is not None else "key=?"
            args: tuple[Any, ...] = (key, token) if token is not None else (key,)
            row = db.execute(f"SELECT epoch_metrics FROM runs WHERE {where}", args).fetchone()
            if row is None:
                return False
            history = [clean(dict(e)) for e in epochs] if epochs is not None else json.loads(row[0])
            db.execute(
                "UPDATE runs SET status=?, reason=?, final_acc=?, best_acc=?, best_epoch=?, val_acc=?, params=?, "
                "flops=?, train_memory_bytes=?, batch_size=?, latency_batch_s=?, latency_b1_s=?, resource_device=?, threads=?, "
                "resources_json=?, wall_s=?, device=?, epoch_metrics=?, epochs_done=?, finished_at=?, "
                "updated_at=?, claimed_by=NULL, claim_token=NULL, heartbeat=NULL, paused_at=NULL, "
                f"run_dir=COALESCE(?, run_dir) WHERE {where}",
                (status, summary.get("reason") if status == FAILED else None,
                 num(summary.get("final_acc")), num(summary.get("best_acc")), num(summary.get("best_epoch")),
                 num(summary.get("val_acc")),
                 num(res.get("params")), num(res.get("flops")), num(res.get("train_memory_bytes")),
                 num(batch), num(lat.get(f"batch{batch}")), num(lat.get("batch1")), res.get("device"), num(res.get("threads")),
                 canonical_json(clean(res)) if res else None, num(summary.get("wall_s")), summary.get("device"),
                 canonical_json(history), max([int(e.get("epoch", 0)) for e in history] or [0]), now, now,
                 run_dir, *args),
            )
            self._event(key, status, None if token is None else owner_id(),
                        {"reason": summary.get("reason")} if status == FAILED else None)
        return True

    def _pause(self, key: str, token: str | None, summary: Mapping[str, Any],
               epochs: Sequence[Mapping[str, Any]] | None, run_dir: str | None) -> bool:
        """A run paused at its ``stop_at``: pending again (never done), with its epochs so far and
        the epoch it stopped after, so no sweep claims it to stop there again."""
        where = "key=? AND claim_token=? AND status='running'" if token is not None else "key=?"
        args: tuple[Any, ...] = (key, token) if token is not None else (key,)
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT epoch_metrics FROM runs WHERE {where}", args).fetchone()
            if row is None:
                return False
            history = [clean(dict(e)) for e in epochs] if epochs is not None else json.loads(row[0])
            db.execute("UPDATE runs SET status='pending', paused_at=?, epoch_metrics=?, epochs_done=?, reason=NULL, "
                       "claimed_by=NULL, claim_token=NULL, heartbeat=NULL, updated_at=?, "
                       f"run_dir=COALESCE(?, run_dir) WHERE {where}",
                       (int(summary["stopped_at"]), canonical_json(history),
                        max([int(e.get("epoch", 0)) for e in history] or [0]), now, run_dir, *args))
            self._event(key, PAUSED, None if token is None else owner_id(), {"epoch": summary["stopped_at"]})
        return True

    def fail(self, key: str, token: str | None, reason: str) -> bool:
        """Mark a row failed with a reason (an exception outside train's own summary)."""
        return self.finish(key, token, {"status": FAILED, "reason": reason})

    def release(self, key: str, token: str, reason: str = "interrupted") -> bool:
        """Give a claim back (Ctrl-C): the row is pending again and will resume from its checkpoint."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET status='pending', claimed_by=NULL, claim_token=NULL, heartbeat=NULL, "
                "updated_at=? WHERE key=? AND claim_token=? AND status='running'",
                (time.time(), key, token),
            )
            if cur.rowcount:
                self._event(key, "release", owner_id(), {"reason": reason})
            return bool(cur.rowcount)


class Heartbeats:
    """Keep the claims ``{key: token}`` a process holds fresh, from a thread with its own
    connection (SQLite connections are not shared between threads), while the runs train; a
    heartbeat failure never stops a run (its claim then goes stale, the fallback)."""

    def __init__(self, db: str | os.PathLike[str], claims: Mapping[str, str], every: float = HEARTBEAT_EVERY) -> None:
        self.db, self.claims, self.every = Path(db), dict(claims), every
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sweep-heartbeats", daemon=True)

    def drop(self, key: str) -> None:
        """Stop refreshing ``key`` (its run ended)."""
        with self.lock:
            self.claims.pop(key, None)

    def _loop(self) -> None:
        try:  # its own connection: SQLite connections are not shared between threads
            db = sqlite3.connect(str(self.db), timeout=120.0, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=120000")
                while not self.stop.wait(self.every):
                    with self.lock:
                        claims = dict(self.claims)
                    now = time.time()
                    db.execute("BEGIN IMMEDIATE")
                    for key, token in claims.items():
                        db.execute(_BEAT, (now, key, token))
                    db.execute("COMMIT")
            finally:
                db.close()
        except Exception:  # noqa: BLE001 - staleness is the fallback; the run goes on
            pass

    def __enter__(self) -> "Heartbeats":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
