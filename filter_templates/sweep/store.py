"""The results store: one SQLite file, one row per grid point.

Why SQLite: one file a user can copy, query and open from several sweep processes at once. WAL
mode lets readers (``report``) run while a sweep writes; a busy timeout makes writers queue instead
of failing; every state change is one ``BEGIN IMMEDIATE`` transaction, so a row is claimed by
exactly one process and a process killed at any instant leaves either the old or the new state.

A row's key is a hash of the canonical JSON of the point's training configuration as
``train.identity`` sees it: without the fields that say *where and how* to run rather than *what*
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

import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .. import rundir
from ..errors import UsageError
from ..prune import kind_of
from ..rundir import read_metrics
from ..train import EXECUTION_KEYS, identity

__all__ = [
    "Store",
    "StoreError",
    "STATUSES",
    "EXECUTION_FIELDS",
    "canonical_json",
    "point_key",
    "budget_point_key",
    "owner_id",
    "owner_alive",
    "read_metrics",
    "BUDGET_STATUSES",
    "Heartbeats",
    "HEARTBEAT_EVERY",
]

STATUSES = ("pending", "running", "done", "failed")
#: A budget point is fitted (it has a run) or unreachable (the reason says why; nothing to train).
BUDGET_STATUSES = ("fitted", "unreachable")
#: TrainConfig fields that do not change what is trained, only where/how: not part of a row's key.
EXECUTION_FIELDS = EXECUTION_KEYS
SCHEMA_VERSION = 1
DEFAULT_FILE = "results.sqlite"  # a store given no name: sweep and report, and reduce inside its --out
DEFAULT_STALE_AFTER = 600.0  # seconds without a heartbeat before another host may take a row over
HEARTBEAT_EVERY = 30.0  # seconds between heartbeats of a claimed row

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
                  ("image_size", "INTEGER NOT NULL DEFAULT 32"))


class StoreError(UsageError):
    """The results file cannot be used (not SQLite, newer schema, unwritable)."""


# --------------------------------------------------------------------------------------------
# Keys and owners
# --------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, floats as Python writes them: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_key(config: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, key_json)`` of a TrainConfig dict: what identifies a grid point in the store."""
    key_json = canonical_json(identity(config))
    return hashlib.sha256(key_json.encode()).hexdigest(), key_json


def budget_point_key(ident: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, ident_json)`` of a budget point's identity (see ``sweep.grid.BudgetPoint``)."""
    ident_json = canonical_json(ident)
    return hashlib.sha256(ident_json.encode()).hexdigest(), ident_json


def owner_id() -> str:
    """``pid@host``: who holds a claim, in a form a later sweep can check for liveness."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False when ``owner`` is a process on this host; None when it is on another host."""
    if not owner or "@" not in owner:
        return False
    pid_text, _, host = owner.partition("@")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: it will never write again
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a report filters on, lifted out of a TrainConfig dict."""
    try:
        arch = config["arch"]
        return {
            "family": str(arch["family"]),
            "template": str(arch["template"]),
            "width": float(arch["width"]),
            "classes": int(arch["classes"]),
            "filters": canonical_json([int(f) for f in arch["filters"]]),
            "dataset": str(config["dataset"]),
            "seed": int(config.get("seed", 0)),
            "epochs": int(config["epochs"]),
            "kind": kind_of(config),
            "image_size": int(config.get("image_size", arch.get("image_size", 32))),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"not a training configuration (missing or bad {exc}): {canonical_json(config)[:200]}") from None


def _num(x: Any) -> Any:
    """A finite number or None (SQLite stores NaN as NULL anyway; JSON cannot hold it)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


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
            (key, event, owner, time.time(), None if detail is None else canonical_json(_clean(detail))),
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
                f = _fields(config)
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

    def claimable(self, row: Mapping[str, Any], *, stale_after: float = DEFAULT_STALE_AFTER,
                  now: float | None = None) -> bool:
        """A pending row, or a running row whose owner is gone (dead pid here, or stale heartbeat)."""
        if row["status"] == "pending":
            return True
        if row["status"] != "running":
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
                if row is None or not self.claimable(row, stale_after=stale_after, now=now):
                    continue
                token = uuid.uuid4().hex
                reclaimed = row["status"] == "running"
                cfg = (config_json or {}).get(key, row["config_json"])
                db.execute(
                    "UPDATE runs SET status='running', claimed_by=?, claim_token=?, claimed_at=?, heartbeat=?, "
                    "attempts=attempts+1, started_at=COALESCE(started_at, ?), reason=NULL, config_json=?, "
                    "updated_at=? WHERE key=?",
                    (owner, token, now, now, now, cfg, now, key),
                )
                self._event(key, "reclaim" if reclaimed else "claim", owner,
                            {"from": row["claimed_by"]} if reclaimed else None)
                d = _row_dict(row)
                d.update(status="running", claimed_by=owner, claim_token=token, claimed_at=now, heartbeat=now,
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
                n += db.execute("UPDATE runs SET heartbeat=? WHERE key=? AND claim_token=? AND status='running'",
                                (now, key, token)).rowcount
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
            history.append(_clean(dict(metrics)))
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
        if status not in ("done", "failed"):
            raise StoreError(f"a run's summary status must be 'done' or 'failed', got {status!r}")
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
            history = [_clean(dict(e)) for e in epochs] if epochs is not None else json.loads(row[0])
            db.execute(
                "UPDATE runs SET status=?, reason=?, final_acc=?, best_acc=?, best_epoch=?, val_acc=?, params=?, "
                "flops=?, train_memory_bytes=?, batch_size=?, latency_batch_s=?, latency_b1_s=?, resource_device=?, threads=?, "
                "resources_json=?, wall_s=?, device=?, epoch_metrics=?, epochs_done=?, finished_at=?, "
                "updated_at=?, claimed_by=NULL, claim_token=NULL, heartbeat=NULL, run_dir=COALESCE(?, run_dir) "
                f"WHERE {where}",
                (status, summary.get("reason") if status == "failed" else None,
                 _num(summary.get("final_acc")), _num(summary.get("best_acc")), _num(summary.get("best_epoch")),
                 _num(summary.get("val_acc")),
                 _num(res.get("params")), _num(res.get("flops")), _num(res.get("train_memory_bytes")),
                 _num(batch), _num(lat.get(f"batch{batch}")), _num(lat.get("batch1")), res.get("device"), _num(res.get("threads")),
                 canonical_json(_clean(res)) if res else None, _num(summary.get("wall_s")), summary.get("device"),
                 canonical_json(history), max([int(e.get("epoch", 0)) for e in history] or [0]), now, now,
                 run_dir, *args),
            )
            self._event(key, status, None if token is None else owner_id(),
                        {"reason": summary.get("reason")} if status == "failed" else None)
        return True

    def fail(self, key: str, token: str | None, reason: str) -> bool:
        """Mark a row failed with a reason (an exception outside train's own summary)."""
        return self.finish(key, token, {"status": "failed", "reason": reason})

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
        ``budget_value``, ``family``, ``template``, ``dataset``, ``seed``, ``status``, ``reason``,
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
                fit = None if p.get("fit") is None else canonical_json(_clean(p["fit"]))
                db.execute(
                    "INSERT INTO budget_points (key, ident_json, budget_key, budget_value, family, template, dataset, "
                    "seed, status, reason, width, filters, fit_json, run_key, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET status=excluded.status, reason=excluded.reason, "
                    "width=excluded.width, filters=excluded.filters, fit_json=excluded.fit_json, "
                    "run_key=excluded.run_key, updated_at=excluded.updated_at",
                    (key, ident_json, str(p["budget_key"]), float(p["budget_value"]), str(p["family"]),
                     str(p["template"]), str(p["dataset"]), int(p["seed"]), p["status"], p.get("reason"),
                     _num(p.get("width")), filters, fit, p.get("run_key"), now, now),
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
                chunk = wanted[i:i + 500]
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
            f = _fields(config)
        except (ValueError, UsageError):
            return None
        summary = rundir.read_summary(run_dir)  # with what the sweep measured (resources.json) merged in
        if summary is not None and summary.get("status") not in ("done", "failed"):
            summary = None
        epochs = read_metrics(run_dir)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
            if row is not None and row["status"] == "running" and not self.claimable(row):
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
                       (canonical_json(_clean(epochs)), max([int(e["epoch"]) for e in epochs] or [0]), key))
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
        return _row_dict(row) if row is not None else None

    def rows(self, keys: Sequence[str] | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), in insertion order."""
        if keys is not None:
            found = self._rows_for(list(keys))
            rows = [found[k] for k in keys if k in found]
        else:
            rows = list(self.db.execute("SELECT * FROM runs ORDER BY rowid"))
        out = [_row_dict(r) for r in rows]
        return [r for r in out if status is None or r["status"] == status]

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """How many rows (of ``keys``, or all) are in each status."""
        out = dict.fromkeys(STATUSES, 0)
        for r in (self._rows_for(list(keys)).values() if keys is not None
                  else self.db.execute("SELECT status FROM runs")):
            out[r["status"]] += 1
        return out

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
        try:
            with Store(self.db) as store:
                while not self.stop.wait(self.every):
                    with self.lock:
                        claims = dict(self.claims)
                    store.heartbeat(claims)
        except Exception:  # noqa: BLE001 - staleness is the fallback; the run goes on
            pass

    def __enter__(self) -> "Heartbeats":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A row with its JSON columns decoded: ``config``, ``resources``, ``epoch_metrics``, ``filters``."""
    d = dict(row)
    d["config"] = json.loads(d.pop("config_json"))
    res = d.pop("resources_json")
    d["resources"] = json.loads(res) if res else None
    d["epoch_metrics"] = json.loads(d["epoch_metrics"])
    d["filters"] = json.loads(d["filters"])
    return d
