"""Pruning baselines: the ratio search meets the budget with the largest model, the pruned structure
rebuilds from plain numbers, a pruning run resumes bit for bit after a crash during fine-tuning, and
the refusals (no Torch-Pruning, a model it cannot prune) are one line each."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import count_params
from filter_templates.pruning import adapter as prune
from filter_templates.run import run_config
from filter_templates.sweep.grid import SweepSpec, plan_grid
from filter_templates.training.config import TrainConfig

pytest.importorskip("torch_pruning")

BUDGET = {"key": "params", "value": 20_000}


def _arch(width: float = 0.0625):
    """The base model every baseline prunes: a pruning run's arch is its base model's, the method is
    its ``prune`` setting's."""
    return make_arch("vgg19", "base", width, 10)


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return _arch().build()


@pytest.mark.parametrize("method", ["prune-l1", "prune-l1-global"])
def test_ratio_search_gives_the_largest_model_within_the_budget(base_model, method):
    spec = {"method": method, "budget": BUDGET, "at": 0.5}
    found = prune.search_ratio(base_model, _arch(), spec, 64)
    assert count_params(found.model) == found.value <= BUDGET["value"]
    assert 0 < found.ratio < 1 and found.step <= prune.RATIO_STEP
    # one step less pruning is over the budget: no larger model of this method fits
    bigger = prune.prune_once(base_model, found.ratio - found.step, method == "prune-l1-global", _arch())
    assert count_params(bigger) == found.over > BUDGET["value"]
    assert count_params(base_model) > BUDGET["value"]  # the base is untouched
    # the classifier keeps one output per class
    assert prune.layer_counts(found.model)["classifier"] == 10


def test_pruned_structure_rebuilds_from_plain_numbers(base_model):
    pruned = prune.prune_once(base_model, 0.6, True, _arch())
    record = json.loads(json.dumps(prune.structure(base_model, pruned)))  # what the run folder keeps
    rebuilt = prune.apply_structure(_arch().build(), record)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), pruned.eval()(x))
    with pytest.raises(UsageError, match="does not have"):
        prune.apply_structure(_arch().build(), {"nowhere": {"attrs": {}, "tensors": {}}})


def _config(**kw) -> TrainConfig:
    base = dict(
        arch=_arch(),
        dataset="digits",
        epochs=4,
        limit_train=160,
        limit_test=64,
        batch_size=32,
        device="cpu",
        precision="fp32",
        memory_format="contiguous",
        val_split=0,
        prune={"method": "prune-l1", "budget": BUDGET, "at": 0.5},
    )
    return TrainConfig(**{**base, **kw})


class _Crash(Exception):
    pass


def test_pruning_run_resumes_bit_exact_after_a_crash_during_fine_tuning(tmp_path):
    config = _config()
    whole = run_config(config, tmp_path / "whole")
    assert whole["status"] == "done" and whole["resources"]["params"] <= BUDGET["value"]
    assert [r["stage"] for r in whole["metrics"]] == ["train", "train", "finetune", "finetune"]
    assert whole["pruned"]["layers"]["classifier"] == 10

    def crash(row: dict) -> None:  # after the first fine-tuning epoch's checkpoint
        if row["stage"] == "finetune":
            raise _Crash()

    with pytest.raises(_Crash):
        run_config(config, tmp_path / "cut", on_epoch=crash)
    with pytest.raises(UsageError, match="--resume"):  # nothing overwritten without resume
        run_config(config, tmp_path / "cut")
    resumed = run_config(config, tmp_path / "cut", resume=True)
    a = rundir.load_checkpoint(tmp_path / "whole" / rundir.MODEL)
    b = rundir.load_checkpoint(tmp_path / "cut" / rundir.MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["test_acc"] for r in resumed["metrics"]] == [r["test_acc"] for r in whole["metrics"]]
    assert resumed["resources"]["params"] == whole["resources"]["params"]


def test_pruning_run_pauses_inside_and_between_its_stages_and_ends_bit_exact(tmp_path):
    """Paused in the base model's training (1), right at the pruning (2) and in fine-tuning (3) of
    4 epochs, then continued: the weights and accuracies of a run never paused."""
    whole = run_config(_config(), tmp_path / "whole")
    part = tmp_path / "part"
    for k, stages in ((1, ["train"]), (2, ["train", "train"]), (3, ["train", "train", "finetune"])):
        s = run_config(_config(stop_at=k), part, resume=k > 1)
        assert s["status"] == "paused" and s["stopped_at"] == k and s["epochs"] == k
        assert [r["stage"] for r in s["metrics"]] == stages and not (part / rundir.MODEL).exists()
    done = run_config(_config(), part, resume=True)
    assert done["status"] == "done" and done["stopped_at"] is None
    a = rundir.load_checkpoint(tmp_path / "whole" / rundir.MODEL)
    b = rundir.load_checkpoint(part / rundir.MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_acc" if "val_acc" in r else "test_acc"] for r in done["metrics"]] == [
        r["val_acc" if "val_acc" in r else "test_acc"] for r in whole["metrics"]
    ]


def test_prune_scratch_takes_the_global_runs_architecture(tmp_path):
    runs = tmp_path / "runs"
    glob = _config(arch=_arch(), epochs=2, prune={"method": "prune-l1-global", "budget": BUDGET, "at": 0.5})
    g = run_config(glob, runs / "global")
    scratch = dataclasses.replace(glob, prune={**glob.prune, "method": "prune-scratch"})
    s = run_config(scratch, runs / "scratch")
    assert s["pruned"]["structure"] == g["pruned"]["structure"]
    assert s["pruned"]["source"] == str(runs / "global")
    assert [r["stage"] for r in s["metrics"]] == ["scratch", "scratch"]  # all epochs, from scratch


def _spec(models=("vgg19",), baselines=("prune-l1",)) -> SweepSpec:
    return SweepSpec(
        models=list(models),
        templates=["base"],
        widths=[],
        datasets=["digits"],
        budgets=["params=20K"],
        baselines=list(baselines),
        prune_from=0.0625,
        train={"epochs": 2, "device": "cpu"},
    )


def test_budget_sweep_plans_baselines_beside_the_templates():
    grid = plan_grid(_spec(baselines=["prune-scratch", "prune-l1", "prune-l1-global"]), classes_of=lambda d: 10)
    names = [p.method for p in grid.budget_points]
    assert names == ["prune-l1-global", "base", "prune-scratch", "prune-l1"]  # the global search first
    cfg = grid.configs[0]
    assert cfg.prune == {"method": "prune-l1-global", "budget": {"key": "params", "value": 20000}, "at": 0.5}
    assert cfg.arch.width == 0.0625 and cfg.arch.template == "base"  # the base model it prunes
    assert (cfg.kind, cfg.method) == ("pruning", "prune-l1-global")
    with pytest.raises(UsageError, match="budget"):
        plan_grid(dataclasses.replace(_spec(), budgets=[], widths=[0.1]), classes_of=lambda d: 10)
    with pytest.raises(UsageError, match="latency"):
        plan_grid(dataclasses.replace(_spec(), budgets=["latency=1ms"]), classes_of=lambda d: 10)
    with pytest.raises(UsageError, match="unknown baseline"):
        plan_grid(_spec(baselines=["magnitude"]), classes_of=lambda d: 10)


def test_a_model_torch_pruning_cannot_prune_is_one_line_and_the_templates_still_run(monkeypatch, capsys):
    class Untraceable:  # what Torch-Pruning does with a network it cannot trace
        class pruner:
            class MetaPruner:
                def __init__(self, *a, **kw):
                    raise RuntimeError("cannot trace the graph of this model\nsecond line")

        class importance:
            MagnitudeImportance = staticmethod(lambda p: None)

    monkeypatch.setattr(prune, "torch_pruning", lambda: Untraceable)
    prune.cannot_prune.cache_clear()
    try:
        grid = plan_grid(_spec(), classes_of=lambda d: 10)
    finally:
        prune.cannot_prune.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot prune vgg19" in err[0] and "templates still run" in err[0]
    assert [p.method for p in grid.budget_points] == ["base", "prune-l1"]
    assert [c.arch.template for c in grid.configs] == ["base"]
    (skipped,) = grid.unreachable
    assert "RuntimeError: cannot trace the graph" in skipped.reason


def test_without_torch_pruning_baselines_say_how_to_get_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import fails as when it is not installed
    code = main(
        [
            "reduce",
            "--model",
            "vgg19",
            "--budget",
            "params=20K",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--baselines",
            "prune-l1",
            "--out",
            str(tmp_path / "R"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "pip install -e '.[prune]'" in err[0]
    assert not (tmp_path / "R").exists()  # refused before anything was written
