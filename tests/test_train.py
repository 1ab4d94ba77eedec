"""Training loop, run directory, exact resume, refusals, NaN handling, checkpoint safety, CLI."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core import checkpoint as ckpt
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.core.loss import AUX_LOSS_WEIGHT
from filter_templates.method.arch import make_arch
from filter_templates.training.config import RECIPES, TrainConfig
from filter_templates.training.loop import sgd_step, train

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(dataset="digits", limit_train=192, limit_test=96, batch_size=32)


@pytest.fixture(autouse=True)
def quick_resources(request, monkeypatch):
    """Latency timing and the memory account cost ~1 s per run; these tests are about the loop, so
    only the run-directory test measures them."""
    if request.node.name == "test_run_writes_the_run_directory":
        return
    from filter_templates.method import measure

    real = measure.resources
    monkeypatch.setattr(
        measure,
        "resources",
        lambda arch, batch_size=64, device="cpu", **kw: real(arch, batch_size, device, memory=False, latency=False),
    )


def small_config(epochs: int = 2, **kw) -> TrainConfig:
    return TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), epochs=epochs, **{**SMALL, **kw})


def weights(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    return state["model"] if "model" in state else state


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: error: "), err
    return err[0]


# ---- config -----------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    c = small_config(lr=0.05, seed=3, device="cpu")
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c


@pytest.mark.parametrize(
    "change, word",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"bogus": 1}, "bogus"),
        ({"weight_decay": "a"}, "weight_decay"),
        ({"limit_train": 0}, "limit_train"),
        ({"arch": {"family": "vgg19"}}, "arch"),
    ],
)
def test_config_rejects_bad_values(change, word):
    d = {**small_config().to_dict(), **change}
    with pytest.raises(UsageError, match=word):
        TrainConfig.from_dict(d)


# ---- a run and its directory -------------------------------------------------------------------


def test_run_writes_the_run_directory(tmp_path):
    seen = []
    summary = train(small_config(epochs=4, recipe="paper"), tmp_path / "run", on_epoch=seen.append)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "model.pt",
        "summary.json",
        "outcomes.npz",
    }
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == seen and [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_acc",
        "test_views",
        "seconds",
        "images_per_s",
    }
    # lr / 10 at int(0.5 E) and int(0.75 E) epochs
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert all(0 <= r["test_acc"] <= 1 and math.isfinite(r["train_loss"]) for r in rows)
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "done" and summary["reason"] is None and summary["epochs"] == 4
    assert summary["final_acc"] == rows[-1]["test_acc"]
    assert summary["best_acc"] == max(r["test_acc"] for r in rows)
    assert rows[summary["best_epoch"] - 1]["test_acc"] == summary["best_acc"]
    assert summary["device"] == "cpu" and summary["threads"] == 1
    res = summary["resources"]
    assert res["params"] == sum(p.numel() for p in small_config().arch.build().parameters())
    assert res["flops"] > 0 and res["train_memory_bytes"] > 0 and res["batch_size"] == SMALL["batch_size"]
    assert set(res["latency_s"]) == {f"batch{SMALL['batch_size']}", "batch1"}
    saved = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert saved.precision in ("fp32", "bf16") and saved.memory_format in ("channels_last", "contiguous")
    # the execution the run used is recorded: the rule's precision and layout, the thread count it ran
    # with, the memory its training split could take, one process, per-process BatchNorm
    assert saved.data_memory >= 1 and (saved.world_size, saved.sync_bn) == (1, False)
    assert saved == small_config(
        epochs=4,
        recipe="paper",
        precision=saved.precision,
        memory_format=saved.memory_format,
        threads=summary["threads"],
        data_memory=saved.data_memory,
        world_size=1,
        sync_bn=False,
        compile=False,
    )
    assert (summary["recipe"], summary["precision"], summary["memory_format"]) == (
        "paper",
        saved.precision,
        saved.memory_format,
    )
    state = rundir.load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 4 and state["arch"] == small_config().arch.to_dict()
    assert_same_weights(weights(run / "model.pt"), state["model"])


def test_one_epoch_run_keeps_its_learning_rate(tmp_path):
    train(small_config(epochs=1, lr=0.05, recipe="paper"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["lr"] == 0.05


def test_same_seed_same_weights_different_seed_differs(tmp_path):
    train(small_config(epochs=1), tmp_path / "a")
    train(small_config(epochs=1), tmp_path / "b")
    train(small_config(epochs=1, seed=1), tmp_path / "c")
    a, b, c = (weights(tmp_path / n / "model.pt") for n in "abc")
    assert_same_weights(a, b)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _cli_train_args(out: Path, epochs: int) -> list[str]:
    return [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.05",
        "--dataset",
        "digits",
        "--limit-train",
        str(SMALL["limit_train"]),
        "--limit-test",
        str(SMALL["limit_test"]),
        "--batch-size",
        str(SMALL["batch_size"]),
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
    ]  # nothing pinned: the rule decides, and a resume keeps it


def test_resume_after_sigkill_is_bit_identical(tmp_path, capsys):
    epochs = 4
    ref = tmp_path / "ref"
    assert main(_cli_train_args(ref, epochs)) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "filter_templates", *_cli_train_args(killed, epochs)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    done_before = rundir.load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert 1 <= done_before < epochs, "the run finished before it could be killed"
    assert not (killed / "summary.json").exists()

    assert main([*_cli_train_args(killed, epochs), "--resume"]) == 0
    assert_same_weights(weights(ref / "model.pt"), weights(killed / "model.pt"))
    ref_state, new_state = (
        rundir.load_checkpoint(ref / "checkpoint.pt"),
        rundir.load_checkpoint(killed / "checkpoint.pt"),
    )
    for k in ref_state["optimizer"]["state"]:
        assert torch.equal(
            ref_state["optimizer"]["state"][k]["momentum_buffer"], new_state["optimizer"]["state"][k]["momentum_buffer"]
        )
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rs]  # noqa: E731
    assert strip(rows) == strip(ref_rows)


class Stop(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Stop  # like a kill right after this epoch's checkpoint

    return on_epoch


@pytest.mark.parametrize(
    "kw",
    [
        dict(recipe="paper", precision="fp32"),
        dict(recipe="fast", precision="fp32"),
        # bf16 steps are emulated (slow) on CPUs without native bf16: in the slow suite
        pytest.param(
            dict(recipe="fast", ema=0.9, precision="bf16", memory_format="contiguous"), marks=pytest.mark.slow
        ),
        dict(recipe="fast", optimizer="muon", precision="fp32"),
    ],
)
def test_resume_after_an_epoch_in_process(tmp_path, kw):
    """Two epochs: stopped after the first (mid-schedule), the resumed run's last epoch (the fast
    recipe's final shifted test views, the EMA's last update) matches the uninterrupted run's."""
    full = tmp_path / "full"
    summary = train(small_config(epochs=2, **kw), full)
    assert summary["precision"] == kw["precision"] and summary["recipe"] == kw["recipe"]
    part = tmp_path / "part"
    with pytest.raises(Stop):
        train(small_config(epochs=2, **kw), part, on_epoch=_stop_after(1))
    assert not (part / "model.pt").exists()
    torch.manual_seed(1234)  # whatever the global RNG did meanwhile, the checkpoint restores it
    # "auto" takes the checkpoint's precision and memory format
    resumed = train(small_config(epochs=2, **{**kw, "precision": "auto", "memory_format": "auto"}), part, resume=True)
    assert resumed["precision"] == kw["precision"] and resumed["execution"]["source"] == "checkpoint"
    assert_same_weights(weights(full / "model.pt"), weights(part / "model.pt"))
    if kw.get("ema"):
        assert_same_weights(
            rundir.load_checkpoint(full / "checkpoint.pt")["ema"]["model"],
            rundir.load_checkpoint(part / "checkpoint.pt")["ema"]["model"],
        )


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(epochs=1), run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(_cli_train_args(run, 1)) == 2
    assert "--resume" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_checkpoint_of_other_configuration_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(epochs=1), run)
    lr = RECIPES["fast"]["lr"]
    with pytest.raises(UsageError, match=rf"epochs \(checkpoint 1, now 2\).*lr \(checkpoint {lr:g}, now {lr / 2:g}\)"):
        train(small_config(epochs=2, lr=lr / 2), run, resume=True)
    other = TrainConfig(arch=make_arch("vgg19", "base", 0.05, 10), epochs=1, **SMALL)
    with pytest.raises(UsageError, match="arch"):
        train(other, run, resume=True)
    # where the data live and which device do not make it another experiment
    assert train(small_config(epochs=1, device="cpu", data_dir=str(tmp_path)), run, resume=True)["status"] == "done"


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(_cli_train_args(tmp_path / "f", 1)) == 2
    assert "is a file" in one_error_line(capsys)


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    summary = train(small_config(epochs=1), tmp_path / "new", resume=True)
    assert summary["status"] == "done"
    assert "starting fresh" in capsys.readouterr().err


@pytest.mark.parametrize("resume", [False, True])
def test_finished_or_foreign_run_without_checkpoint_is_not_overwritten(tmp_path, capsys, resume):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("model.pt", "summary.json", "config.json"):
        (foreign / name).write_text("precious")
    finished = tmp_path / "finished"
    train(small_config(epochs=1), finished)
    (finished / "checkpoint.pt").unlink()  # deleted to save space once done
    for run in (foreign, finished):
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        assert main(_cli_train_args(run, 1) + (["--resume"] if resume else [])) == 2
        assert "nothing was overwritten" in one_error_line(capsys)
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_failed_run_without_checkpoint_may_start_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "failed", "reason": "loss became nan at epoch 1"}')
    assert train(small_config(epochs=1), run)["status"] == "done"


def test_resume_of_finished_run_rewrites_final_files(tmp_path):
    run = tmp_path / "run"
    first = train(small_config(epochs=1), run)
    (run / "model.pt").unlink()  # killed after the last checkpoint, before model.pt
    (run / "summary.json").unlink()
    again = train(small_config(epochs=1), run, resume=True)
    assert again["final_acc"] == first["final_acc"] and (run / "model.pt").exists()


# ---- NaN --------------------------------------------------------------------------------------


def _poison_loss_after(monkeypatch, calls: int) -> None:
    real = torch.nn.functional.cross_entropy
    count = {"n": 0}

    def cross_entropy(*a, **kw):
        count["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if count["n"] > calls else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)


def test_nan_loss_fails_the_run_with_reason(tmp_path, monkeypatch, capsys):
    steps_per_epoch = SMALL["limit_train"] // SMALL["batch_size"]
    _poison_loss_after(monkeypatch, steps_per_epoch + 2)  # in epoch 2
    run = tmp_path / "run"
    assert main(_cli_train_args(run, 3)) == 1
    line = one_error_line(capsys)
    assert "training failed" in line and "nan" in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "nan" in summary["reason"] and "epoch 2" in summary["reason"]
    assert summary["epochs"] == 1 and not (run / "model.pt").exists()
    assert rundir.load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # the last good state is kept


def test_exploding_lr_fails_instead_of_training_on(tmp_path):
    summary = train(small_config(epochs=4, lr=1e12), tmp_path / "run")
    assert summary["status"] == "failed" and ("nan" in summary["reason"] or "inf" in summary["reason"])


# ---- checkpoint files -------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_checkpoint_load_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(UsageError, match="checkpoint.pt") as refused:
        rundir.load_checkpoint(path)
    assert "refused" in str(refused.value) and "trust" not in str(refused.value)  # no advice to load it unsafely
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UsageError, match="checkpoint.pt"):
        rundir.load_checkpoint(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_truncated_or_missing_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.atomic_save({"a": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UsageError, match="cannot be read"):
        rundir.load_checkpoint(path)
    with pytest.raises(UsageError, match="no such file"):
        rundir.load_checkpoint(tmp_path / "none.pt")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    rundir.atomic_save({"v": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        rundir.atomic_save({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert rundir.load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_rng_state_survives_weights_only(tmp_path):
    torch.manual_seed(5)
    rundir.atomic_save({"rng": ckpt.rng_state(torch.device("cpu"))}, tmp_path / "s.pt")
    expected = torch.rand(3)
    torch.manual_seed(99)
    ckpt.set_rng_state(rundir.load_checkpoint(tmp_path / "s.pt")["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_train_on_digits_fresh_machine_command(tmp_path, monkeypatch, capsys):
    """The acceptance command, on the embedded dataset (no data, no network)."""
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                "--model",
                "vgg19",
                "--template",
                "uniform",
                "--width",
                "0.1",
                "--dataset",
                "digits",
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch   3/3" in out and "done: final test accuracy" in out
    run = tmp_path / "runs" / "digits-vgg19-uniform-w0.1-s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["epochs"] == 3
    assert summary["final_acc"] > 0.15  # learns something in 3 epochs (chance: 0.1; 0.25 seen)


def test_cli_json_is_one_document(tmp_path, capsys):
    args = [a for a in _cli_train_args(tmp_path / "run", 1) if a != "--quiet"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "done" and doc["config"]["epochs"] == 1


def test_cli_config_file_from_fit(tmp_path, capsys):
    arch = make_arch("vgg19", "reverse", 0.05, 100)  # classes follow the dataset (digits: 10)
    cfg = tmp_path / "fit.json"
    cfg.write_text(json.dumps({"arch": arch.to_dict(), "fit": {"budget": {"params": 1e5}}}))
    common = ["--dataset", "digits", "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--json"]
    assert main(["train", "--config", str(cfg), *common, "--out", str(tmp_path / "a")]) == 0
    a = json.loads(capsys.readouterr().out)["config"]["arch"]
    assert a["filters"] == list(arch.filters) and a["classes"] == 10 and a["template"] == "reverse"
    # an explicit flag overrides the file and re-derives the counts
    assert main(["train", "--config", str(cfg), "--width", "0.1", *common, "--out", str(tmp_path / "b")]) == 0
    b = json.loads(capsys.readouterr().out)["config"]["arch"]
    assert b["filters"] == list(make_arch("vgg19", "reverse", 0.1, 10).filters) and b["width"] == 0.1


@pytest.mark.parametrize(
    "argv, word",
    [
        (["train", "--dataset", "digits"], "--model"),
        (["train", "--model", "vgg19", "--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "cuda"),
        (["train", "--model", "nope"], "unknown model"),
        (["train", "--model", "vgg19", "--epochs", "0"], "epochs"),
        (["train", "--config", "/nonexistent/fit.json"], "fit.json"),
    ],
)
def test_cli_usage_errors_are_one_line(argv, word, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert word in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_config_file_not_json(tmp_path, capsys):
    bad = tmp_path / "fit.json"
    bad.write_text("{nope")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid JSON" in one_error_line(capsys)


# ---- the benchmark scripts (slow: run with -m slow) --------------------------------------------

SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], env=env, capture_output=True, text=True, timeout=1800
    )


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 not present")
def test_real_cifar10_script_one_short_epoch(tmp_path):
    r = _script(
        "real_cifar10.py",
        "--epochs",
        "1",
        "--limit-train",
        "5000",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "done" and doc["epochs"] == 1
    assert doc["final_acc"] > 0.15 and doc["recipe"] == "fast"  # 10 classes: chance is 0.1


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 not present")
def test_recipe_screen_runs_variants_side_by_side(tmp_path):
    r = _script(
        "recipe_screen.py",
        "--data",
        str(SHARED_CIFAR),
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--width",
        "0.05",
        "--limit-train",
        "256",
        "--deadline-s",
        "300",
        "plain",
        "seeded:seed=1,lr=0.02",
        "broken:no_such_field=1",
    )
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    assert "| 1 |" in rows["plain"] and "| 1 |" in rows["seeded:seed=1,lr=0.02"]
    assert "no_such_field" in rows["broken:no_such_field=1"]  # a bad variant shows its error, the others still run
    config = json.loads((tmp_path / "seeded" / "config.json").read_text())
    assert config["seed"] == 1 and config["lr"] == 0.02


@pytest.mark.slow
def test_throughput_script_reports_ratios():
    r = _script(
        "throughput.py",
        "--synthetic",
        "--width",
        "0.05",
        "--images",
        "256",
        "--bare-steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"ours", "ours_epoch", "plain", "bare fp32 channels_last", "bare bf16 contiguous"} <= set(
        doc["images_per_s"]
    )
    assert doc["ours_over_plain"] > 0 and doc["ours_over_best_bare"] > 0


def test_cli_config_file_never_imports_a_template_function(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr("os.getcwd", lambda *a: called.append(a) or "/")
    arch = make_arch("vgg19", "base", 0.05, 10).to_dict()
    arch["template"] = "os:getcwd"
    cfg = tmp_path / "evil.json"
    cfg.write_text(json.dumps({"arch": arch}))
    assert (
        main(["train", "--config", str(cfg), "--width", "0.1", "--dataset", "digits", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "names a Python function" in one_error_line(capsys)
    assert called == [] and not (tmp_path / "r").exists()


def test_huge_width_or_counts_are_one_line(tmp_path, capsys):
    assert main(["templates", "--model", "vgg19", "--width", "1e9"]) == 2
    assert "over the limit" in one_error_line(capsys)
    arch = make_arch("vgg19", "base", 0.05, 10).to_dict()
    arch["filters"] = [10**9] * 16
    cfg = tmp_path / "big.json"
    cfg.write_text(json.dumps({"arch": arch}))
    assert main(["train", "--config", str(cfg), "--dataset", "digits", "--out", str(tmp_path / "r")]) == 2
    assert "over the limit" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_paused_and_continued_twice_is_bit_identical(tmp_path, capsys):
    """Paused after epoch 1 and again after 2 of 4 (EMA on, so its state must travel too), then
    continued to the end: the weights of a run never paused. A paused run says so, has no model.pt
    and keeps the full schedule (its learning rates are the full run's)."""
    kw = dict(ema=0.9, precision="fp32")
    full = train(small_config(epochs=4, **kw), tmp_path / "full")
    part = tmp_path / "part"
    first = train(small_config(epochs=4, stop_at=1, **kw), part)
    assert first["status"] == "paused" and first["stopped_at"] == 1 and first["epochs"] == 1
    assert not (part / "model.pt").exists()
    assert first["metrics"][0] == {
        **full["metrics"][0],
        "seconds": first["metrics"][0]["seconds"],
        "images_per_s": first["metrics"][0]["images_per_s"],
    }
    again = train(small_config(epochs=4, stop_at=1, **kw), part, resume=True)  # at its stop: nothing trained
    assert again["status"] == "paused" and again["epochs"] == 1
    second = train(small_config(epochs=4, stop_at=2, **kw), part, resume=True)
    assert second["status"] == "paused" and second["stopped_at"] == 2
    assert (
        main(
            [
                "train",
                "--config",
                str(part / "config.json"),
                "--stop-at",
                "3",
                "--out",
                str(part),
                "--resume",
                "--quiet",
            ]
        )
        == 0
    )
    assert "paused after epoch 3 of 4" in capsys.readouterr().err
    done = train(small_config(epochs=4, **kw), part, resume=True)
    assert done["status"] == "done" and done["stopped_at"] is None and done["epochs"] == 4
    assert [m["lr"] for m in done["metrics"]] == [m["lr"] for m in full["metrics"]]
    assert_same_weights(weights(tmp_path / "full" / "model.pt"), weights(part / "model.pt"))


def test_stop_at_is_no_part_of_the_run_identity():
    from filter_templates.training.config import EXECUTION_KEYS, experiment

    assert "stop_at" in EXECUTION_KEYS
    assert experiment(small_config(stop_at=1).to_dict()) == experiment(small_config().to_dict())
    with pytest.raises(UsageError, match="stop_at"):
        small_config(stop_at=0)


class _WithAuxHead(torch.nn.Module):
    """Logits and an auxiliary head's logits in training mode, the logits alone in evaluation
    (torchvision's GoogLeNet and Inception-v3 behave so)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 3)
        self.aux = torch.nn.Linear(4, 3)

    def forward(self, x):
        return (self.body(x), self.aux(x)) if self.training else self.body(x)


def test_a_model_with_an_auxiliary_head_trains_every_head():
    torch.manual_seed(0)
    model, x, y = _WithAuxHead(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    before = model.aux.weight.detach().clone()
    expected = torch.nn.functional.cross_entropy(
        model.body(x), y
    ) + AUX_LOSS_WEIGHT * torch.nn.functional.cross_entropy(model.aux(x), y)
    loss, logits = sgd_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, amp=False)
    assert logits.shape == (8, 3) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(model.aux.weight, before)  # the auxiliary head got a gradient step
