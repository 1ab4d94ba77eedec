"""``report --to tensorboard DIR``: a results store's runs as TensorBoard runs, so sweeps trained
without ``--log`` can be browsed and compared there too.

Each run with recorded epochs becomes ``DIR/<store's group>/<run folder name>``: its identity in the
hparams plugin, every epoch's scalars and its final metrics and resources, under the same tags a
run logged live with ``--log tensorboard`` has (:mod:`filter_templates.tracking.tracker`). A folder
written before for the same run is replaced, so writing again after more runs finish adds them
without repeating anyone's epochs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from filter_templates.core import trackers
from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import check_writable
from filter_templates.core.status import DONE, FAILED
from filter_templates.method.fit import Budget
from filter_templates.sweep.store import Store, store_group
from filter_templates.tracking.adapter import RunInfo
from filter_templates.tracking.tensorboard_log import TensorBoardRun, write_hparams
from filter_templates.tracking.tracker import FINAL_METRICS, epoch_scalars, final_scalars, hparams

__all__ = ["write_tensorboard", "TRACKERS_TO"]

#: The trackers ``report --to`` writes a store to.
TRACKERS_TO = ("tensorboard",)


def _summary_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`final_scalars` reads, from a store row's columns."""
    resources = dict(row.get("resources") or {})
    for key in ("params", "flops", "train_memory_bytes"):
        resources.setdefault(key, row.get(key))
    resources.setdefault("latency_s", {"batch1": row.get("latency_b1_s")})
    return {
        "val_acc": row.get("val_acc"),
        "final_acc": row.get("final_acc"),
        "best_acc": row.get("best_acc"),
        "wall_s": row.get("wall_s"),
        "resources": resources,
    }


def _write_run(folder: Path, run: RunInfo, row: Mapping[str, Any]) -> None:
    """One store row as a TensorBoard run in ``folder``, written beside it and moved in whole."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = TensorBoardRun(FINAL_METRICS)
    writer.open(run, {"id": str(tmp)})  # hparams written below, not by open: the folder is new
    try:
        write_hparams(writer.writer, run.hparams, FINAL_METRICS)
        metrics = row.get("epoch_metrics") or []
        for m in metrics:
            writer.epoch(int(m["epoch"]), epoch_scalars(m))
        if row["status"] in (DONE, FAILED):
            writer.finish(max(len(metrics), 1), final_scalars(_summary_of(row)), [], row["status"] == DONE)
    finally:
        writer.close()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_tensorboard(db: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    """Write every run of store ``db`` that recorded an epoch as a TensorBoard run under
    ``out/<store name>/`` (:func:`store_group`); return their folders."""
    trackers.require({"to": ["tensorboard"]})
    if not Path(db).is_file():
        raise UsageError(f"--db {db}: no results store there")
    check_writable(out, "--to tensorboard", folder=True)
    group = store_group(db)
    written = []
    with Store(db) as store:
        budgets = {b["run_key"]: str(Budget(b["budget_key"], b["budget_value"])) for b in store.budget_rows()}
        rows = [r for r in store.rows() if r.get("epoch_metrics") and r.get("config")]
    for row in rows:
        name = Path(row["run_dir"]).name if row.get("run_dir") else row["key"][:10]
        folder = Path(out, group, name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        run = RunInfo(name, group, {"dir": str(out)}, hparams(row["config"], budgets.get(row["key"])))
        _write_run(folder, run, row)
        written.append(folder)
    return written
