"""The lines a user reads when something deserves a word: a width that leaves the template no say,
and a Ctrl-C that says how to continue."""

from __future__ import annotations

import pytest

from filter_templates.cli import interrupted_line, main, train_cmd
from filter_templates.method.arch import floor_warning, floored_layers, make_arch


def test_a_width_that_leaves_most_layers_at_the_floor_is_named():
    tiny = make_arch("vgg19", "uniform", 0.0001)
    assert floored_layers(tiny) == 16 and tiny.filters == (1,) * 16
    line = floor_warning(tiny)
    assert line is not None and "16 of 16 template layers" in line and "floor of 1 filter " in line
    # the quick preset's models: a floor of 8 under a few layers of width 0.05 is a choice, not a warning
    assert floored_layers(make_arch("vgg19", "base", 0.05, floor=8)) == 4
    assert floor_warning(make_arch("vgg19", "base", 0.05, floor=8)) is None
    assert floor_warning(make_arch("mobilenet", "base", 1.0)) is None
    # a divisor lifts the floor to its multiple
    assert floored_layers(make_arch("vgg19", "base", 0.01, divisor=8)) == 16


def test_sweep_warns_once_per_model_before_running(capsys):
    argv = ["sweep", "--models", "vgg19", "--templates", "uniform", "--widths", "0.0001", "--seeds", "0", "1"]
    assert main([*argv, "--datasets", "digits", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("template layers are held at the floor") == 1 and "warning" in err.lower()


@pytest.mark.parametrize(
    "command, words",
    [
        ("train", "--resume continues it, to bit-identical weights on a CPU"),
        ("sweep", "the same command again continues"),
        ("reduce", "the same command again continues"),
    ],
)
def test_ctrl_c_says_how_to_continue(command, words):
    assert words in interrupted_line(command) and interrupted_line(command).startswith("interrupted; ")
    assert interrupted_line("fit") == "interrupted" and interrupted_line(None) == "interrupted"


def test_ctrl_c_during_train_prints_the_resume_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd, "run", interrupted)
    assert main(["train", "--model", "vgg19", "--dataset", "digits"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "bit-identical" in err
