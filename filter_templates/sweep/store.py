"""The results store: one SQLite file, one row per grid point.

Why SQLite: one file a user can copy, query and open from several sweep processes at once. WAL
mode lets readers (``report``) run while a sweep writes; a busy timeout makes writers queue instead
of failing; every state change is one ``BEGIN IMMEDIATE`` transaction, so a row is claimed by
exactly one process and a process killed at any instant leaves either the old or the new state.

A row's key is a hash of the canonical JSON of the point's training configuration as
``training.config.experiment`` sees it: without the fields that say *where and how* to run rather than *what*
(``EXECUTION_FIELDS``), since moving the data or switching device must not turn a finished point
into a new one, and without a field added later at the value older points had.

A row in state ``running`` belongs to ``claimed_by`` (``pid@host``) while that process lives and
keeps its ``heartbeat`` fresh; when the owner is gone (its pid no longer exists on this host, or
its heartbeat is older than ``stale_after``) any sweep may claim the row again and resume the run
from its checkpoint (:class:`Heartbeats` keeps a process's claims fresh). Every change is one
``BEGIN IMMEDIATE`` transaction and, for a row in ``running``, takes effect only for the claim
(``token``) it was given: a process that lost its claim cannot overwrite the new owner's work. Each
run's own summary stays the source of truth: :meth:`Store.reindex_run` rebuilds a row from its
run directory.

Budget sweeps add a second table, ``budget_points``: one row per (budget, family, template,
dataset, seed, training settings), holding the budget, the fitted width and filters, the fitted
model's resources and the key of the ``runs`` row that trains it -- or, for a budget the template
cannot reach, no run and the reason. Two budgets that fit the same model share one run. A re-run
of the same budget sweep writes the same rows again, so a lost store is rebuilt by ``sweep
--reindex`` plus a re-run -- which is also how a store written by an older version (an older
``SCHEMA_VERSION``) is brought up to date: it is refused with one line that says so.

A row says what it compares in columns of its own: ``kind`` (``template``, or ``pruning`` for a
pruning baseline), ``method`` (the template, or the pruning method) and ``template`` (its model's
template: ``base`` for a pruning baseline, which prunes the base model).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import read_metrics
from filter_templates.core.status import FAILED, PAUSED, PENDING, RUN_STATUSES, RUNNING
from filter_templates.sweep.records import (
    BUDGET_STATUSES,
    DEFAULT_FILE,
    DEFAULT_STALE_AFTER,
    EXECUTION_FIELDS,
    HEARTBEAT_EVERY,
    SCHEMA_VERSION,
    STATUSES,
    StoreError,
    budget_point_key,
    canonical_json,
    clean,
    fields,
    num,
    owner_alive,
    owner_id,
    point_key,
    row_dict,
    store_group,
)

# The store's names, wherever they are defined: what the engines, the CLI and the reports import.
__all__ = [
    "Store",
    "StoreError",
    "STATUSES",
    "EXECUTION_FIELDS",
    "DEFAULT_FILE",
    "DEFAULT_STALE_AFTER",
    "canonical_json",
    "point_key",
    "budget_point_key",
    "store_group",
    "owner_id",
    "owner_alive",
    "read_metrics",
    "BUDGET_STATUSES",
    "Heartbeats",
    "HEARTBEAT_EVERY",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,                  -- sha256 of key_json
    key_json TEXT NOT NULL,                -- canonical JSON of the configuration minus EXECUTION_FIELDS
    config_json TEXT NOT NULL,             -- full TrainConfig.to_dict() of the last run of this point
    family TEXT NOT NULL, template TEXT NOT NULL, width REAL NOT NULL, dataset TEXT NOT NULL,
    seed INTEGER NOT NULL, epochs INTEGER NOT NULL, classes INTEGER NOT NULL, filters TEXT NOT NULL,
    kind TEXT NOT NULL,                    -- template, or pruning: a pruning baseline (of the base model)
    method TEXT NOT NULL,                  -- what it compares: the template, or the pruning method
    image_size INTEGER NOT NULL,           -- side of the images trained on: part of a cell, like the dataset
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    run_dir TEXT,
    claimed_by TEXT, claim_token TEXT, claimed_at REAL, heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,   -- how many times the point was claimed to train
    epochs_done INTEGER NOT NULL DEFAULT 0,
    paused_at INTEGER,                     -- a pending run paused at its stop_at epoch (NULL: not paused)
    epoch_metrics TEXT NOT NULL DEFAULT '[]',  -- JSON list: one object per epoch (test_acc, ...)
    final_acc REAL, best_acc REAL, best_epoch INTEGER,  -- test accuracy: final, best over epochs (optimistic)
    val_acc REAL,                          -- final accuracy on the validation split (NULL: the run had none)
    params INTEGER, flops INTEGER, train_memory_bytes INTEGER,
    batch_size INTEGER,                    -- of the run: latency_batch_s is measured at it
    latency_batch_s REAL, latency_b1_s REAL, resource_device TEXT, threads INTEGER,
    resources_json TEXT,
    wall_s REAL, device TEXT, reason TEXT,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL, event TEXT NOT NULL, owner TEXT, at REAL NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_points (
    key TEXT PRIMARY KEY,                  -- sha256 of ident_json
    ident_json TEXT NOT NULL,              -- canonical JSON: budget, family, template, classes, settings, seed
    budget_key TEXT NOT NULL, budget_value REAL NOT NULL,
    family TEXT NOT NULL, method TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('fitted', 'unreachable')),
    reason TEXT,                           -- why unreachable
    width REAL, filters TEXT,              -- the fitted model
    fit_json TEXT,                         -- its resources as fitted (params, flops, memory, capped, note)
    run_key TEXT,                          -- the runs row that trains it (NULL when unreachable)
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_points_run ON budget_points (run_key);
"""

_BEAT = "UPDATE runs SET heartbeat=? WHERE key=? AND claim_token=? AND status='running'"


def _at_stop(row: Mapping[str, Any] | sqlite3.Row, config_json: str) -> bool:
    """A paused row that a run of ``config_json`` would leave where it is: its ``stop_at`` is the
    epoch the row paused after, or an earlier one."""
    paused = row["paused_at"]
    if paused is None:
        return False
    stop = json.loads(config_json).get("stop_at") if config_json else None
    return stop is not None and int(paused) >= int(stop)


#: The columns a new ``runs`` row is inserted with: ``_insert_run`` is the one INSERT of a grid point.
_RUN_COLUMNS = (
    "key",
    "key_json",
    "config_json",
    "family",
    "template",
    "method",
    "width",
    "dataset",
    "seed",
    "epochs",
    "classes",
    "filters",
    "kind",
    "image_size",
    "status",
    "run_dir",
    "created_at",
    "updated_at",
)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class Store:
    """One connection to a results file. Not shared between threads: open one per thread.

    Every method that changes state is one ``BEGIN IMMEDIATE`` transaction and, for a row in
    ``running``, only takes effect for the claim it was given (``token``): a process that lost its
    claim (taken over after its heartbeat went stale) cannot overwrite the new owner's work.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 120.0, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"results store {str(self.path)!r} does not exist")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of results store {str(self.path)!r}: {exc}") from None
        try:
            self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {str(self.path)!r}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._init_schema(create)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"{str(self.path)!r} is not a usable results store: {exc}") from None

    # -- setup -----------------------------------------------------------------------------

    def _init_schema(self, create: bool) -> None:
        # Switching to WAL needs a moment alone with the file; when several sweeps open a new
        # file at once, some see SQLITE_BUSY here without the busy handler: retry briefly.
        for attempt in range(200):
            try:
                mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05)
        else:  # pragma: no cover - only on a file locked for 10 s
            raise StoreError(f"results store {str(self.path)!r} stays locked")
        if str(mode).lower() != "wal":
            raise StoreError(f"results store {str(self.path)!r} cannot use WAL mode (journal mode is {mode})")
        self.db.execute("PRAGMA synchronous=FULL")
        if not create:
            have = self.db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='runs'").fetchone()
            if have is None:
                raise StoreError(f"{str(self.path)!r} is an SQLite file but not a results store (no 'runs' table)")
        with self._tx():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            row = self.db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"results store {str(self.path)!r} has schema version {row[0]}; this filter-templates "
                    f"reads up to {SCHEMA_VERSION}: upgrade filter-templates"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                raise StoreError(
                    f"results store {str(self.path)!r} was written by an older filter-templates (schema version "
                    f"{row[0]}, now {SCHEMA_VERSION}); move it aside and rebuild it from its run folders with "
                    "'filter-templates sweep --reindex --db FILE --runs-dir RUNS'"
                )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _tx(self) -> "Store._Tx":
        """A write transaction that takes the write lock up front (no lock upgrades, no deadlock)."""
        return Store._Tx(self.db)

    def _event(self, key: str, event: str, owner: str | None, detail: Any = None) -> None:
        self.db.execute(
            "INSERT INTO events (key, event, owner, at, detail) VALUES (?, ?, ?, ?, ?)",
            (key, event, owner, time.time(), None if detail is None else canonical_json(clean(detail))),
        )

    # -- grid points -------------------------------------------------------------------------

    def add_points(self, points: Iterable[tuple[Mapping[str, Any], str]]) -> int:
        """Insert ``(config_dict, run_dir)`` points not yet in the store as ``pending``.

        Returns how many were new. Existing rows (any status) are left as they are.
        """
        now = time.time()
        new = 0
        with self._tx():
            for config, run_dir in points:
                key, _ = point_key(config)
                if self._insert_run(config, run_dir, now, ignore=True):
                    new += 1
                    self._event(key, "add", None)
        return new

    def _insert_run(
        self, config: Mapping[str, Any], run_dir: str | os.PathLike[str], now: float, *, ignore: bool = False
    ) -> bool:
        """Insert a grid point as ``pending`` (inside a transaction); ``ignore``: leave a row that
        exists. True when a row was inserted."""
        key, key_json = point_key(config)
        f = fields(config)
        values = {
            "key": key,
            "key_json": key_json,
            "config_json": canonical_json(config),
            **f,
            "status": PENDING,
            "run_dir": str(run_dir),
            "created_at": now,
            "updated_at": now,
        }
        cur = self.db.execute(
            f"INSERT {'OR IGNORE ' if ignore else ''}INTO runs ({', '.join(_RUN_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",
            tuple(values[c] for c in _RUN_COLUMNS),
        )
        return bool(cur.rowcount)

    def reset_failed(self, keys: Sequence[str]) -> int:
        """Put failed rows among ``keys`` back to ``pending`` (``--retry-failed``)."""
        n = 0
        with self._tx() as db:
            for key in keys:
                cur = db.execute(
                    "UPDATE runs SET status='pending', reason=NULL, updated_at=? WHERE key=? AND status='failed'",
                    (time.time(), key),
                )
                if cur.rowcount:
                    n += 1
                    self._event(key, "retry", None)
        return n

    # -- rebuilding from run directories ----------------------------------------------------------

    def reindex_run(self, run_dir: str | os.PathLike[str]) -> str | None:
        """Rebuild one row from a run directory's config (+ summary and metrics, see :mod:`..rundir`).

        A finished run becomes done/failed with its summary; an unfinished one becomes pending
        (the next sweep resumes it). Rows held by a live owner are left alone. Returns the key,
        or None if the folder holds no readable config.
        """
        run_dir = Path(run_dir)
        config = rundir.read_config(run_dir)
        if config is None:
            return None
        try:
            key, _ = point_key(config)
            fields(config)
        except (ValueError, UsageError):
            return None
        summary = rundir.read_summary(run_dir)  # with what the sweep measured (resources.json) merged in
        if summary is not None and summary.get("status") not in RUN_STATUSES:
            summary = None
        epochs = read_metrics(run_dir)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
            if row is not None and row["status"] == RUNNING and not self.claimable(row):
                return key
            if row is None:
                self._insert_run(config, run_dir, now)
            else:
                db.execute(
                    "UPDATE runs SET status='pending', run_dir=?, claimed_by=NULL, claim_token=NULL, "
                    "heartbeat=NULL, updated_at=? WHERE key=?",
                    (str(run_dir), now, key),
                )
            db.execute(
                "UPDATE runs SET epoch_metrics=?, epochs_done=? WHERE key=?",
                (canonical_json(clean(epochs)), max([int(e["epoch"]) for e in epochs] or [0]), key),
            )
            self._event(key, "reindex", None)
        if summary is not None:
            self.finish(key, None, summary, epochs=epochs, run_dir=str(run_dir))
        return key

    # -- claims: who trains which point -----------------------------------------------------

    def claimable(
        self,
        row: Mapping[str, Any] | sqlite3.Row,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        now: float | None = None,
        config_json: str | None = None,
    ) -> bool:
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

    def claim_many(
        self,
        keys: Sequence[str],
        *,
        owner: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        config_json: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Claim every claimable row of ``keys`` in one transaction (the Ray driver hands them all
        to Tune at once)."""
        return self._claim(keys, len(keys), owner, stale_after, config_json)

    def _claim(
        self,
        keys: Sequence[str],
        limit: int,
        owner: str | None,
        stale_after: float,
        config_json: Mapping[str, str] | None,
    ) -> list[dict[str, Any]]:
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
                self._event(
                    key, "reclaim" if reclaimed else "claim", owner, {"from": row["claimed_by"]} if reclaimed else None
                )
                d = row_dict(row)
                d.update(
                    status=RUNNING,
                    claimed_by=owner,
                    claim_token=token,
                    claimed_at=now,
                    heartbeat=now,
                    attempts=row["attempts"] + 1,
                    reclaimed=reclaimed,
                    config=json.loads(cfg),
                    previous_owner=row["claimed_by"] if reclaimed else None,
                )
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
            row = db.execute(
                "SELECT epoch_metrics FROM runs WHERE key=? AND claim_token=? AND status='running'", (key, token)
            ).fetchone()
            if row is None:
                return False
            history = [m for m in json.loads(row[0]) if int(m.get("epoch", -1)) < epoch]
            history.append(clean(dict(metrics)))
            now = time.time()
            db.execute(
                "UPDATE runs SET epoch_metrics=?, epochs_done=?, heartbeat=?, updated_at=? WHERE key=?",
                (canonical_json(history), epoch, now, now, key),
            )
        return True

    def finish(
        self,
        key: str,
        token: str | None,
        summary: Mapping[str, Any],
        epochs: Sequence[Mapping[str, Any]] | None = None,
        run_dir: str | None = None,
    ) -> bool:
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
                (
                    status,
                    summary.get("reason") if status == FAILED else None,
                    num(summary.get("final_acc")),
                    num(summary.get("best_acc")),
                    num(summary.get("best_epoch")),
                    num(summary.get("val_acc")),
                    num(res.get("params")),
                    num(res.get("flops")),
                    num(res.get("train_memory_bytes")),
                    num(batch),
                    num(lat.get(f"batch{batch}")),
                    num(lat.get("batch1")),
                    res.get("device"),
                    num(res.get("threads")),
                    canonical_json(clean(res)) if res else None,
                    num(summary.get("wall_s")),
                    summary.get("device"),
                    canonical_json(history),
                    max([int(e.get("epoch", 0)) for e in history] or [0]),
                    now,
                    now,
                    run_dir,
                    *args,
                ),
            )
            self._event(
                key,
                status,
                None if token is None else owner_id(),
                {"reason": summary.get("reason")} if status == FAILED else None,
            )
        return True

    def _pause(
        self,
        key: str,
        token: str | None,
        summary: Mapping[str, Any],
        epochs: Sequence[Mapping[str, Any]] | None,
        run_dir: str | None,
    ) -> bool:
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
            db.execute(
                "UPDATE runs SET status='pending', paused_at=?, epoch_metrics=?, epochs_done=?, reason=NULL, "
                "claimed_by=NULL, claim_token=NULL, heartbeat=NULL, updated_at=?, "
                f"run_dir=COALESCE(?, run_dir) WHERE {where}",
                (
                    int(summary["stopped_at"]),
                    canonical_json(history),
                    max([int(e.get("epoch", 0)) for e in history] or [0]),
                    now,
                    run_dir,
                    *args,
                ),
            )
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

    # -- budget points ---------------------------------------------------------------------

    def add_budget_points(self, points: Iterable[Mapping[str, Any]]) -> int:
        """Insert or refresh budget points (``BudgetPoint.record()`` dicts: ``ident``, ``budget_key``,
        ``budget_value``, ``family``, ``method``, ``dataset``, ``seed``, ``status``, ``reason``,
        ``width``, ``filters``, ``fit``, ``run_key``). A point already stored takes the new fit
        (the same one, unless the fitter changed). Returns how many were new."""
        now = time.time()
        new = 0
        with self._tx() as db:
            for p in points:
                if p["status"] not in BUDGET_STATUSES:
                    raise ValueError(f"budget point status must be one of {BUDGET_STATUSES}, got {p['status']!r}")
                key, ident_json = budget_point_key(p["ident"])
                exists = db.execute("SELECT 1 FROM budget_points WHERE key=?", (key,)).fetchone()
                filters = None if p.get("filters") is None else canonical_json([int(f) for f in p["filters"]])
                fit = None if p.get("fit") is None else canonical_json(clean(p["fit"]))
                db.execute(
                    "INSERT INTO budget_points (key, ident_json, budget_key, budget_value, family, method, dataset, "
                    "seed, status, reason, width, filters, fit_json, run_key, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET status=excluded.status, reason=excluded.reason, "
                    "width=excluded.width, filters=excluded.filters, fit_json=excluded.fit_json, "
                    "run_key=excluded.run_key, updated_at=excluded.updated_at",
                    (
                        key,
                        ident_json,
                        str(p["budget_key"]),
                        float(p["budget_value"]),
                        str(p["family"]),
                        str(p["method"]),
                        str(p["dataset"]),
                        int(p["seed"]),
                        p["status"],
                        p.get("reason"),
                        num(p.get("width")),
                        filters,
                        fit,
                        p.get("run_key"),
                        now,
                        now,
                    ),
                )
                if exists is None:
                    new += 1
        return new

    def budget_rows(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Budget points as dicts (``fit`` and ``filters`` decoded), each with ``run``: its runs row
        (as :meth:`rows` gives it) or None. In the order of ``keys``, else insertion order."""
        if keys is not None:
            found: dict[str, sqlite3.Row] = {}
            wanted = list(keys)
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                q = f"SELECT * FROM budget_points WHERE key IN ({','.join('?' * len(chunk))})"
                found.update({r["key"]: r for r in self.db.execute(q, chunk)})
            raw = [found[k] for k in wanted if k in found]
        else:
            raw = list(self.db.execute("SELECT * FROM budget_points ORDER BY rowid"))
        runs = {r["key"]: r for r in self.rows([r["run_key"] for r in raw if r["run_key"]])}
        out = []
        for r in raw:
            d = dict(r)
            d["ident"] = json.loads(d.pop("ident_json"))
            fit = d.pop("fit_json")
            d["fit"] = json.loads(fit) if fit else None
            d["filters"] = json.loads(d["filters"]) if d["filters"] else None
            d["run"] = runs.get(d["run_key"]) if d["run_key"] else None
            out.append(d)
        return out

    # -- reading ---------------------------------------------------------------------------

    def _rows_for(self, keys: Sequence[str], where: str = "1") -> dict[str, sqlite3.Row]:
        out: dict[str, sqlite3.Row] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM runs WHERE {where} AND key IN ({','.join('?' * len(chunk))})"
            out.update({r["key"]: r for r in self.db.execute(q, chunk)})
        return out

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
        return row_dict(row) if row is not None else None

    def rows(self, keys: Sequence[str] | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), in insertion order."""
        if keys is not None:
            found = self._rows_for(list(keys))
            rows = [found[k] for k in keys if k in found]
        else:
            rows = list(self.db.execute("SELECT * FROM runs ORDER BY rowid"))
        out = [row_dict(r) for r in rows]
        return [r for r in out if status is None or r["status"] == status]

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """How many rows (of ``keys``, or all) are in each status."""
        out = dict.fromkeys(STATUSES, 0)
        for r in (
            self._rows_for(list(keys)).values() if keys is not None else self.db.execute("SELECT status FROM runs")
        ):
            out[r["status"]] += 1
        return out

    def paused(self, keys: Sequence[str]) -> dict[str, int]:
        """The runs among ``keys`` that are paused: ``{key: the epoch they paused after}``."""
        return {
            k: int(r["paused_at"])
            for k, r in self._rows_for(list(keys), "status='pending'").items()
            if r["paused_at"] is not None
        }

    def meta(self, name: str) -> Any:
        """A JSON value the store keeps under ``name`` (None: none), such as the plan of the
        successive halving its paused runs belong to."""
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, canonical_json(value)),
            )

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM events" + (" WHERE key=?" if key else "") + " ORDER BY id"
        return [dict(r) for r in self.db.execute(q, (key,) if key else ())]

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())


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
