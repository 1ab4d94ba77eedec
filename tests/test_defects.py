"""One test per defect of issue 12: each failed before its fix."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY_TRAIN

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.data import cache as data_cache
from filter_templates.data.dataset import Dataset


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tiny_dataset(n: int = 8) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 2
    return Dataset("tiny", ("a", "b"), x, y, x.copy(), y.copy(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "test")


def test_cache_meta_missing_a_key_is_a_damaged_entry_not_a_keyerror(tmp_path):
    ds = data_cache.store(tiny_dataset(), "k1", tmp_path)
    entry = tmp_path / data_cache.CACHE_DIRNAME / "tiny-k1"
    assert data_cache.load("tiny", "k1", tmp_path) is not None
    meta = json.loads((entry / "meta.json").read_text())
    del meta["source"]
    (entry / "meta.json").write_text(json.dumps(meta))
    assert data_cache.load("tiny", "k1", tmp_path) is None  # was: KeyError 'source'
    again = data_cache.store(ds, "k1", tmp_path)  # the damaged entry is replaced
    assert again.source == "test" and data_cache.load("tiny", "k1", tmp_path) is not None


def test_export_to_an_unwritable_place_is_one_error_line(tmp_path, capsys):
    from test_export import fake_run

    fake_run(tmp_path / "run")
    code = main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript", "--out", "/proc/m.pt"])
    assert code == 2 and "/proc/m.pt" in one_error_line(capsys)


def test_register_family_refusals_are_usage_errors():
    from filter_templates.models import Family, get_family, register_family

    vgg = get_family("vgg19")
    with pytest.raises(UsageError, match="already registered"):  # was ValueError: a traceback in the CLI
        register_family(vgg)
    with pytest.raises(UsageError, match="one layer name"):
        register_family(Family("odd", (8, 16), ("a",), vgg.builder, "conv", "odd"))


def test_store_finish_with_a_bad_status_is_a_usage_error(tmp_path):
    from filter_templates.sweep.store import Store

    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(UsageError, match="status"):  # was ValueError
            store.finish("k", None, {"status": "running"})


def _finished_run_on_disk(runs: Path):
    """A TrainConfig and its point's run folder holding a finished run's files (as a sweep killed
    between writing summary.json and recording the row leaves them), without latency or memory."""
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.grid import run_dir_name
    from filter_templates.sweep.store import point_key
    from filter_templates.training.config import TrainConfig

    cfg = TrainConfig(
        arch=make_arch("mobilenet", "base", 0.05, 10), dataset="synthetic", epochs=1, batch_size=16, device="cpu"
    )
    d = cfg.to_dict()
    run = runs.resolve() / run_dir_name(d, point_key(d)[0])
    run.mkdir(parents=True)
    rundir.atomic_write_json(run / rundir.CONFIG, d)
    rundir.atomic_write_json(
        run / rundir.SUMMARY,
        {"status": "done", "device": "cpu", "config": d, "final_acc": 0.5, "resources": {"params": 1, "flops": 2}},
    )
    return cfg


def test_ray_engine_completes_the_resources_of_a_run_found_finished(tmp_path):
    pytest.importorskip("ray")
    from filter_templates.sweep.ray_engine import run_ray
    from filter_templates.sweep.store import Store

    cfg = _finished_run_on_disk(tmp_path / "runs")
    result = run_ray([cfg], tmp_path / "r.sqlite", tmp_path / "runs")  # nothing to train: Ray never starts
    assert result.done == 1
    with Store(tmp_path / "r.sqlite") as s:
        row = s.rows()[0]
    assert row["status"] == "done" and row["train_memory_bytes"] and row["latency_b1_s"]  # was None


def test_joining_a_token_cluster_sends_the_token_and_failures_say_how(tmp_path, monkeypatch):
    from filter_templates.sweep import ray_engine

    token = tmp_path / "auth_token"
    token.write_text("secret")
    monkeypatch.setattr(ray_engine, "RAY_TOKEN_FILE", token)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "ray._raylet", raising=False)  # leave this process's Ray settings alone
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not ray_engine.use_token_auth("auto")  # the user's choice stands
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert not ray_engine.use_token_auth(None) and "RAY_AUTH_MODE" not in os.environ  # a local Ray: Ray decides
    # set before Ray reads it (Ray caches the mode when imported; tests/test_ray.py joins a real head)
    assert ray_engine.use_token_auth("auto") and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.delenv("RAY_AUTH_MODE")  # pytest puts back what the environment held before the test

    def refused(address=None, **kw):
        raise ConnectionError("Failed to connect to GCS")

    token.unlink()  # no token here: the error line says what Ray >= 2.59 clusters need
    with pytest.raises(UsageError, match="RAY_AUTH_MODE=token"):
        ray_engine._init_ray(types.SimpleNamespace(init=refused), "auto")


@pytest.mark.parametrize("divisor", ["x", 2.7, True, 0])
def test_a_config_divisor_that_is_not_a_positive_integer_is_one_error_line(tmp_path, capsys, divisor):
    from filter_templates.method.arch import make_arch

    arch = make_arch("vgg19", "base", 0.05, 10).to_dict()
    arch["divisor"] = divisor  # "x" was a traceback (int("x")); 2.7 silently became 2
    (tmp_path / "c.json").write_text(json.dumps({"arch": arch}))
    argv = [
        "train",
        "--config",
        str(tmp_path / "c.json"),
        "--out",
        str(tmp_path / "run"),
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--limit-train",
        "8",
        "--limit-test",
        "8",
        "--quiet",
    ]  # short, were it accepted
    assert main(argv) == 2
    assert "divisor" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_fit_takes_several_templates_after_one_flag(capsys):
    code = main(
        [
            "fit",
            "--model",
            "vgg19",
            "--budget",
            "params=1M",
            "--template",
            "base",
            "uniform",
            "--template",
            "reverse",
            "--json",
        ]
    )  # was: "unrecognized arguments: uniform"
    assert code == 0
    assert [f["template"] for f in json.loads(capsys.readouterr().out)["fits"]] == ["base", "uniform", "reverse"]


def pyramid(base: list[int]) -> list[float]:
    """A template function for the test below: doubles every count."""
    return [2.0 * c for c in base]


def test_make_arch_takes_a_template_function():
    from filter_templates.method.arch import make_arch

    arch = make_arch("vgg19", pyramid, 0.5)  # was: TypeError ('function' object is not iterable)
    assert arch.filters == make_arch("vgg19", [2.0 * c for c in arch_base("vgg19")], 0.5).filters
    assert arch.template == f"{__name__}:pyramid"  # importable: --template can name it again
    assert make_arch("vgg19", lambda b: b, 1.0).template == "<lambda>"
    with pytest.raises(UsageError, match="a template is a name"):
        make_arch("vgg19", 42)  # type: ignore[arg-type]


def arch_base(family: str) -> tuple[int, ...]:
    from filter_templates.models import get_family

    return get_family(family).base_filters


def test_a_cli_command_whose_module_is_missing_is_an_import_error(monkeypatch):
    import filter_templates.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "nosuch": "a command without its module"})
    with pytest.raises(ImportError):  # was: silently left out of --help ("command not built yet")
        cli.build_parser()


def test_the_cpu_has_one_name_everywhere():
    from filter_templates.method.arch import make_arch
    from filter_templates.method.measure import device_name, resources

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "model name" not in cpuinfo.read_text():
        pytest.skip("no /proc/cpuinfo model name here")
    model = next(ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name"))
    res = resources(make_arch("vgg19", "base", 0.05, 10), 8, "cpu", memory=False, latency=False)
    assert res["device_name"] == device_name("cpu") == model  # resources said platform.processor(): "x86_64"


def test_train_resume_reads_the_checkpoint_once(tmp_path, capsys, monkeypatch):
    argv = [
        "train",
        *TINY_TRAIN,
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    loads = []
    real = rundir.load_checkpoint
    monkeypatch.setattr(rundir, "load_checkpoint", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert main([*argv, "--resume"]) == 0  # all epochs done: the final files are written again
    assert len(loads) == 1  # was 2: train_cmd opened it for its banner, then train() again
