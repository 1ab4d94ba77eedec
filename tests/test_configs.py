"""The sweep configs in configs/ reproduce what they claim: each pins every training setting (so a
recipe's defaults can move without moving a study), and the CPU budget study still plans exactly
the runs its table in docs/cifar10-budget-cpu/ was measured with."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from filter_templates.sweep.grid import known_classes, load_config, plan_grid
from filter_templates.sweep.store import point_key
from filter_templates.training.config import EXECUTION_KEYS, RECIPE_FIELDS, experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
STUDY = ROOT / "docs" / "cifar10-budget-cpu"
#: What a config must say besides the recipe's fields: the recipe, how long, what it holds out, the input size.
PINNED = ("recipe", "epochs", "val_split", "image_size", *RECIPE_FIELDS)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {
        "cifar10-budget-cpu.toml",
        "paper.toml",
        "quick-cifar10.toml",
        "seeds-digits.toml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_pins_every_training_setting(path):
    """A setting left to the recipe's default changes the runs whenever the default does."""
    spec = load_config(path)
    missing = [k for k in PINNED if k not in spec.train]
    assert not missing, f"{path.name} leaves {', '.join(missing)} to the defaults"


@pytest.fixture(scope="module")
def study() -> tuple[list, dict, object]:
    """The budget study planned today (fitting only: no data read) and the recorded plan."""
    spec = load_config(ROOT / "configs" / "cifar10-budget-cpu.toml")
    grid = plan_grid(spec, classes_of=known_classes)
    recorded = json.loads((STUDY / "planned_runs.json").read_text())
    return grid.budget_points, recorded, spec


def test_the_budget_study_plans_exactly_its_recorded_runs(study):
    points, recorded, spec = study
    runs = recorded["runs"]
    assert len(points) == len(runs) == 20
    for p, run in zip(points, runs):
        assert p.config is not None and run["config"] is not None
        planned = p.config.to_dict()
        assert experiment(planned) == experiment(run["config"]), p.label()
        assert point_key(planned)[0] == run["key"], p.label()  # the results store's key: same run
        for k in EXECUTION_KEYS:  # what the config pins about how to run (precision, data)
            if k in spec.train:
                assert planned[k] == run["config"][k], (p.label(), k)
        assert p.fit == run["fit"], p.label()


def test_the_recorded_runs_are_the_measured_table(study):
    """The recorded configurations are the models the report measured (fits CSV) and carry the
    accuracies of its table; the settings are the ones the README says the table was measured with."""
    _, recorded, _ = study
    with open(STUDY / "fits_by_budget_cifar10.csv", newline="") as f:
        fits = {(r["family"], float(r["budget_value"]), r["template"]): r for r in csv.DictReader(f)}
    with open(STUDY / "accuracy_by_budget_cifar10.csv", newline="") as f:
        table = {(r["family"], float(r["budget_value"])): r for r in csv.DictReader(f)}
    seen = set()
    for run in recorded["runs"]:
        cfg, arch = run["config"], run["config"]["arch"]
        value = float(run["budget"].split("=")[1])
        row = fits[(arch["family"], value, arch["template"])]
        assert float(row["width"]) == arch["width"]
        assert (int(row["params"]), int(row["flops"]), int(row["train_memory_bytes"])) == (
            run["fit"]["params"],
            run["fit"]["flops"],
            run["fit"]["train_memory_bytes"],
        )
        assert run["table_final_acc_percent"] == float(table[(arch["family"], value)][arch["template"]])
        assert {
            k: cfg[k]
            for k in (
                "recipe",
                "epochs",
                "lr",
                "weight_decay",
                "label_smoothing",
                "crop_pad",
                "tta",
                "tta_shift",
                "whiten_init",
                "identity_init",
                "precision",
            )
        } == {
            "recipe": "fast",
            "epochs": 2,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "label_smoothing": 0.1,
            "crop_pad": 4,
            "tta": True,
            "tta_shift": 0,
            "whiten_init": False,
            "identity_init": False,
            "precision": "fp32",
        }
        seen.add((arch["family"], value, arch["template"]))
    assert seen == set(fits)
