"""Progress bars (tqdm) go to stderr, and only when it is a terminal."""

from __future__ import annotations

from filter_templates.core.progress import Progress


def test_off_when_stderr_is_not_a_terminal(capsys):
    assert list(Progress(range(3), desc="quiet")) == [0, 1, 2]
    bar = Progress(total=2, desc="quiet")
    bar.set(loss=0.5)
    bar.update(2)
    bar.close()
    assert not bar.enabled and capsys.readouterr() == ("", "")


def test_on_demand_it_draws_on_stderr_only(capsys):
    bar = Progress(total=2, desc="sweep", enabled=True)
    bar.set(run="vgg19-base")
    bar.update(2)
    bar.close()
    out, err = capsys.readouterr()
    assert out == "" and "sweep" in err and "2/2" in err and "run=vgg19-base" in err
