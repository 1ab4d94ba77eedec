"""One run entry point: the CLI and every sweep engine call :func:`run_config`, which picks what a config
is -- a template's model trained once (``training.loop.train``) or a pruning baseline trained in
stages (``pruning.run.train_pruned``). The training loop knows nothing of pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from filter_templates.pruning.run import train_pruned
from filter_templates.tracking.tracker import Tracker, open_tracker
from filter_templates.training import distributed
from filter_templates.training.config import PRUNING, Summary, TrainConfig
from filter_templates.training.loop import open_checkpoint, train, with_data_digest

__all__ = ["run_config"]


def run_config(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    threads_source: str | None = None,
    checkpoint: dict | None = None,
) -> Summary:
    """Run ``config`` into ``out_dir`` and return its summary; the arguments are
    :func:`training.loop.train`'s (a pruning run shows no bar: its stages report through
    ``on_epoch``, and each stage chooses its own threads). The trackers its ``log`` setting names
    receive every epoch and the summary (:mod:`filter_templates.tracking`), from the process that
    writes the run folder only."""
    tracker = open_tracker(config, out_dir, main=distributed.from_env().main)
    try:
        summary = _run(config, out_dir, resume, progress, _with_tracker(on_epoch, tracker), threads_source, checkpoint)
        if tracker is not None:
            tracker.finish(summary)
        return summary
    finally:
        if tracker is not None:
            tracker.close()


def _with_tracker(on_epoch: Callable[[dict], None] | None, tracker: Tracker | None) -> Callable[[dict], None] | None:
    """The caller's ``on_epoch`` followed by the tracker's."""
    if tracker is None:
        return on_epoch

    def both(row: dict) -> None:
        if on_epoch is not None:
            on_epoch(row)
        tracker(row)

    return both


def _run(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool,
    progress: bool | None,
    on_epoch: Callable[[dict], None] | None,
    threads_source: str | None,
    checkpoint: dict | None,
) -> Summary:
    if config.kind != PRUNING:
        return train(
            config,
            out_dir,
            resume=resume,
            progress=progress,
            on_epoch=on_epoch,
            threads_source=threads_source,
            checkpoint=checkpoint,
        )
    config = with_data_digest(config)
    state = open_checkpoint(config, out_dir, resume) if checkpoint is None else checkpoint
    return train_pruned(config, out_dir, state, on_epoch)
