"""TensorBoard: one event-file folder per run, ``DIR/[project/][group/]<run folder name>``, with the
run's identity in the hparams plugin (so the HPARAMS tab compares a sweep's runs) and every epoch
and final metric as a scalar. Uses ``torch.utils.tensorboard`` (the ``tensorboard`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from filter_templates.core.trackers import TENSORBOARD_DIR
from filter_templates.tracking.adapter import Adapter, RunInfo, Scalar

__all__ = ["TensorBoardRun", "run_folder", "write_hparams", "end_run"]


def run_folder(settings: Mapping[str, Any], name: str, group: str | None) -> Path:
    """Where a run's event files go: the log folder, then the project and group where given."""
    parts = [p for p in (settings.get("project"), group) if p]
    return Path(settings.get("dir") or TENSORBOARD_DIR, *parts, name)


def write_hparams(writer: Any, hparams: Mapping[str, Scalar], metrics: Sequence[str]) -> None:
    """The hparams plugin's experiment and start-of-run records: the run's identity and the metric tags
    the HPARAMS tab shows beside it (their values are the scalars of those tags)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary  # the tensorboard extra

    exp, start, _ = hparams_summary(dict(hparams), {m: 0.0 for m in metrics})
    for summary in (exp, start):
        writer.file_writer.add_summary(summary)


def end_run(writer: Any, ok: bool) -> None:
    """The hparams plugin's end-of-run record: the run succeeded or failed."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata  # the tensorboard extra
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE)
    content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    value = Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))
    writer.file_writer.add_summary(Summary(value=[value]))


class TensorBoardRun(Adapter):
    name = "tensorboard"

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = tuple(metrics)  # the final metrics' tags, announced to the hparams plugin
        self.writer: Any = None

    def open(self, run: RunInfo, saved: Mapping[str, Any] | None) -> str:
        from torch.utils.tensorboard import SummaryWriter  # the tensorboard extra

        folder = Path(saved["id"]) if saved else run_folder(run.settings, run.name, run.group).absolute()
        self.writer = SummaryWriter(log_dir=str(folder))
        if saved is None:
            write_hparams(self.writer, run.hparams, self.metrics)
            self.writer.flush()
        return str(folder)

    def epoch(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def finish(self, step: int, final: Mapping[str, float], files: Sequence[Path], ok: bool) -> None:
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        end_run(self.writer, ok)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
