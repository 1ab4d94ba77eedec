"""What a results-store row holds and who owns it: the keys of grid and budget points, the columns
lifted out of a configuration, JSON-safe values, and the ``pid@host`` owners of claims: what the
store (:mod:`.store`) computes from its inputs, apart from the SQL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any, Mapping

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.status import BUDGET_STATUSES, ROW_STATUSES
from filter_templates.training.config import EXECUTION_KEYS, experiment, kind_of, method_of

__all__ = [
    "store_group",
    "StoreError",
    "STATUSES",
    "BUDGET_STATUSES",
    "EXECUTION_FIELDS",
    "SCHEMA_VERSION",
    "DEFAULT_FILE",
    "DEFAULT_STALE_AFTER",
    "HEARTBEAT_EVERY",
    "canonical_json",
    "point_key",
    "budget_point_key",
    "owner_id",
    "owner_alive",
    "fields",
    "num",
    "clean",
    "row_dict",
]

STATUSES = ROW_STATUSES
#: TrainConfig fields that do not change what is trained, only where/how: not part of a row's key.
EXECUTION_FIELDS = EXECUTION_KEYS
SCHEMA_VERSION = 2  # 2: kind and method columns of their own; older stores are rebuilt with sweep --reindex
DEFAULT_FILE = "results.sqlite"  # a store given no name: sweep and report, and reduce inside its --out
DEFAULT_STALE_AFTER = 600.0  # seconds without a heartbeat before another host may take a row over
HEARTBEAT_EVERY = 30.0  # seconds between heartbeats of a claimed row


class StoreError(UsageError):
    """The results file cannot be used (not SQLite, newer schema, unwritable)."""


# --------------------------------------------------------------------------------------------
# Keys and owners
# --------------------------------------------------------------------------------------------


def store_group(db: str | os.PathLike[str]) -> str:
    """The name a store's runs share in a tracker (a TensorBoard folder, an MLflow experiment, a W&B
    group): the store file's stem, or for a store of the default name, its folder's (reduce's --out)."""
    path = Path(os.path.abspath(db))
    return path.parent.name if path.name == DEFAULT_FILE and path.parent.name else path.stem


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, floats as Python writes them: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_key(config: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, key_json)`` of a TrainConfig dict: what identifies a grid point in the store."""
    key_json = canonical_json(experiment(config))
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


def fields(config: Mapping[str, Any]) -> dict[str, Any]:
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
            "method": method_of(config),
            "image_size": int(config.get("image_size", arch.get("image_size", IMAGE_SIZE))),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"not a training configuration (missing or bad {exc}): {canonical_json(config)[:200]}"
        ) from None


def num(x: Any) -> Any:
    """A finite number or None (SQLite stores NaN as NULL anyway; JSON cannot hold it)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return x if math.isfinite(x) else None


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A row with its JSON columns decoded: ``config``, ``resources``, ``epoch_metrics``, ``filters``."""
    d = dict(row)
    d["config"] = json.loads(d.pop("config_json"))
    res = d.pop("resources_json")
    d["resources"] = json.loads(res) if res else None
    d["epoch_metrics"] = json.loads(d["epoch_metrics"])
    d["filters"] = json.loads(d["filters"])
    return d
