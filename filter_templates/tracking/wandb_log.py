"""Weights & Biases: one W&B run per training run, named like its run folder, in the project
(``--project``, else ``$WANDB_PROJECT``, else ``filter-templates``) and the group a sweep's or
reduce's runs share; its identity as the run's config, epochs as steps, final metrics and
resources in the run's summary, the model as a ``model`` artifact. A continued run resumes the same
W&B run by id. ``WANDB_MODE=offline`` (and W&B's other variables) are honoured; its console capture
is off, so stdout keeps only the command's own output. The ``wandb`` extra."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from filter_templates.core import rundir
from filter_templates.tracking.adapter import Adapter, RunInfo

__all__ = ["WandbRun", "DEFAULT_PROJECT"]

DEFAULT_PROJECT = "filter-templates"


class WandbRun(Adapter):
    name = "wandb"

    def __init__(self) -> None:
        self.run: Any = None
        self.label = ""

    def open(self, run: RunInfo, saved: Mapping[str, Any] | None) -> str:
        import wandb  # the wandb extra

        folder = run.settings.get("dir")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.label = rundir.portable(run.name, limit=100)
        self.run = wandb.init(
            project=run.settings.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            group=run.group,
            name=run.name,
            id=None if saved is None else str(saved["id"]),
            resume=None if saved is None else "allow",
            dir=folder,
            config=dict(run.hparams),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        return str(self.run.id)

    def epoch(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def finish(self, step: int, final: Mapping[str, float], files: Sequence[Path], ok: bool) -> None:
        import wandb  # the wandb extra

        self.run.summary.update(dict(final))
        models = [p for p in files if p.name == rundir.MODEL]
        if models:
            artifact = wandb.Artifact(f"model-{self.label}", type="model")
            for path in models:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if ok else 1)
        self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
