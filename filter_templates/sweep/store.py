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
from its checkpoint (:class:`Heartbeats` keeps a process's claims fresh). Each run's own summary
stays the source of truth:
:meth:`Store.reindex_run` rebuilds a row from its run directory.

Budget sweeps add a second table, ``budget_points``: one row per (budget, family, template,
dataset, seed, training settings), holding the budget, the fitted width and filters, the fitted
model's resources and the key of the ``runs`` row that trains it -- or, for a budget the template
cannot reach, no run and the reason. Two budgets that fit the same model share one run. The
table is created on opening (stores from before it simply gain it); a re-run of the same budget
sweep writes the same rows again, so a lost store is rebuilt by ``sweep --reindex`` plus a re-run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import read_metrics
from filter_templates.core.status import RUNNING, RUN_STATUSES
from filter_templates.sweep.budget_points import BudgetPoints
from filter_templates.sweep.claims import Claims, Heartbeats
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
    owner_alive,
    owner_id,
    point_key,
    row_dict,
)

# The store's names, wherever they are defined: what the engines, the CLI and the reports import.
__all__ = ["Store", "StoreError", "STATUSES", "EXECUTION_FIELDS", "DEFAULT_FILE", "DEFAULT_STALE_AFTER",
           "canonical_json", "point_key", "budget_point_key", "owner_id", "owner_alive", "read_metrics",
           "BUDGET_STATUSES", "Heartbeats", "HEARTBEAT_EVERY"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,                  -- sha256 of key_json
    key_json TEXT NOT NULL,                -- canonical JSON of the configuration minus EXECUTION_FIELDS
    config_json TEXT NOT NULL,             -- full TrainConfig.to_dict() of the last run of this point
    family TEXT NOT NULL, template TEXT NOT NULL, width REAL NOT NULL, dataset TEXT NOT NULL,
    seed INTEGER NOT NULL, epochs INTEGER NOT NULL, classes INTEGER NOT NULL, filters TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'template',  -- template, or pruning: a pruning baseline (template: its method)
    image_size INTEGER NOT NULL DEFAULT 32,  -- side of the images trained on: part of a cell, like the dataset
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
    family TEXT NOT NULL, template TEXT NOT NULL, dataset TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('fitted', 'unreachable')),
    reason TEXT,                           -- why unreachable
    width REAL, filters TEXT,              -- the fitted model
    fit_json TEXT,                         -- its resources as fitted (params, flops, memory, capped, note)
    run_key TEXT,                          -- the runs row that trains it (NULL when unreachable)
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_points_run ON budget_points (run_key);
"""


#: Columns added to ``runs`` after stores were written (name, SQL type): opening an older store adds them.
_ADDED_COLUMNS = (("val_acc", "REAL"), ("kind", "TEXT NOT NULL DEFAULT 'template'"),
                  ("image_size", "INTEGER NOT NULL DEFAULT 32"), ("paused_at", "INTEGER"))


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class Store(Claims, BudgetPoints):
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
            have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS:  # a store written before the column gains it, empty
                if column not in have:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            row = self.db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"results store {str(self.path)!r} has schema version {row[0]}; this filter-templates "
                    f"reads up to {SCHEMA_VERSION}: upgrade filter-templates")

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
        with self._tx() as db:
            for config, run_dir in points:
                key, key_json = point_key(config)
                f = fields(config)
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (key, key_json, config_json, family, template, width, dataset, seed, "
                    "epochs, classes, filters, kind, image_size, status, run_dir, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (key, key_json, canonical_json(config), f["family"], f["template"], f["width"], f["dataset"],
                     f["seed"], f["epochs"], f["classes"], f["filters"], f["kind"], f["image_size"], str(run_dir), now,
                     now),
                )
                if cur.rowcount:
                    new += 1
                    self._event(key, "add", None)
        return new

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
            key, key_json = point_key(config)
            f = fields(config)
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
                db.execute(
                    "INSERT INTO runs (key, key_json, config_json, family, template, width, dataset, seed, epochs, "
                    "classes, filters, kind, image_size, status, run_dir, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (key, key_json, canonical_json(config), f["family"], f["template"], f["width"], f["dataset"],
                     f["seed"], f["epochs"], f["classes"], f["filters"], f["kind"], f["image_size"], str(run_dir), now,
                     now),
                )
            else:
                db.execute("UPDATE runs SET status='pending', run_dir=?, claimed_by=NULL, claim_token=NULL, "
                           "heartbeat=NULL, updated_at=? WHERE key=?", (str(run_dir), now, key))
            db.execute("UPDATE runs SET epoch_metrics=?, epochs_done=? WHERE key=?",
                       (canonical_json(clean(epochs)), max([int(e["epoch"]) for e in epochs] or [0]), key))
            self._event(key, "reindex", None)
        if summary is not None:
            self.finish(key, None, summary, epochs=epochs, run_dir=str(run_dir))
        return key

    # -- reading ---------------------------------------------------------------------------

    def _rows_for(self, keys: Sequence[str], where: str = "1") -> dict[str, sqlite3.Row]:
        out: dict[str, sqlite3.Row] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
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
        for r in (self._rows_for(list(keys)).values() if keys is not None
                  else self.db.execute("SELECT status FROM runs")):
            out[r["status"]] += 1
        return out

    def paused(self, keys: Sequence[str]) -> dict[str, int]:
        """The runs among ``keys`` that are paused: ``{key: the epoch they paused after}``."""
        return {k: int(r["paused_at"]) for k, r in self._rows_for(list(keys), "status='pending'").items()
                if r["paused_at"] is not None}

    def meta(self, name: str) -> Any:
        """A JSON value the store keeps under ``name`` (None: none), such as the plan of the
        successive halving its paused runs belong to."""
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "value=excluded.value", (name, canonical_json(value)))

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM events" + (" WHERE key=?" if key else "") + " ORDER BY id"
        return [dict(r) for r in self.db.execute(q, (key,) if key else ())]

    def integrity_check(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())
