"""Selection: the paired separation test, ties to the cheapest, and seeds until separable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from test_reduce import TINY

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.method.fit import parse_budget
from filter_templates.pruning import adapter as prune
from filter_templates.reduction import ReduceRequest, _seeds_until_separable, _sweep_spec
from filter_templates.sweep import selection
from filter_templates.sweep.grid import plan_grid
from filter_templates.sweep.halving import Driver
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.separation import separate

N = 1000


def _hits(accuracy: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(N) < int(accuracy * N)


def _twenty_points_more(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[np.flatnonzero(~b)[:200]] = True  # 200 of the 1,000 images wrong in a are right in b
    return b


def test_identical_predictions_are_tied_and_twenty_points_more_on_1000_images_are_separable():
    a = _hits(0.6)
    same = separate([a], [a.copy()])
    assert same.tied and same.difference == 0 and (same.low, same.high, same.p) == (0, 0, 1)
    better = separate([_twenty_points_more(a)], [a])
    assert not better.tied and better.difference == pytest.approx(0.2)
    assert 0.15 < better.low < 0.2 < better.high < 0.25 and better.p < 0.01
    # the other way round: the same interval mirrored, still separable
    worse = separate([a], [_twenty_points_more(a)])
    assert worse.high < 0 and not worse.tied
    # a fixed generator: the same inputs give the same interval
    assert separate([_twenty_points_more(a)], [a]) == better
    with pytest.raises(ValueError, match="not the same images"):
        separate([a], [a[:-1]])


def test_seeds_pool_and_their_spread_widens_the_interval():
    a = _hits(0.6)
    one = separate([_twenty_points_more(a)], [a])
    # three seeds of each, the better one's seeds far apart: a wider interval than one seed's
    spread = [_hits(0.9, 1), _twenty_points_more(a), _hits(0.6, 2)]
    pooled = separate(spread, [a, _hits(0.6, 3), _hits(0.6, 4)])
    assert pooled.seeds == (3, 3) and pooled.high - pooled.low > one.high - one.low


def _cell(tmp_path: Path, method: str, params: int, hits: list[np.ndarray]) -> selection.BudgetCell:
    """A candidate of ``params`` parameters whose seeds got ``hits`` right on the validation split."""
    points = []
    for seed, h in enumerate(hits):
        run_dir = tmp_path / f"{method}-s{seed}"
        run_dir.mkdir()
        rundir.write_outcomes(run_dir, rundir.Outcomes({"val": h[None], "test": h[None]}))
        run = {"status": "done", "seed": seed, "val_acc": float(h.mean()), "final_acc": float(h.mean())}
        run.update(run_dir=str(run_dir), params=params, best_acc=None)
        points.append({"run": run, "status": "fitted", "width": 0.1, "filters": [1], "fit": None})
    return selection.BudgetCell("digits", "vgg19", "params", 1000.0, method, points=points)


def test_ties_go_to_the_cheapest_and_every_candidate_is_compared_with_the_winner(tmp_path):
    a = _hits(0.6)
    cells = [
        _cell(tmp_path, "uniform", 990, [_twenty_points_more(a)]),  # the most accurate, the largest
        _cell(tmp_path, "reverse", 700, [_twenty_points_more(a)]),  # the same predictions, cheaper
        _cell(tmp_path, "base", 500, [a]),  # 20 points less: separable, though the cheapest
    ]
    ch = selection.choose(cells, "val_acc", ["base", "reverse", "uniform"])
    assert ch.top == "reverse"  # equal accuracy: the ranking key puts the cheaper first
    assert ch.tied == ["reverse", "uniform"] and ch.winner == "reverse" and ch.resource == "params"
    assert ch.separations["reverse"] is None
    assert ch.separations["uniform"].tied and ch.separations["uniform"].difference == 0
    assert not ch.separations["base"].tied and ch.separations["base"].difference == pytest.approx(-0.2)
    # a larger most accurate one, a cheaper one tied with it: the cheaper one wins, and says why
    nearly = _twenty_points_more(a)
    nearly[np.flatnonzero(nearly)[:3]] = False  # 3 images fewer: not separable
    (tmp_path / "x").mkdir()
    cells[1] = _cell(tmp_path / "x", "reverse", 700, [nearly])
    ch = selection.choose(cells, "val_acc", ["base", "reverse", "uniform"])
    assert (ch.top, ch.winner, ch.by_cost) == ("uniform", "reverse", True)
    assert ch.separations["uniform"].difference == pytest.approx(0.003)
    # without per-image outcomes (runs of an older version) the top is compared with nothing
    for c in cells:
        for p in c.points:
            (Path(p["run"]["run_dir"]) / rundir.OUTCOMES).unlink()
    ch = selection.choose(cells, "val_acc")
    assert (ch.tied, ch.winner) == (["uniform"], "uniform") and set(ch.separations.values()) == {None}


def test_outcomes_file_round_trips_and_refuses_pickles(tmp_path):
    hits = np.stack([_hits(0.5, 7), _hits(0.7, 8)])
    rundir.write_outcomes(tmp_path, rundir.Outcomes({"val": hits}))
    back = rundir.read_outcomes(tmp_path)
    assert back is not None and np.array_equal(back.splits["val"], hits) and back.at("val", 2) is not None
    assert (tmp_path / rundir.OUTCOMES).stat().st_size < hits.size  # packed: a bit per image (a byte: more)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npy").replace(tmp_path / rundir.OUTCOMES)
    assert rundir.read_outcomes(tmp_path) is None  # an object array is never unpickled


@dataclasses.dataclass
class _Driver(Driver):
    """Trains nothing: a run is done the moment it is asked for; per-image outcomes as ``hits`` says."""

    hits: Callable[[str, int], np.ndarray] | None = None
    tmp: Path = Path()
    asked: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def run(self, grid):
        self.asked += [(c.arch.template, c.seed) for c in grid.configs]

    def read(self):
        rows = []
        for p in self.grid.budget_points:
            if (p.method, p.seed) not in self.asked:
                continue
            run_dir = self.tmp / f"{p.method}-s{p.seed}"
            run_dir.mkdir(exist_ok=True)
            assert self.hits is not None
            h = self.hits(p.method, p.seed)
            rundir.write_outcomes(run_dir, rundir.Outcomes({"val": h[None]}))
            run = {"status": "done", "seed": p.seed, "val_acc": float(h.mean()), "final_acc": 0.5, "best_acc": 0.5}
            run.update(run_dir=str(run_dir), params=len(p.method))  # the shorter name is the cheaper
            rows.append({**p.record(), "fit": None, "run": run})
        return rows


def test_seeds_until_separable_trains_only_the_tied_top_candidates(tmp_path):
    r = ReduceRequest("vgg19", "params=100K", "digits", templates=["uniform", "reverse"], seeds=[0])
    r.train, r.seeds_until_separable = {"epochs": 1, "limit_train": 128, "limit_test": 64, "val_split": 64}, 3
    spec = _sweep_spec(r, parse_budget(r.budget), ["base", "uniform", "reverse"], prune.Baselines())
    grid = plan_grid(spec)
    a = _hits(0.6)

    def hits(method, seed):  # base and uniform the same, whatever the seed; reverse 20 points less
        return _twenty_points_more(a) if method != "reverse" else a

    asked = [(c.arch.template, c.seed) for c in grid.configs]
    order = ["base", "uniform", "reverse"]
    d = _Driver(
        grid, tmp_path / "db", tmp_path, EngineOptions(), "val_acc", order, hits=hits, tmp=tmp_path, asked=asked
    )
    rows = d.read()
    choice = selection.choose(selection.pool(rows), "val_acc", d.order)
    assert choice.tied == ["base", "uniform"]
    rows, choice, more = _seeds_until_separable(r, spec, d, rows, choice)
    # seeds 1 and 2 of the two tied ones only, then the limit of 3: still tied, and it says so
    assert sorted(asked[3:]) == [("base", 1), ("base", 2), ("uniform", 1), ("uniform", 2)]
    assert [x["seed"] for x in more["rounds"]] == [1, 2] and more["separable"] is False
    assert {(c.method, len(c.done)) for c in selection.pool(rows)} == {("base", 3), ("uniform", 3), ("reverse", 1)}
    # uniform's first seed was lucky, its later ones are 20 points less: rounds stop once the top separates
    # (seeds are resampled too, so a lucky seed among few keeps the interval wide for a round or two)
    asked[3:] = []

    def lucky(method, seed):
        return a if method == "reverse" or (method == "uniform" and seed > 0) else _twenty_points_more(a)

    d = dataclasses.replace(d, grid=grid)
    d.hits, d.tmp, d.asked = lucky, tmp_path / "lucky", asked
    d.tmp.mkdir()
    r.seeds_until_separable = 8
    rows, choice, more = _seeds_until_separable(r, spec, d, d.read(), choice)
    rounds = len(more["rounds"])
    assert more["separable"] is True and choice.tied == ["base"] and 1 <= rounds < 7
    assert sorted(asked[3:]) == sorted((t, s) for t in ("base", "uniform") for s in range(1, rounds + 1))


def test_reduce_json_gives_every_candidate_its_difference_interval_and_tie(tmp_path, capsys):
    out = tmp_path / "R"
    argv = ["reduce", "--model", "vgg19", "--budget", "params=100K", "--out", str(out), *TINY, "--epochs", "1"]
    assert main([*argv, "--json", "--no-export", "--seeds-until-separable", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    win = doc["winner"]["template"]
    for c in doc["candidates"]:
        assert isinstance(c["tied"], bool)
        if c["template"] != win:
            sep = c["separation"]
            assert set(sep) == {"difference", "interval", "p", "images", "seeds"} and sep["images"] == 13
            assert sep["interval"][0] <= sep["difference"] <= sep["interval"][1]
    # more seeds went to the candidates tied at the first round only; the result says if the top separated
    more = doc["seeds_until_separable"]
    assert more["limit"] == 2 and isinstance(doc["separable"], bool) and more["separable"] == doc["separable"]
    extra = set(more["rounds"][0]["candidates"]) if more["rounds"] else set()
    assert {c["template"] for c in doc["candidates"] if c["seeds_done"] == 2} == extra
    # the report too: every finished candidate against the winner, the winner emphasised
    report = (out / "report" / "tables" / "separation_by_budget_digits.md").read_text()
    assert f"**{win}**" in report or f"| {win} |" in report
    assert report.count("| vgg19 |") == len(doc["candidates"]) and "winner" in report and "tied" in report
    # the table says it too
    assert main([*argv, "--no-export", "--seeds-until-separable", "2"]) == 0
    text = capsys.readouterr().out
    assert "vs winner, points [95%]" in text and ("tied:" in text or "separable:" in text)
