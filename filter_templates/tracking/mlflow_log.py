"""MLflow: one run per training run in an experiment named by the project and group (a sweep's or
reduce's runs share it), its identity as parameters, epochs as metric steps, final metrics and
resources as metrics, and the run folder's model, config and summary as artifacts. Talks to the
tracking store through ``MlflowClient`` (no global active run, so runs in one process stay apart);
``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` are honoured where ``--tracking-uri`` and
``--project`` are not given. The ``mlflow`` extra (``mlflow-skinny`` with SQLAlchemy for a SQLite
store)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from filter_templates.tracking.adapter import Adapter, RunInfo

__all__ = ["MlflowRun", "DEFAULT_EXPERIMENT", "experiment_name"]

DEFAULT_EXPERIMENT = "filter-templates"


def experiment_name(settings: Mapping[str, Any], group: str | None) -> str:
    """``project/group`` of what is given; else ``$MLFLOW_EXPERIMENT_NAME``, else ``filter-templates``."""
    parts = [p for p in (settings.get("project"), group) if p]
    return "/".join(parts) or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


class MlflowRun(Adapter):
    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.id = ""

    def open(self, run: RunInfo, saved: Mapping[str, Any] | None) -> str:
        from mlflow.entities import Param  # the mlflow extra
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=run.settings.get("uri"))
        if saved is not None:
            self.id = str(saved["id"])
            self.client.update_run(self.id, status="RUNNING")
            return self.id
        tags = {"group": run.group} if run.group else {}
        self.id = self.client.create_run(
            self._experiment(experiment_name(run.settings, run.group)), run_name=run.name, tags=tags
        ).info.run_id
        self.client.log_batch(self.id, params=[Param(k, str(v)) for k, v in run.hparams.items()])
        return self.id

    def _experiment(self, name: str) -> str:
        """The experiment's id, created when missing (a sweep's parallel runs may race to create it)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self.client.create_experiment(name))
            except Exception:  # another process created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return str(found.experiment_id)

    def _log(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric  # the mlflow extra

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def epoch(self, step: int, scalars: Mapping[str, float]) -> None:
        self._log(step, scalars)

    def finish(self, step: int, final: Mapping[str, float], files: Sequence[Path], ok: bool) -> None:
        self._log(step, final)
        for path in files:
            self.client.log_artifact(self.id, str(path))
        self.client.set_terminated(self.id, "FINISHED" if ok else "FAILED")

    def close(self) -> None:
        self.client = None
