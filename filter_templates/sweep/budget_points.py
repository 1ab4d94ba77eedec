"""Budget points in a results store: one row per (budget, family, template, dataset, seed, training
settings) with the fitted width and filters, the fitted model's resources and the key of the run
that trains it -- or, for a budget the template cannot reach, the reason. :class:`BudgetPoints` is
a part of :class:`.store.Store`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Iterable, Mapping, Sequence

from filter_templates.sweep.records import BUDGET_STATUSES, budget_point_key, canonical_json, clean, num

__all__ = ["BudgetPoints"]


class BudgetPoints:
    """The budget-point methods of :class:`.store.Store` (its connection ``db``, ``_tx`` and ``rows``)."""

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
                fit = None if p.get("fit") is None else canonical_json(clean(p["fit"]))
                db.execute(
                    "INSERT INTO budget_points (key, ident_json, budget_key, budget_value, family, template, dataset, "
                    "seed, status, reason, width, filters, fit_json, run_key, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET status=excluded.status, reason=excluded.reason, "
                    "width=excluded.width, filters=excluded.filters, fit_json=excluded.fit_json, "
                    "run_key=excluded.run_key, updated_at=excluded.updated_at",
                    (key, ident_json, str(p["budget_key"]), float(p["budget_value"]), str(p["family"]),
                     str(p["template"]), str(p["dataset"]), int(p["seed"]), p["status"], p.get("reason"),
                     num(p.get("width")), filters, fit, p.get("run_key"), now, now),
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
