"""The Ray driver's Tune callback: the one place that writes the results store during a Ray sweep.

Its own module because it subclasses ``ray.tune.Callback`` (so importing it imports Ray: only
``ray_engine.run_ray`` does, after checking Ray is installed), and because Tune pickles its
callbacks with the experiment state: a module-level class pickles by reference, and
``__getstate__`` leaves the live store connection and progress bar out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from filter_templates.core.messages import note
from filter_templates.core.rundir import MODEL, SUMMARY, copy_run_files, read_metrics, read_summary
from filter_templates.core.status import DONE, FAILED, PAUSED
from filter_templates.sweep.plan import Point, SweepResult
from filter_templates.sweep.store import Store

__all__ = ["StoreCallback", "error_line"]


def error_line(text: Any) -> str:
    """The last meaningful line of a trial's traceback."""
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~")) and "Traceback" not in ln:
            return ln[:2000]
    return "the trial failed without an error message"


class StoreCallback(tune.Callback):
    """Records each trial's epochs as they are reported and its summary when it ends."""

    def __init__(
        self, store: Store, by_key: dict[str, Point], tokens: dict[str, str], beats: Any, result: SweepResult, bar: Any
    ) -> None:
        self.store, self.by_key, self.tokens, self.beats, self.result, self.bar = (
            store,
            by_key,
            tokens,
            beats,
            result,
            bar,
        )
        self.finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Tune saves its experiment state; a live connection has no place in it

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store = None  # type: ignore[assignment]
        self.finished = set()

    @staticmethod
    def _key(trial: Any) -> str:
        return trial.config["point"]["key"]

    def _record(self, key: str, summary: dict[str, Any], run_dir: Path) -> None:
        if key in self.finished or self.store is None:
            return
        self.finished.add(key)
        self.store.finish(
            key, self.tokens[key], summary, epochs=read_metrics(run_dir) or summary.get("metrics"), run_dir=str(run_dir)
        )
        self.beats.drop(key)
        name = self.by_key[key].name
        if summary.get("status") == PAUSED:
            self.result.paused += 1
            note(f"paused {name} after epoch {summary.get('stopped_at')}")
        elif summary.get("status") == DONE:
            self.result.done += 1
            note(f"done   {name}")
        else:
            self.result.failed += 1
            self.result.failures.append({"run": name, "reason": str(summary.get("reason"))})
            note(f"FAILED {name}: {summary.get('reason')}")
        self.bar.update()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.store is None or result.get("final"):
            return  # the final report is recorded from summary.json in on_trial_complete
        key = self._key(trial)
        row = {
            k: result[k]
            for k in (
                "epoch",
                "lr",
                "train_loss",
                "train_acc",
                "val_acc",
                "test_acc",
                "test_views",
                "seconds",
                "images_per_s",
            )
            if k in result
        }
        if "epoch" in row:
            self.store.record_epoch(key, self.tokens[key], row)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        point = self.by_key[key]
        summary = read_summary(point.run_dir)  # the source of truth, when the trial ran on this host
        if summary is None and trial.checkpoint is not None:  # it ran elsewhere: fetch its folder
            with trial.checkpoint.as_directory() as d:
                copy_run_files(Path(d), point.run_dir)
            summary = read_summary(point.run_dir)
        if summary is None:
            last = trial.last_result or {}
            summary = (
                json.loads(last["summary"])
                if "summary" in last
                else {"status": FAILED, "reason": "the trial ended without a summary"}
            )
        self._record(key, summary, point.run_dir)
        self._drop_tune_copy(trial, point.run_dir)

    @staticmethod
    def _drop_tune_copy(trial: Any, run_dir: Path) -> None:
        """Tune's copy of a finished run (weights and optimizer state, per trial) doubles the disk a
        sweep needs; once the run folder here is complete it is only a duplicate: delete it."""
        ckpt = trial.checkpoint
        if ckpt is None or not (run_dir / SUMMARY).exists() or not (run_dir / MODEL).exists():
            return
        try:
            ckpt.filesystem.delete_dir(ckpt.path)
        except Exception:  # storage we cannot delete from: keep it, nothing is lost
            pass

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._key(trial)
        reason = error_line(trial.get_error())
        self._record(
            key,
            {"status": FAILED, "reason": f"{reason} (after {trial.num_failures} attempt(s) on Ray)"},
            self.by_key[key].run_dir,
        )
