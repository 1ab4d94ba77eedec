"""Reports: tables (Markdown/CSV/LaTeX) and figures (PNG/SVG) from whatever a results store holds."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.report import make_report, tables
from filter_templates.sweep.store import Store
from filter_templates.training.config import TrainConfig

TEMPLATES = ["base", "reverse", "uniform", "quadratic", "negative-quadratic"]


def config(family: str, template: str, width: float, dataset: str = "cifar10", seed: int = 0, **settings) -> dict:
    classes = 100 if dataset == "cifar100" else 10
    return TrainConfig(
        arch=make_arch(family, template, width, classes), dataset=dataset, **{"epochs": 3, "seed": seed, **settings}
    ).to_dict()


def summary(acc: float, params: int, width: float, status: str = "done", reason: str | None = None) -> dict:
    """What train + the sweep record for a run (numbers shaped like real ones)."""
    return {
        "status": status,
        "reason": reason,
        "final_acc": acc if status == "done" else None,
        "best_acc": acc + 0.01 if status == "done" else None,
        "best_epoch": 3,
        "wall_s": 12.5,
        "device": "cpu",
        "resources": {
            "params": params,
            "flops": int(params * 40 * width),
            "train_memory_bytes": int(4e6 + params * 16),
            "batch_size": 64,
            "latency_s": {"batch64": 0.002 + params * 1e-9, "batch1": 0.0005},
            "device": "cpu",
            "threads": 2,
        },
    }


def fill(db: Path, points: list[tuple[dict, dict]]) -> None:
    with Store(db) as s:
        s.add_points((c, f"/runs/{i}") for i, (c, _) in enumerate(points))
        for c, summ in points:
            from filter_templates.sweep.store import point_key

            claim = s.claim([point_key(c)[0]])
            epochs = [{"epoch": e, "test_acc": (summ["final_acc"] or 0) * e / 3} for e in (1, 2, 3)]
            s.finish(claim["key"], claim["claim_token"], summ, epochs=epochs)


@pytest.fixture(scope="module")
def partial_store(tmp_path_factory) -> Path:
    """vgg19: all templates at widths 1 and 0.5, one failed run; mobilenet: three templates at 0.5 only
    (no width 1: its resources must be computed); one pending point; one cifar100 point."""
    tmp_path = tmp_path_factory.mktemp("store")
    points = []
    accs = {"base": 0.90, "reverse": 0.88, "uniform": 0.92, "quadratic": 0.91, "negative-quadratic": 0.89}
    for t in TEMPLATES:
        for w in (1.0, 0.5):
            arch = make_arch("vgg19", t, w, 10)
            if (t, w) == ("quadratic", 0.5):
                points.append((config("vgg19", t, w), summary(0, 0, w, "failed", "loss became nan in epoch 2")))
            else:
                points.append((config("vgg19", t, w), summary(accs[t] - (1 - w) * 0.05, _params(arch), w)))
    for t in ("base", "uniform", "quadratic"):
        arch = make_arch("mobilenet", t, 0.5, 10)
        points.append((config("mobilenet", t, 0.5), summary(0.85 + 0.01 * len(t) % 0.05, _params(arch), 0.5)))
    points.append((config("vgg19", "base", 1.0, "cifar100"), summary(0.65, 20_086_692, 1.0)))
    db = tmp_path / "r.sqlite"
    fill(db, points)
    with Store(db) as s:
        s.add_points([(config("mobilenet", "reverse", 0.5), "/runs/pending")])
    return db


@pytest.fixture(scope="module")
def report(partial_store, tmp_path_factory) -> tuple[Path, dict]:
    """One report of the partial store, shared by the tests that read it (rendering takes seconds)."""
    out = tmp_path_factory.mktemp("report") / "rep"
    return out, make_report(partial_store, out)


def _params(arch) -> int:
    from filter_templates.method.measure import count_params

    return count_params(arch.build())


def md_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith("| ")]


def test_tables_show_partial_grids_and_mark_the_best(report):
    out, written = report
    acc = (out / "tables" / "accuracy_cifar10.md").read_text()
    rows = md_rows(acc)
    header = rows[0]
    assert header == ["family", "width", *TEMPLATES, "best"]
    vgg1 = next(r for r in rows if r[:2] == ["vgg19", "1"])
    assert vgg1[header.index("uniform")] == "**92.00**" and vgg1[-1] == "uniform"
    assert sum(c.startswith("**") for c in vgg1) == 1  # one best per row
    vgg05 = next(r for r in rows if r[:2] == ["vgg19", "0.5"])
    assert vgg05[header.index("quadratic")] == "failed"
    mob = next(r for r in rows if r[0] == "mobilenet")
    assert mob[header.index("reverse")] == "—" and mob[header.index("negative-quadratic")] == "—"
    assert not any(r[0] == "mobilenet" and r[1] == "1" for r in rows)  # no empty rows invented
    # CSV: raw numbers, best template named
    with open(out / "tables" / "accuracy_cifar10.csv") as f:
        table = list(csv.DictReader(f))
    first = next(r for r in table if r["family"] == "vgg19" and r["width"] == "1.0")
    assert float(first["uniform"]) == pytest.approx(92.0) and first["best"] == "uniform"
    # LaTeX: the same emphasis, escaped names
    tex = (out / "tables" / "accuracy_cifar10.tex").read_text()
    assert r"\textbf{92.00}" in tex and r"\begin{tabular}" in tex and "negative-quadratic" in tex
    assert (out / "tables" / "accuracy_cifar100.md").exists()
    assert written["counts"] == {"pending": 1, "running": 0, "done": 13, "failed": 1}


def test_resource_table_lists_the_trained_models_in_human_units(report):
    out, _ = report
    with open(out / "tables" / "resources_cifar10.csv") as f:
        rows = {(r["family"], r["template"], r["width"]): r for r in csv.DictReader(f)}
    assert int(rows[("vgg19", "base", "1.0")]["params"]) == 20_040_522
    assert float(rows[("vgg19", "base", "0.5")]["latency_batch_s"]) > 0
    assert ("mobilenet", "base", "0.5") in rows
    assert not any(k[0] == "mobilenet" and k[2] == "1.0" for k in rows)  # width 1 never trained: not listed
    assert ("mobilenet", "reverse", "0.5") not in rows  # only pending
    assert ("vgg19", "quadratic", "0.5") not in rows  # failed
    md = md_rows((out / "tables" / "resources_cifar10.md").read_text())
    header, body = md[0], md[1:]
    assert header[:3] == ["family", "template", "width"] and "params" in header
    assert "latency batch 64 (ms)" in header and "latency batch 1 (ms)" in header  # both measured: both shown
    for r in body:  # every latency cell filled, in human units
        assert r[header.index("latency batch 64 (ms)")] != "—" and r[header.index("latency batch 1 (ms)")] != "—"
    base = next(r for r in body if r[:3] == ["vgg19", "base", "1"])
    assert base[header.index("params")] == "20M"
    assert "cpu, 2 threads, load not recorded" in base[-1]


def test_a_column_nothing_measured_is_left_out():
    from filter_templates.report.tables import ResourceRow, resource_table

    rows = [ResourceRow("vgg19", "base", 0.5, 10, params=52_300, flops=3_790_000, train_memory_bytes=2**24)]
    t = resource_table(rows, "digits")
    assert t.header == ["family", "template", "width", "params", "MFLOPs / image", "train memory (MiB, batch 64)"]
    assert t.rows[0][3:] == ["52.3K", "3.79", "16.0"]


def test_figures_are_written_as_png_and_svg_and_index_links_everything(report):
    out, written = report
    names = {Path(p).name for p in written["figures"]}
    for stem in (
        "accuracy_vs_params_cifar10",
        "accuracy_vs_memory_cifar10",
        "accuracy_vs_latency_cifar10",
        "filters_vgg19",
        "filters_mobilenet",
    ):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        img = mpimg.imread(out / "figures" / f"{stem}.png")
        assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05  # a real picture
        svg = (out / "figures" / f"{stem}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    svg = (out / "figures" / "accuracy_vs_params_cifar10.svg").read_text()
    assert "parameters (millions" not in svg and "base, widest trained: vgg19 1, mobilenet 0.5" in svg
    assert "one curve per template across widths 0.5, 1" in svg  # several widths: curves
    index = (out / "index.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", index)
    assert len(links) >= 20
    for link in links:
        assert (out / link).exists(), link
    for p in written["tables"] + written["figures"]:
        assert Path(p).relative_to(out).as_posix() in links
    assert "Failed runs" in index and "loss became nan in epoch 2" in index
    assert "1 pending" in index


def test_seeds_are_averaged(tmp_path):
    arch = make_arch("vgg19", "base", 0.5, 10)
    db = tmp_path / "r.sqlite"
    fill(db, [(config("vgg19", "base", 0.5, seed=s), summary(acc, 1000, 0.5)) for s, acc in ((0, 0.80), (1, 0.90))])
    make_report(db, tmp_path / "rep")
    rows = md_rows((tmp_path / "rep" / "tables" / "accuracy_cifar10.md").read_text())
    assert rows[1][2] == "85.00 ± 63.53"  # t(0.975, 1) x 7.07 / sqrt(2): two seeds say little
    del arch


def test_report_cli(partial_store, tmp_path, capsys):
    assert (
        main(
            [
                "report",
                "--db",
                str(partial_store),
                "--out",
                str(tmp_path / "r"),
                "--metric",
                "best",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert Path(out["index"]).exists() and len(out["figures"]) == 2 * 5 + 2 * 3  # cifar100: 3 figures
    md = (tmp_path / "r" / "tables" / "accuracy_cifar10.md").read_text()
    assert "Best top-1 test accuracy over the epochs (%; optimistic" in md  # never passed off as a result


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not sqlite" * 50), "not a usable results store"),
        (lambda p: Store(p).close(), "holds no runs yet"),
    ],
)
def test_report_errors_are_one_line(tmp_path, capsys, make, match):
    db = tmp_path / "x.sqlite"
    make(db)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_report_of_a_real_sweep(tmp_path, capsys):
    """End to end: a tiny sweep, then its report (the README's first command, in miniature)."""
    db, runs, out = tmp_path / "r.sqlite", tmp_path / "runs", tmp_path / "rep"
    assert (
        main(
            [
                "sweep",
                "--models",
                "mobilenet",
                "--templates",
                "base",
                "uniform",
                "--widths",
                "0.05",
                "0.1",
                "--datasets",
                "synthetic",
                "--epochs",
                "1",
                "--limit-train",
                "64",
                "--limit-test",
                "32",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--db",
                str(db),
                "--runs-dir",
                str(runs),
            ]
        )
        == 0
    )
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    rows = md_rows((out / "tables" / "accuracy_synthetic.md").read_text())
    assert [r[:2] for r in rows[1:]] == [["mobilenet", "0.1"], ["mobilenet", "0.05"]]
    # one seed on 32 test images: the accuracy with its Wilson interval
    assert all(re.fullmatch(r"\*{0,2}\d+\.\d\d ± \d+\.\d\d\*{0,2}", c) for r in rows[1:] for c in r[2:4])
    assert (out / "index.html").is_file()
    for axis in ("params", "memory", "latency"):
        assert (out / "figures" / f"accuracy_vs_{axis}_synthetic.png").exists()


def test_bad_options():
    with pytest.raises(UsageError, match="metric"):
        make_report("x", "y", metric="median")


def test_budget_report_puts_budgets_in_rows_and_templates_in_columns(tmp_path):
    """Two seeds per point (mean ± the 95% interval over them), two budgets, an unreachable one and a pending run."""
    from filter_templates.sweep.grid import SweepSpec, plan_grid

    spec = SweepSpec(
        models=["mobilenet"],
        templates=["base", "uniform", "quadratic"],
        widths=[],
        datasets=["cifar10"],
        budgets=["params=50K", "params=200K", "params=100"],
        seeds=[0, 1],
        train={"epochs": 3},
    )
    grid = plan_grid(spec, classes_of=lambda ds: 10)
    accs = {"base": 0.60, "uniform": 0.70, "quadratic": 0.65}
    db = tmp_path / "r.sqlite"
    with Store(db) as s:
        s.add_points((c.to_dict(), f"/runs/{i}") for i, c in enumerate(grid.configs))
        s.add_budget_points(p.record() for p in grid.budget_points)
        for p in grid.budget_points:
            if p.config is None or (p.method, p.budget.value, p.seed) == ("quadratic", 200_000, 1):
                continue  # unreachable, and one run still pending
            from filter_templates.sweep.store import point_key

            c = s.claim([point_key(p.config.to_dict())[0]])
            acc = accs[p.method] + (0.02 if p.seed else 0.0) + (0.1 if p.budget.value == 200_000 else 0.0)
            s.finish(c["key"], c["claim_token"], summary(acc, p.fit["params"], p.config.arch.width))
    out = tmp_path / "rep"
    written = make_report(db, out)
    rows = md_rows((out / "tables" / "accuracy_by_budget_cifar10.md").read_text())
    assert rows[0] == ["family", "budget", "base", "uniform", "quadratic", "best"]
    assert [r[1] for r in rows[1:]] == ["params ≤ 200K", "params ≤ 50K", "params ≤ 100"]  # largest first
    # std 1.41 over two seeds: t(0.975, 1) = 12.706 times 1.41 / sqrt(2)
    assert rows[1][2:] == ["71.00 ± 12.71", "**81.00 ± 12.71**", "75.00", "uniform"]  # one quadratic seed pending
    assert rows[2][2:] == ["61.00 ± 12.71", "**71.00 ± 12.71**", "66.00 ± 12.71", "uniform"]
    assert rows[3][2:] == ["unreachable"] * 3 + ["—"]
    fits = (out / "tables" / "fits_by_budget_cifar10.md").read_text()
    assert "below the smallest reachable mobilenet model" in fits
    assert not (out / "tables" / "accuracy_cifar10.md").exists()  # no width runs: no width table
    names = {Path(p).name for p in written["figures"]}
    assert {"accuracy_vs_params_budget_cifar10.png", "accuracy_vs_params_budget_cifar10.svg"} <= names
    svg = (out / "figures" / "accuracy_vs_params_budget_cifar10.svg").read_text()
    assert "one line per template" in svg and "budget" in svg
    assert "6 budget points unreachable" in (out / "index.md").read_text()


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_runs_that_differ_in_a_result_field_are_never_pooled(tmp_path):
    """Seeds pool; another recipe, learning rate, epochs or validation split is another row, labelled
    by exactly the fields that differ (the recipe standing for its own values in the Markdown)."""
    db = tmp_path / "r.sqlite"
    arch = make_arch("vgg19", "base", 0.5, 10)
    params = _params(arch)
    points = [
        (config("vgg19", t, 0.5, seed=s), summary(acc + s / 100, params, 0.5))
        for t, acc in (("base", 0.80), ("uniform", 0.82))
        for s in (0, 1)
    ]  # fast, 2 seeds: pooled
    points += [
        (config("vgg19", t, 0.5, recipe="paper"), summary(acc, params, 0.5))
        for t, acc in (("base", 0.40), ("uniform", 0.45))
    ]
    points += [
        (config("vgg19", "base", 0.5, lr=0.2), summary(0.60, params, 0.5)),
        (config("vgg19", "base", 0.5, epochs=5), summary(0.90, params, 0.5)),
        (config("vgg19", "base", 0.5, val_split=0.1), summary(0.70, params, 0.5)),
    ]
    fill(db, points)
    with Store(db) as s:
        files = tables.render(tables.accuracy_table(tables.collect(s.rows()), "cifar10"))
    (tmp_path / "t.csv").write_text(files["csv"])
    table = csv_rows(tmp_path / "t.csv")
    assert len(table) == 5  # fast; fast lr 0.2; fast 5 epochs; fast val_split 0.1; paper
    assert {"recipe", "lr", "epochs", "val_split", "test_views"} <= set(table[0])
    assert "seed" not in table[0]
    by = {(r["recipe"], r["lr"], r["epochs"], r["val_split"]): r for r in table}
    assert float(by[("fast", "0.05", "3", "0")]["base"]) == pytest.approx(80.5)  # two seeds' mean
    assert float(by[("paper", "0.1", "3", "0")]["base"]) == pytest.approx(40.0)  # not averaged with fast
    assert by[("paper", "0.1", "3", "0")]["test_views"] == "1" and by[("fast", "0.05", "3", "0")]["test_views"] == "4"
    assert float(by[("fast", "0.2", "3", "0")]["base"]) == pytest.approx(60.0)
    assert float(by[("fast", "0.05", "5", "0")]["base"]) == pytest.approx(90.0)
    assert float(by[("fast", "0.05", "3", "0.1")]["base"]) == pytest.approx(70.0)
    assert by[("fast", "0.05", "3", "0")]["weight_decay"] != by[("paper", "0.1", "3", "0")]["weight_decay"]
    md = files["md"]
    rows = md_rows(md)
    assert rows[0][:7] == ["family", "width", "val_split", "recipe", "epochs", "lr", "test views"]  # data, then recipe
    assert len({tuple(r[2:7]) for r in rows[1:]}) == 5  # every row says what sets it apart
    assert "weight_decay" not in rows[0]  # paper's own value: the recipe column says it
    assert "Runs: recipes paper, fast (per row); 3/5 epochs (per row); 1/4 test views" in md


def test_every_table_says_its_recipe_epochs_and_views(report):
    out, _ = report
    for name in ("accuracy_cifar10", "resources_cifar10", "accuracy_cifar100"):
        md = (out / "tables" / f"{name}.md").read_text()
        assert "Runs: recipe fast; 3 epochs; 4 test views per image in the final accuracy." in md, name
    rows = md_rows((out / "tables" / "accuracy_cifar10.md").read_text())
    assert rows[0] == ["family", "width", *TEMPLATES, "best"]  # alike runs: no label columns


def test_budget_tables_and_figures_split_settings(tmp_path):
    """One budget trained with two recipes: two rows, and one figure panel per recipe."""
    from filter_templates.report import budgets as B
    from filter_templates.report import figures
    from filter_templates.sweep.grid import SweepSpec, plan_grid
    from filter_templates.sweep.store import point_key

    db = tmp_path / "r.sqlite"
    for recipe, acc in (("fast", 0.70), ("paper", 0.50)):
        spec = SweepSpec(
            models=["mobilenet"],
            templates=["base", "uniform"],
            widths=[],
            datasets=["cifar10"],
            budgets=["params=50K"],
            train={"epochs": 3, "recipe": recipe},
        )
        grid = plan_grid(spec, classes_of=lambda ds: 10)
        with Store(db) as s:
            s.add_points((c.to_dict(), f"/runs/{recipe}{i}") for i, c in enumerate(grid.configs))
            s.add_budget_points(p.record() for p in grid.budget_points)
            for p in grid.budget_points:
                c = s.claim([point_key(p.config.to_dict())[0]])
                s.finish(
                    c["key"],
                    c["claim_token"],
                    summary(acc + (p.method == "uniform") / 10, p.fit["params"], p.config.arch.width),
                )
    with Store(db) as s:
        cells = B.collect_budgets(s.budget_rows())
    table = B.budget_accuracy_table(cells, "cifar10")
    assert table.header == ["family", "budget", "recipe", "test views", "base", "uniform", "best"]
    assert [r[2:] for r in table.rows] == [
        ["paper", "1", "50.00", "60.00", "uniform"],
        ["fast", "4", "70.00", "80.00", "uniform"],
    ]
    assert table.bold == {(0, 5), (1, 5)}  # each row's best: uniform
    assert table.notes[0].startswith("Runs: recipes paper, fast (per row); 3 epochs; 1/4 test views")
    fits = B.budget_resource_table(cells, "cifar10")
    assert [r[2] for r in fits.rows] == ["paper", "paper", "fast", "fast"]
    titles = [t for _, _, t in figures.panels([c for c in cells.values()])]
    assert titles == ["mobilenet\nrecipe=paper", "mobilenet\nrecipe=fast"]


def test_one_grid_point_swept_with_two_recipes_is_two_rows(tmp_path):
    """The same grid point swept with --recipe fast and with --recipe paper into one store: the
    report keeps them apart, with a recipe column in the CSV."""
    db, runs, out = str(tmp_path / "r.sqlite"), str(tmp_path / "runs"), tmp_path / "rep"
    point = [
        "sweep",
        "--models",
        "mobilenet",
        "--templates",
        "base",
        "--widths",
        "0.05",
        "--datasets",
        "digits",
        "--epochs",
        "1",
        "--limit-train",
        "128",
        "--limit-test",
        "64",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--db",
        db,
        "--runs-dir",
        runs,
    ]
    assert main([*point, "--recipe", "fast"]) == 0
    assert main([*point, "--recipe", "paper"]) == 0
    assert main(["report", "--db", db, "--out", str(out)]) == 0
    table = csv_rows(out / "tables" / "accuracy_digits.csv")
    assert [(r["family"], r["recipe"]) for r in table] == [("mobilenet", "paper"), ("mobilenet", "fast")]
    assert all(r["base"] for r in table)


def test_latency_is_labelled_with_the_load_it_was_measured_under():
    from filter_templates.report.tables import measured_on

    def run(load):
        return {"resources": {"device": "cpu", "device_name": "AMD EPYC", "threads": 1, "load": load}}

    idle = {"load_before": 0.1, "others_during": 0.0, "cores": 2, "busy": False}
    busy = {"load_before": 1.9, "others_during": 1.2, "cores": 2, "busy": True}
    assert measured_on([run(idle)]) == "AMD EPYC, 1 thread, idle"
    assert measured_on([run(idle), run(busy)]).startswith("AMD EPYC, 1 thread, busy (load average 1.9 before")
    assert measured_on([run(None)]) == "AMD EPYC, 1 thread, load not recorded"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_index_html_is_the_same_page_as_index_md(report):
    out, written = report
    md, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    assert written["html"] == str(out / "index.html") and page.startswith("<!DOCTYPE html>")
    for title in re.findall(r"^### (.+)$", md, flags=re.M):  # every table, by its title
        assert f"<h3>{html.escape(title)}</h3>" in page
    assert re.findall(r"\(figures/([^)]+\.png)\)", md) == re.findall(r'src="figures/([^"]+\.png)"', page)
    for row in md_rows((out / "tables" / "resources_cifar10.md").read_text())[1:]:  # and every number
        assert all(f">{html.escape(cell)}<" in page for cell in row)
    assert "Models: 32 x 32 px input images; every layer has at least 1 filter (the floor)" in page


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_index_html_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    shot = tmp_path / "index.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            (out / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = mpimg.imread(shot)
    assert img.shape[:2] == (1600, 1280) and img[..., :3].std() > 0.1  # a page with tables and figures, not blank
