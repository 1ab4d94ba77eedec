"""--log tensorboard|mlflow|wandb: each tracker's run read back with the tracker's own reader; a
resumed run continues its tracker run; a tracker that cannot write costs one warning line, never
the run and never its weights. Each tracker's tests skip where its extra is not installed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from test_reduce import TINY
from test_sweep import _poll, _spawn

from filter_templates.cli import main
from filter_templates.core import rundir, trackers
from filter_templates.method.fit import parse_budget

# The acceptance command on a slice of the digits (test_reduce's): three epochs in a few seconds.
TRAIN = [
    "train",
    *"--model vgg19 --template uniform --width 0.1 --epochs 3".split(),
    *TINY,
    "--val-split",
    "32",
    "--quiet",
]
EPOCH_TAGS = ("train_loss", "val_acc", "test_acc", "lr", "images_per_s")
IDENTITY = {"model": "vgg19", "template": "uniform", "width": 0.1, "recipe": "fast", "seed": 0}


def _events(folder: Path):
    """TensorBoard's own reader over one run's event files, keeping every event (no purge of
    repeated steps, so an epoch logged twice would show)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), purge_orphaned_data=False)
    acc.Reload()
    return acc


def _hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.string_value or v.number_value for k, v in start.hparams.items()}


def test_tensorboard_gets_every_epoch_and_the_identity(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run, logs = tmp_path / "run", tmp_path / "tb"
    assert main([*TRAIN, "--out", str(run), "--log", "tensorboard", "--log-dir", str(logs)]) == 0
    assert capsys.readouterr().err == ""
    acc = _events(logs / run.name)
    for tag in EPOCH_TAGS:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    rows = rundir.read_metrics(run)
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx([r["train_loss"] for r in rows])
    summary = rundir.read_summary(run)
    assert acc.Scalars("final/test_acc")[-1].value == pytest.approx(summary["final_acc"])
    assert acc.Scalars("resources/params")[-1].value == summary["resources"]["params"]
    assert {k: _hparams(acc)[k] for k in IDENTITY} == pytest.approx(IDENTITY)
    assert set(acc.PluginTagToContent("hparams")) >= {"_hparams_/experiment", "_hparams_/session_end_info"}


def test_mlflow_run_reads_back_through_its_client(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own switch for a local file store
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # honoured: no --tracking-uri given
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run), "--log", "mlflow", "--project", "study"]) == 0
    client = MlflowClient(uri)
    [found] = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    assert {k: found.data.params[k] for k in IDENTITY} == {k: str(v) for k, v in IDENTITY.items()}
    for tag in EPOCH_TAGS:
        assert [m.step for m in client.get_metric_history(found.info.run_id, tag)] == [1, 2, 3], tag
    summary = rundir.read_summary(run)
    assert found.data.metrics["final/val_acc"] == pytest.approx(summary["val_acc"])
    assert found.data.metrics["resources/flops"] == summary["resources"]["flops"]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"model.pt", "config.json", "summary.json"} <= artifacts
    model = Path(client.download_artifacts(found.info.run_id, "model.pt", str(tmp_path / "dl")))
    assert model.read_bytes() == (run / "model.pt").read_bytes()


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file: W&B's 7-byte header, then LevelDB's log format
    (32 KiB blocks of chunks, each with a 7-byte header: checksum, length, type) around the
    protobuf records W&B defines (wandb.proto)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # a block's zero-filled tail
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, logs = tmp_path / "run", tmp_path / "wb"
    assert main([*TRAIN, "--out", str(run), "--log", "wandb", "--log-dir", str(logs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "done"  # stdout: the one JSON document
    wandb.teardown()  # what the command's exit does: W&B's service writes out what it holds
    [path] = (logs / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    [start] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.display_name == run.name and start.run_id == rundir.read_json(run / rundir.TRACKING)["wandb"]["id"]
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert {k: config[k] for k in IDENTITY} == IDENTITY
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["_step"] for h in history] == [1, 2, 3]
    assert all(set(EPOCH_TAGS) <= set(h) for h in history)
    summary = {
        u.key or "/".join(u.nested_key): json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
    }
    assert summary["final/test_acc"] == pytest.approx(rundir.read_summary(run)["final_acc"])
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and [c.path for c in artifact.manifest.contents] == ["model.pt"]


def test_a_tracker_that_cannot_write_costs_one_warning_and_not_the_weights(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    plain, logged, blocked = tmp_path / "plain", tmp_path / "logged", tmp_path / "file"
    blocked.write_text("a file where the log folder's parent should be: no user can make the folder")
    assert main([*TRAIN, "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(logged), "--log", "tensorboard", "--log-dir", str(blocked / "tb")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: warning: --log tensorboard: "), err
    a = torch.load(plain / "model.pt", weights_only=True)
    b = torch.load(logged / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreachable_mlflow_server_costs_one_warning(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own: fail at once
    run = tmp_path / "run"
    assert (
        main([*TRAIN, "--epochs", "1", "--out", str(run), "--log", "mlflow", "--tracking-uri", "http://127.0.0.1:9"])
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: warning: --log mlflow: "), err
    assert rundir.read_summary(run)["status"] == "done"


def test_a_tracker_not_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(trackers.EXTRAS, "wandb", ("filter_templates_no_such_module", "wandb"))
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--log", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "filter-templates: error: --log wandb needs the filter_templates_no_such_module package: "
        "pip install 'filter-templates[wandb]'"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--log", "comet"], "invalid choice: 'comet'"),
        (["--log-dir", "x"], "'dir' needs a tracker to log to"),
    ],
)
def test_bad_log_flags_are_one_line(tmp_path, capsys, argv, match):
    assert main([*TRAIN, "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_log_settings_are_no_part_of_a_run_identity(tmp_path):
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.store import point_key
    from filter_templates.training.config import EXECUTION_KEYS, TrainConfig

    arch = make_arch("vgg19", "uniform", 0.1, 10)
    plain = TrainConfig(arch=arch, epochs=3)
    logged = TrainConfig(arch=arch, epochs=3, log=["tensorboard"])
    assert "log" in EXECUTION_KEYS and logged.log == {
        "to": ["tensorboard"],
        "dir": None,
        "uri": None,
        "project": None,
        "group": None,
        "budget": None,
    }
    assert point_key(plain.to_dict()) == point_key(logged.to_dict())


def test_killed_reduce_continues_each_tracker_run_without_repeating_an_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    out, logs, epochs = tmp_path / "R", tmp_path / "tb", 3
    argv = ["reduce", *"--model mobilenet --budget params=20K --templates uniform --no-export --jobs 1".split()]
    argv += ["--out", str(out), *TINY, "--epochs", str(epochs), "--log", "tensorboard", "--log-dir", str(logs)]
    db = out / "results.sqlite"
    proc = _spawn(argv, tmp_path / "killed.log")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # a run between two of its epochs
        if _poll(db, f"SELECT COUNT(*) FROM runs WHERE status='running' AND epochs_done BETWEEN 1 AND {epochs - 1}"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "reduce ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(argv) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    group = logs / out.name
    assert sorted(p.name for p in group.iterdir()) == runs  # one tracker run per candidate, named like its folder
    for name in runs:
        acc = _events(group / name)
        for tag in EPOCH_TAGS:
            assert [e.step for e in acc.Scalars(tag)] == list(range(1, epochs + 1)), (name, tag)
        assert len(acc.Scalars("final/test_acc")) == 1
        assert _hparams(acc)["budget"] == str(parse_budget("params=20K"))

    # the same store written afterwards (`report --to tensorboard`): the same runs, epochs and values
    exported = tmp_path / "exported"
    for _ in range(2):  # written twice: the second replaces the first, repeating nothing
        assert main(["report", "--db", str(db), "--to", "tensorboard", str(exported)]) == 0
    assert sorted(p.name for p in (exported / out.name).iterdir()) == runs
    for name in runs:
        live, later = _events(group / name), _events(exported / out.name / name)
        for tag in (*EPOCH_TAGS, "final/test_acc", "resources/params"):
            assert [(e.step, e.value) for e in later.Scalars(tag)] == [(e.step, e.value) for e in live.Scalars(tag)]
        assert _hparams(later) == _hparams(live)


def test_report_to_an_unknown_tracker_is_one_line(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "r.sqlite"), "--to", "comet", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["filter-templates: error: --to comet: choose from tensorboard"]


def test_a_sweep_config_names_the_trackers_and_flags_say_where(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    config = tmp_path / "grid.toml"
    config.write_text(
        'models = ["mobilenet"]\ntemplates = ["uniform"]\nbudgets = ["params=20K"]\ndatasets = ["digits"]\n'
        'epochs = 1\nlimit_train = 64\nlimit_test = 32\nbatch_size = 32\nthreads = 1\nlog = ["tensorboard"]\n'
    )
    db, logs = tmp_path / "study.sqlite", tmp_path / "tb"
    argv = ["sweep", "--config", str(config), "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
    assert main([*argv, "--log-dir", str(logs), "--device", "cpu"]) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert [p.name for p in (logs / "study").iterdir()] == [run.name]  # the store's group, the run's name
    acc = _events(logs / "study" / run.name)
    assert [e.step for e in acc.Scalars("test_acc")] == [1]
    assert _hparams(acc)["budget"] == str(parse_budget("params=20K"))  # each point's own budget
    assert json.loads((run / rundir.CONFIG).read_text())["log"]["to"] == ["tensorboard"]


def test_a_paused_run_continues_its_tracker_runs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri, run, logs = f"file:{tmp_path / 'mlruns'}", tmp_path / "run", tmp_path / "tb"
    log = ["--log", "tensorboard", "--log", "mlflow", "--log-dir", str(logs), "--tracking-uri", uri]
    assert main([*TRAIN, "--out", str(run), *log, "--stop-at", "2"]) == 0
    first = rundir.read_json(run / rundir.TRACKING)
    assert {k: v["epoch"] for k, v in first.items()} == {"tensorboard": 2, "mlflow": 2}
    assert main([*TRAIN, "--out", str(run), *log, "--resume"]) == 0
    assert {k: v["id"] for k, v in rundir.read_json(run / rundir.TRACKING).items()} == {
        k: v["id"] for k, v in first.items()
    }
    assert main([*TRAIN, "--out", str(run), *log, "--resume"]) == 0  # done already: final files rewritten
    acc = _events(logs / run.name)
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]
    assert len(acc.Scalars("final/test_acc")) == 1
    client = mlflow.tracking.MlflowClient(uri)
    [found] = client.search_runs([client.get_experiment_by_name("filter-templates").experiment_id])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train_loss")] == [1, 2, 3]
    assert len(client.get_metric_history(found.info.run_id, "final/test_acc")) == 1
    assert found.info.status == "FINISHED"


@pytest.mark.slow  # two processes of torch: ~20 s on a loaded 2-core machine
def test_only_the_writing_process_logs(tmp_path):
    pytest.importorskip("tensorboard")
    run, logs = tmp_path / "run", tmp_path / "tb"
    argv = [*TRAIN, "--epochs", "2", "--nproc", "2", "--out", str(run), "--log", "tensorboard", "--log-dir", str(logs)]
    assert main(argv) == 0
    assert [p.name for p in logs.iterdir()] == [run.name]
    acc = _events(logs / run.name)
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2]  # rank 0's epochs, once
    assert len(list((logs / run.name).glob("events.out.tfevents.*"))) == 1
