"""The object a run hands its epochs to, as a training loop hands its steps to a pruner: the
training loop knows nothing of trackers; :func:`open_tracker` builds a :class:`Tracker` for a run
whose ``log`` setting names any, and the run calls it after each epoch (the loop's ``on_epoch``
hook) and once with its summary.

Each tracker is an :class:`~.adapter.Adapter` behind the same calls. The run folder's
``tracking.json`` remembers each tracker's run id and the last epoch it logged, so a resumed run
continues the same tracker run and logs no epoch twice (epochs a kill left unlogged are sent from
``metrics.jsonl`` when the run continues). A tracker that fails (a read-only folder, a server
that cannot be reached, a package missing) costs one warning line and is dropped for the rest of
the run: it never fails the run, and it draws no random numbers, so the weights are those of a run
without it. Only the process that writes the run folder logs (rank 0 of a several-process run).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

from filter_templates.core import rundir
from filter_templates.core.messages import warn
from filter_templates.core.status import DONE, FAILED
from filter_templates.tracking.adapter import Adapter, RunInfo, Scalar
from filter_templates.tracking.mlflow_log import MlflowRun
from filter_templates.tracking.tensorboard_log import TensorBoardRun
from filter_templates.tracking.wandb_log import WandbRun
from filter_templates.training.config import Summary, TrainConfig, kind_of

__all__ = ["Tracker", "open_tracker", "hparams", "epoch_scalars", "final_scalars", "FINAL_METRICS", "ADAPTERS"]

#: The per-epoch scalars, by their ``metrics.jsonl`` names.
EPOCH_SCALARS = ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "images_per_s", "seconds")
#: The per-run metrics: final accuracies and resources, by the tag they are logged under.
FINAL_METRICS = (
    "final/val_acc",
    "final/test_acc",
    "final/best_acc",
    "final/wall_s",
    "resources/params",
    "resources/flops",
    "resources/train_memory_bytes",
    "resources/latency_batch1_s",
)
ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "tensorboard": lambda: TensorBoardRun(FINAL_METRICS),
    "mlflow": MlflowRun,
    "wandb": WandbRun,
}


def hparams(config: Mapping[str, Any], budget: str | None = None) -> dict[str, Scalar]:
    """A run's identity as a tracker's hyperparameters (from a ``TrainConfig.to_dict()``): model,
    template (or pruning method), width, budget, recipe, seed, dataset and epochs."""
    arch, prune = config["arch"], config.get("prune")
    if prune and budget is None:
        budget = f"{prune['budget']['key']}={prune['budget']['value']:g}"
    out: dict[str, Scalar] = {
        "model": str(arch["family"]),
        "template": str(prune["method"] if prune else arch["template"]),
        "kind": kind_of(config),
        "width": float(arch["width"]),
        "budget": budget or "",
        "recipe": str(config["recipe"]),
        "seed": int(config["seed"]),
        "dataset": str(config["dataset"]),
        "epochs": int(config["epochs"]),
    }
    return out


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one ``metrics.jsonl`` row a tracker plots."""
    return {k: float(row[k]) for k in EPOCH_SCALARS if isinstance(row.get(k), (int, float))}


def final_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """A summary's final metrics and resources under :data:`FINAL_METRICS`' tags (those it has)."""
    res = summary.get("resources") or {}
    values = {
        "final/val_acc": summary.get("val_acc"),
        "final/test_acc": summary.get("final_acc"),
        "final/best_acc": summary.get("best_acc"),
        "final/wall_s": summary.get("wall_s"),
        "resources/params": res.get("params"),
        "resources/flops": res.get("flops"),
        "resources/train_memory_bytes": res.get("train_memory_bytes"),
        "resources/latency_batch1_s": (res.get("latency_s") or {}).get("batch1"),
    }
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """A run's trackers. Call it with each epoch's metrics row (as ``on_epoch``), then
    :meth:`finish` with the summary; :meth:`close` in any case (it is idempotent)."""

    def __init__(self, run: RunInfo, out: Path, adapters: list[Adapter]) -> None:
        self.run, self.out = run, Path(out)
        self.adapters = adapters
        self.opened: dict[str, Adapter] = {}
        self.state: dict[str, dict[str, Any]] = rundir.read_json(self.out / rundir.TRACKING) or {}

    def _guard(self, adapter: Adapter, what: Callable[[], Any]) -> bool:
        """Run one tracker call; on any failure, one warning line and the tracker is dropped."""
        try:
            what()
            return True
        except Exception as exc:  # a tracker's failure never reaches the run
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            warn(f"--log {adapter.name}: {reason}; the run goes on without logging to {adapter.name}")
            self.adapters.remove(adapter)
            self.opened.pop(adapter.name, None)
            try:
                adapter.close()
            except Exception:  # already broken; the warning said so
                pass
            return False

    def _open(self, adapter: Adapter) -> None:
        """Start or continue ``adapter``'s run, then send the epochs it has not logged yet."""
        saved, rows = self.state.get(adapter.name), rundir.read_metrics(self.out)
        if saved is not None and saved.get("epoch", 0) > (int(rows[-1]["epoch"]) if rows else 0):
            saved = None  # the run started again from scratch (its checkpoint gone): a new tracker run

        def start() -> None:
            self.state[adapter.name] = {"id": adapter.open(self.run, saved), "epoch": (saved or {}).get("epoch", 0)}

        if self._guard(adapter, start):
            self.opened[adapter.name] = adapter
            self._save()
            for row in rows:
                self._epoch(adapter, row)

    def _epoch(self, adapter: Adapter, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        if epoch <= self.state[adapter.name]["epoch"]:  # logged before this run was interrupted
            return
        if self._guard(adapter, lambda: adapter.epoch(epoch, epoch_scalars(row))):
            self.state[adapter.name]["epoch"] = epoch

    def _ensure_open(self) -> None:
        """Open every tracker not open yet, but one whose run this run finished already (a finished
        run's final files rewritten: it has nothing new to log)."""
        for adapter in list(self.adapters):
            if adapter.name not in self.opened and not self.state.get(adapter.name, {}).get("finished"):
                self._open(adapter)

    def __call__(self, row: Mapping[str, Any]) -> None:
        """Log one epoch (the loop's ``on_epoch`` hook)."""
        self._ensure_open()
        for adapter in list(self.opened.values()):
            self._epoch(adapter, row)
        self._save()

    def finish(self, summary: Summary) -> None:
        """Log the run's outcome: final metrics, resources and files of a finished or failed run
        (a finished one is marked so in ``tracking.json``, and never logged to again; a failed one
        may still be continued); a paused run's tracker runs stay open for its continuation."""
        self._ensure_open()
        if summary["status"] in (DONE, FAILED):
            final, step = final_scalars(summary), max(int(summary["epochs"]), 1)
            files = [self.out / n for n in (rundir.MODEL, rundir.CONFIG, rundir.SUMMARY) if (self.out / n).is_file()]
            ok = summary["status"] == DONE
            for adapter in list(self.opened.values()):
                if self._guard(adapter, partial(adapter.finish, step, final, files, ok)) and ok:
                    self.state[adapter.name]["finished"] = True
            self._save()
        self.close()

    def close(self) -> None:
        """Flush every tracker; their runs stay continuable."""
        for adapter in list(self.opened.values()):
            self._guard(adapter, adapter.close)
        self.opened.clear()

    def _save(self) -> None:
        try:
            rundir.atomic_write_json(self.out / rundir.TRACKING, self.state)
        except OSError as exc:
            warn(f"{self.out / rundir.TRACKING}: {exc.strerror or exc}; a continued run may start new tracker runs")


def open_tracker(config: TrainConfig, out_dir: str | Path, main: bool = True) -> Tracker | None:
    """The tracker of a run of ``config`` into ``out_dir`` (None: it names no tracker, or this
    process is not the one that writes the run). Nothing is contacted before the first epoch, so a
    run refused at its start leaves no empty tracker run."""
    if config.log is None or not main:
        return None
    settings = config.log
    run = RunInfo(
        Path(out_dir).name, settings.get("group"), settings, hparams(config.to_dict(), settings.get("budget"))
    )
    return Tracker(run, Path(out_dir), [ADAPTERS[name]() for name in settings["to"]])
