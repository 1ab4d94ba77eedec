"""One home per concept, seen from outside: run-folder names that every file system accepts, and
the test views and memory unit that ``reduce`` and the report print for the same runs."""

from __future__ import annotations

import re

import pytest

from filter_templates.core.rundir import run_name
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import mib
from filter_templates.report.settings import setting, views_of
from filter_templates.report.tables import fmt_bytes
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import train

PORTABLE = re.compile(r"[A-Za-z0-9._-]+")


def test_a_user_networks_run_folder_is_portable_and_its_config_keeps_the_path():
    config = {
        "arch": {
            "family": "pkg.sub.mod:make_net",
            "template": "mypkg.templates:wedge",
            "width": 0.5,
            "as_published": False,
        },
        "dataset": "digits",
        "seed": 3,
    }
    for key in (None, "0123456789abcdef"):
        name = run_name(config, key)
        assert PORTABLE.fullmatch(name), name
        assert ":" not in name and name.startswith("digits-pkg.sub.mod_make_net-mypkg.templates_wedge-w0.5-s3")
    assert config["arch"]["family"] == "pkg.sub.mod:make_net"  # the full path stays in the record


@pytest.mark.parametrize("dataset, views", [("digits", 1), ("cifar10", 4)])
def test_test_views_follow_what_the_dataset_allows(dataset, views):
    arch = make_arch("vgg19", "uniform", 0.05, 10)
    assert views_of(setting(TrainConfig(arch=arch, dataset=dataset).to_dict())) == views


def test_the_report_counts_the_test_views_a_run_recorded(tmp_path):
    config = TrainConfig(
        arch=make_arch("vgg19", "uniform", 0.05, 10),
        epochs=1,
        dataset="digits",
        limit_train=64,
        limit_test=32,
        batch_size=32,
    )
    summary = train(config, tmp_path / "run")
    assert summary["metrics"][-1]["test_views"] == views_of(setting(summary["config"])) == 1


def test_memory_is_printed_in_mib_everywhere():
    assert mib(3 * 2**20) == 3.0 and fmt_bytes(3 * 2**20) == "3.0"
