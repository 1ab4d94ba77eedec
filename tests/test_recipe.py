"""Recipes (fast / paper), and the precision and memory format flags."""

from __future__ import annotations

import json

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.training import autotune
from filter_templates.training.config import EXECUTION_KEYS, FIELDS, RECIPES, RESULT_KEYS, TrainConfig
from filter_templates.training.loop import train
from filter_templates.training.recipe import OptimizerSettings, lr_multiplier, make_optimizer

SMALL = dict(dataset="digits", limit_train=128, limit_test=64, batch_size=32)
ARCH = make_arch("vgg19", "uniform", 0.05, 10)


@pytest.fixture(autouse=True)
def no_resources(monkeypatch):
    from filter_templates.method import measure

    real = measure.resources
    monkeypatch.setattr(
        measure,
        "resources",
        lambda arch, batch_size=64, device="cpu", **kw: real(arch, batch_size, device, memory=False, latency=False),
    )


# ---- config fields ------------------------------------------------------------------------------


def test_field_lists_come_from_train_config():
    from filter_templates.cli.train_cmd import _TRAIN_KEYS
    from filter_templates.sweep.grid import TRAIN_FIELDS
    from filter_templates.sweep.store import EXECUTION_FIELDS

    assert set(RESULT_KEYS) | set(EXECUTION_KEYS) == set(FIELDS) and not set(RESULT_KEYS) & set(EXECUTION_KEYS)
    assert EXECUTION_FIELDS == EXECUTION_KEYS
    assert set(_TRAIN_KEYS) == set(FIELDS) - {"arch"}  # all but the architecture concern
    # the grid's own axes: the model, the dataset, the seed and the pruning baseline a point runs
    assert set(TRAIN_FIELDS) == set(FIELDS) - {"arch", "dataset", "seed", "prune"}
    assert {"recipe", "ema", "tta", "label_smoothing"} <= set(RESULT_KEYS)
    assert {"precision", "memory_format", "device"} <= set(EXECUTION_KEYS)


def test_class_counts_come_from_metadata(monkeypatch):
    from filter_templates import data

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("data were loaded"))
    assert (data.num_classes("cifar10"), data.num_classes("CIFAR-100"), data.num_classes("digits")) == (10, 100, 10)
    with pytest.raises(UsageError, match="unknown dataset"):
        data.num_classes("imagenet")


def test_recipe_fills_unset_fields_and_keeps_given_ones():
    fast = TrainConfig(arch=ARCH)
    assert fast.recipe == "fast" and all(getattr(fast, k) == v for k, v in RECIPES["fast"].items())
    paper = TrainConfig(arch=ARCH, recipe="paper", lr=0.05)
    assert paper.lr == 0.05 and paper.schedule == "step" and paper.nesterov is False
    assert TrainConfig.from_dict(json.loads(json.dumps(paper.to_dict()))) == paper


@pytest.mark.parametrize(
    "change, word",
    [
        ({"recipe": "slow"}, "recipe"),
        ({"warmup": 1.5}, "warmup"),
        ({"ema": 1.0}, "ema"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"schedule": "cosine"}, "schedule"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov"),
        ({"tta": "yes"}, "tta"),
        ({"tta_shift": -1}, "tta_shift"),
        ({"tta_shift": 5}, "tta_shift"),
        ({"tta_shift": True}, "tta_shift"),
        ({"crop_pad": -1}, "crop_pad"),
        ({"crop_pad": 2.5}, "crop_pad"),
        ({"crop_pad": 17}, "crop_pad"),
        ({"precision": "fp16"}, "precision"),
        ({"memory_format": "nhwc"}, "memory_format"),
    ],
)
def test_bad_recipe_values_are_refused(change, word):
    with pytest.raises(UsageError, match=word):
        TrainConfig(arch=ARCH, **change)


def test_crop_pad_reaches_the_training_loader(tmp_path, monkeypatch):
    from filter_templates.training import loop

    pads = []
    real = loop.Loader

    def spy(*args, **kw):
        if kw.get("train"):
            pads.append(kw["options"].pad)
        return real(*args, **kw)

    monkeypatch.setattr(loop, "Loader", spy)
    summary = train(TrainConfig(arch=ARCH, epochs=1, crop_pad=2, **SMALL), tmp_path / "run")
    assert summary["status"] == "done" and pads == [2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["crop_pad"] == 2


def test_shifted_views_move_the_image_and_reflect_the_border():
    from filter_templates.training.loop import _shifted

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    right_down = _shifted(x, 1)
    assert torch.equal(right_down[:, :, 1:, 1:], x[:, :, :-1, :-1])
    assert torch.equal(right_down[:, :, 0, 1:], x[:, :, 1, :-1])  # the new top row reflects row 1
    assert torch.equal(_shifted(x, -2)[:, :, :-2, :-2], x[:, :, 2:, 2:])
    cl = _shifted(x.contiguous(memory_format=torch.channels_last), 1)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, right_down)


def test_evaluate_sums_the_logits_of_the_four_views():
    from filter_templates.data.augment import Loader
    from filter_templates.training.loop import _shifted, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()  # sees every pixel
    x = torch.randint(0, 256, (24, 32, 32, 3), dtype=torch.uint8).numpy()
    y = torch.randint(0, 10, (24,)).numpy()
    loader = Loader(x, y, 8, train=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    with torch.no_grad():
        xs = torch.cat([xb for xb, _ in loader])
        views = [xs, xs.flip(3), _shifted(xs.flip(3), 1), _shifted(xs, -1)]
        logits = [model(v) for v in views]
    labels = torch.from_numpy(y)
    expect = {2: logits[0] + logits[1], 4: sum(logits), 1: logits[0]}
    for (tta, shift), n in (((True, 1), 4), ((True, 0), 2), ((False, 1), 1)):
        acc = evaluate(model, loader, False, tta, shift)
        assert acc == pytest.approx((expect[n].argmax(1) == labels).float().mean().item()), (tta, shift)
    # the views disagree somewhere, so each count is really tested
    assert len({tuple(expect[n].argmax(1).tolist()) for n in (1, 2, 4)}) > 1


def test_only_the_final_evaluation_adds_the_shifted_views(tmp_path):
    summary = train(
        TrainConfig(arch=ARCH, epochs=2, dataset="synthetic", limit_train=64, limit_test=32, batch_size=32),
        tmp_path / "run",
    )
    assert summary["status"] == "done"
    assert [m["test_views"] for m in summary["metrics"]] == [2, 4]  # fast: flip, then flip + shifts
    paper = train(TrainConfig(arch=ARCH, epochs=1, recipe="paper", **SMALL), tmp_path / "paper")
    assert [m["test_views"] for m in paper["metrics"]] == [1]


# ---- schedule and optimiser ---------------------------------------------------------------------


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = lr_multiplier("linear", 0.25, epochs=4, steps_per_epoch=10)  # 40 steps, 10 of warmup
    values = [f(s) for s in range(40)]
    assert values[0] == pytest.approx(0.1) and values[9] == 1.0
    assert all(a > b for a, b in zip(values[9:], values[10:]))
    assert values[-1] == pytest.approx(1 / 31) and f(40) == 0.0


def test_step_schedule_divides_at_half_and_three_quarters():
    f = lr_multiplier("step", 0.0, epochs=4, steps_per_epoch=10)
    assert [f(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_multiplier("step", 0.0, epochs=1, steps_per_epoch=5)(4) == 1  # no milestone at epoch 0


def test_no_weight_decay_on_norm_and_bias():
    model = ARCH.build()
    opt = make_optimizer(model, OptimizerSettings(0.1, 0.9, 5e-4, True, norm_bias_decay=False))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and all(p.ndim > 1 for p in decayed["params"])
    assert free["weight_decay"] == 0.0 and all(p.ndim == 1 for p in free["params"]) and free["params"]
    assert len(make_optimizer(model, OptimizerSettings(0.1, 0.9, 5e-4, False, norm_bias_decay=True)).param_groups) == 1


def test_fast_run_records_every_setting(tmp_path):
    summary = train(
        TrainConfig(arch=ARCH, epochs=3, precision="fp32", memory_format="channels_last", **SMALL), tmp_path / "run"
    )
    assert summary["status"] == "done" and summary["recipe"] == "fast"
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    for k, v in RECIPES["fast"].items():
        if k != "batch_size":
            assert cfg[k] == v, k
    lrs = [m["lr"] for m in summary["metrics"]]  # lr at the start of each epoch: warmup, then decay
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2]


# ---- precision and memory format ----------------------------------------------------------------


def test_overrides_are_recorded(tmp_path):
    summary = train(
        TrainConfig(arch=ARCH, epochs=1, precision="bf16", memory_format="contiguous", **SMALL), tmp_path / "run"
    )
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["precision"], cfg["memory_format"]) == ("bf16", "contiguous")
    assert (summary["precision"], summary["memory_format"], summary["execution"]["source"]) == (
        "bf16",
        "contiguous",
        "given",
    )


def _small_train_cmd(dataset: str) -> list[str]:
    """`train` of a tiny model for one epoch on 64 images: what the CLI tests below vary."""
    return [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.05",
        "--dataset",
        dataset,
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--threads",
        "1",
    ]


def test_cli_precision_flags_and_aliases(tmp_path, capsys):
    common = [*_small_train_cmd("digits"), "--json"]
    assert main([*common, "--precision", "bf16", "--memory-format", "contiguous", "--out", str(tmp_path / "a")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["precision"], doc["memory_format"], doc["config"]["precision"]) == ("bf16", "contiguous", "bf16")
    assert main([*common, "--no-bf16", "--no-channels-last", "--recipe", "paper", "--out", str(tmp_path / "b")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["precision"], doc["memory_format"], doc["recipe"]) == ("fp32", "contiguous", "paper")
    assert doc["execution"]["threads_source"] == "--threads" and doc["threads"] == 1
    # resuming with another explicit precision would not be bit-exact: refused
    assert main([*common, "--precision", "fp32", "--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "precision (checkpoint 'bf16', now 'fp32')" in capsys.readouterr().err


def test_cli_recipe_flags_reach_config_json(tmp_path, capsys):
    common = _small_train_cmd("synthetic")
    assert (
        main(
            [
                *common,
                "--crop-pad",
                "3",
                "--label-smoothing",
                "0.2",
                "--optimizer",
                "muon",
                "--muon-lr",
                "0.02",
                "--json",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert (doc["config"]["crop_pad"], doc["config"]["label_smoothing"]) == (3, 0.2)
    assert (doc["config"]["optimizer"], doc["config"]["muon_lr"]) == ("muon", 0.02)
    for flag, bad in (("--crop-pad", "-1"), ("--optimizer", "adam"), ("--muon-lr", "0")):
        assert main([*common, flag, bad, "--out", str(tmp_path / "b")]) == 2
        assert flag in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_takes_the_rule_and_keeps_it_on_resume(tmp_path):
    summary = train(TrainConfig(arch=ARCH, epochs=2, device="cuda", **SMALL), tmp_path / "run")
    assert summary["status"] == "done" and summary["device"].startswith("cuda")
    assert summary["execution"]["source"] == "rule"
    assert (summary["precision"], summary["memory_format"]) == autotune.rule(torch.device("cuda"))[:2]
    stop = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(arch=ARCH, epochs=2, device="cuda", **SMALL),
            stop,
            on_epoch=lambda row: (_ for _ in ()).throw(KeyboardInterrupt),
        )
    resumed = train(TrainConfig(arch=ARCH, epochs=2, device="cuda", **SMALL), stop, resume=True)
    assert (resumed["precision"], resumed["memory_format"]) == (summary["precision"], summary["memory_format"])


@pytest.mark.slow
def test_gpu_check_dry_run():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--dry-run"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    for word in ("CUDA-only tests", "ours/plain", "ratio", "vgg19 base", "vgg19 uniform"):
        assert word in r.stdout, word
