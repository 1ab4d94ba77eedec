"""How long will a sweep config take here? Fit every point, time each fitted model, add it up.

Expands the config exactly as ``filter-templates sweep --config`` does (budget points are fitted,
unreachable ones dropped), then times a few real training steps (``train.sgd_step``, the
config's batch size, channels_last and precision settings) and a few test batches of every
distinct model at ``--threads`` threads, several rounds interleaved so that load from other
processes hits every model alike. Per run:

    run_s = epochs * (train_images / batch * step_s + test_images * eval_s_per_image) + overhead_s

and the runs are scheduled as the local engine does: ``--jobs`` workers, each taking the next
point in grid order. Step times are medians over the rounds; the spread (max/min - 1 over the
rounds) is printed as the noise. Data loading, checkpoints and the sweep's latency measurement
are in ``--overhead`` (not measured here).

On a machine shared with other work, wall-clock step times mostly measure the waiting: by
default (``--clock cpu``) the estimate uses the CPU time the process spent per step, which at one
thread is what the step takes when it has a core to itself (as each of ``--jobs`` runs has on a
machine with that many free cores); the wall-clock figure is printed beside it.

    python benchmarks/budget_study_plan.py configs/cifar10-budget-cpu.toml [--jobs 2] [--threads 1] [--json]

``--record FILE`` times nothing: it writes the configurations the config plans (each run's full
``config.json``, its store key, budget and fit), one run per line, so a study's table can be kept
beside exactly the runs it came from (``tests/test_configs.py`` checks the config still plans them):

    python benchmarks/budget_study_plan.py configs/cifar10-budget-cpu.toml \
        --record docs/cifar10-budget-cpu/planned_runs.json --accuracy docs/cifar10-budget-cpu/accuracy_by_budget_cifar10.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}  # train, test images
EVAL_BATCH = 256  # train.py evaluates at max(batch_size, 256)


def dataset_sizes(name: str, limit_train: int | None, limit_test: int | None) -> tuple[int, int]:
    if name in SIZES:
        n_train, n_test = SIZES[name]
    else:  # the embedded ones are small and load in a second
        from filter_templates.data import load_data

        ds = load_data(name)
        n_train, n_test = len(ds.train_y), len(ds.test_y)
    return min(n_train, limit_train or n_train), min(n_test, limit_test or n_test)


def _timer(config) -> tuple:
    """(train_step, eval_batch) closures for one config's model, on the CPU."""
    from filter_templates.training import autotune
    from filter_templates.training.loop import sgd_step

    # what a run of this config will train with: the same measured (and cached) choice train() makes
    choice = autotune.choose(
        config.arch,
        torch.device("cpu"),
        config.batch_size,
        precision=config.precision,
        memory_format=config.memory_format,
    )
    fmt = autotune.torch_memory_format(choice.memory_format)
    torch.manual_seed(0)
    model = config.arch.build().to(memory_format=fmt)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=0.01,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    amp = choice.precision == "bf16"
    x = torch.randn(config.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, config.arch.classes, (config.batch_size,))
    xe = torch.randn(EVAL_BATCH, 3, 32, 32).contiguous(memory_format=fmt)

    def step() -> None:
        model.train()
        sgd_step(model, opt, x, y, amp, config.label_smoothing)

    def evaluate() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(xe)

    return step, evaluate


def _time(fn, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a sweep TOML file")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the config's, else 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default: 1)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model and round (default: 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all models (default: 3)")
    p.add_argument(
        "--overhead",
        type=float,
        default=15.0,
        help="seconds per run outside the epochs: start, data, checkpoints, latency (default: 15)",
    )
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="estimate from the CPU time of each step (default; right on a busy machine) or its wall time",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--record", metavar="FILE", help="write the planned runs' configurations to FILE and time nothing")
    p.add_argument(
        "--accuracy",
        metavar="CSV",
        help="with --record: a report's accuracy_by_budget CSV whose final accuracies the record names",
    )
    args = p.parse_args(argv)

    from filter_templates.sweep.grid import known_classes, load_config, plan_grid
    from filter_templates.sweep.store import point_key

    torch.set_num_threads(args.threads)
    spec = load_config(args.config)
    grid = plan_grid(spec, classes_of=known_classes)
    if args.record:
        Path(args.record).write_text(record(args.config, grid, args.accuracy))
        print(f"{args.record}: {len(grid.configs)} planned runs of {args.config}")
        return 0
    jobs = args.jobs or spec.jobs or 1
    models = {}  # arch -> first config using it (seeds share one model)
    for c in grid.configs:
        models.setdefault(c.arch, c)
    timers = {a: _timer(c) for a, c in models.items()}
    for step, evaluate in timers.values():  # warm-up: allocations, kernel choice
        step(), step(), evaluate()
    clock = 1 if args.clock == "cpu" else 0
    steps: dict = {a: [] for a in timers}
    walls: dict = {a: [] for a in timers}
    evals: dict = {a: [] for a in timers}
    for _ in range(args.rounds):
        for a, (step, evaluate) in timers.items():
            t = _time(step, args.steps)
            steps[a].append(t[clock])
            walls[a].append(t[0])
            evals[a].append(_time(evaluate, 1)[clock] / EVAL_BATCH)

    from filter_templates.method.measure import arch_shape

    runs, free = [], [0.0] * jobs
    for c in grid.configs:
        n_train, n_test = dataset_sizes(c.dataset, c.limit_train, c.limit_test)
        step_s, eval_s = statistics.median(steps[c.arch]), statistics.median(evals[c.arch])
        epoch_s = -(-n_train // c.batch_size) * step_s + n_test * eval_s
        run_s = c.epochs * epoch_s + args.overhead
        i = free.index(min(free))  # the engine: the next free worker claims the next point
        free[i] += run_s
        shape = arch_shape(c.arch)
        runs.append(
            {
                "run": f"{c.dataset}-{c.arch.family}-{c.arch.template}-w{c.arch.width:g}-s{c.seed}",
                "key": point_key(c.to_dict())[0][:10],
                "params": shape.params,
                "flops": shape.flops,
                "step_s": step_s,
                "step_wall_s": statistics.median(walls[c.arch]),
                "step_spread": max(steps[c.arch]) / min(steps[c.arch]) - 1,
                "train_img_s": c.batch_size / step_s,
                "epoch_s": epoch_s,
                "epochs": c.epochs,
                "run_s": run_s,
            }
        )
    total = sum(r["run_s"] for r in runs)
    out = {
        "config": args.config,
        "runs": runs,
        "unreachable": [p.label() for p in grid.unreachable],
        "jobs": jobs,
        "threads": args.threads,
        "clock": args.clock,
        "sum_run_s": total,
        "wall_s": max(free),
        "cpu": _cpu(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{args.config}: {len(runs)} runs, timed at {args.threads} thread(s), batch as configured, "
        f"{args.clock} clock; {out['cpu']}, torch {torch.__version__}, load average {out['load_avg'][0]:.1f}"
    )
    w = max(len(r["run"]) for r in runs)
    print(
        f"{'run':<{w}}  {'params':>9}  {'MFLOPs':>8}  {'step ms':>8}  {'wall ms':>8}  {'noise':>6}  {'img/s':>6}  "
        f"{'epoch s':>8}  {'epochs':>6}  {'run min':>7}"
    )
    for r in runs:
        print(
            f"{r['run']:<{w}}  {r['params']:>9,}  {r['flops'] / 1e6:>8.1f}  {1e3 * r['step_s']:>8.1f}  "
            f"{1e3 * r['step_wall_s']:>8.1f}  {r['step_spread']:>6.0%}  {r['train_img_s']:>6.0f}  "
            f"{r['epoch_s']:>8.1f}  {r['epochs']:>6}  {r['run_s'] / 60:>7.1f}"
        )
    for label in out["unreachable"]:
        print(f"unreachable: {label}")
    print(
        f"sum of runs {total / 60:.1f} min; with {jobs} job(s): about {max(free) / 60:.1f} min wall clock "
        f"(if each job runs as fast as when timed here)"
    )
    return 0


def record(config: str, grid, accuracy_csv: str | None = None) -> str:
    """The planned runs of ``grid`` as JSON text: one object per line (a diff shows which run moved).
    With ``accuracy_csv`` (a report's ``accuracy_by_budget`` table, in percent) each run carries the
    final accuracy that table gives its cell."""
    from filter_templates.sweep.store import canonical_json, point_key

    table = {}
    if accuracy_csv:
        with open(accuracy_csv, newline="") as f:
            for row in csv.DictReader(f):
                for t in set(row) - {"family", "budget_key", "budget_value", "best"}:
                    if row[t] not in ("", None):
                        table[(row["family"], row["budget_key"], float(row["budget_value"]), t)] = float(row[t])
    runs = []
    for p in grid.budget_points:
        run = {
            "budget": f"{p.budget.key}={p.budget.value:g}",
            "fit": p.fit,
            "reason": p.reason,
            "config": None if p.config is None else p.config.to_dict(),
            "key": None if p.config is None else point_key(p.config.to_dict())[0],
        }
        acc = table.get((p.family, p.budget.key, float(p.budget.value), p.template))
        if acc is not None:
            run["table_final_acc_percent"] = acc
        runs.append(canonical_json(run))
    head = {
        "config": config,
        "planned_by": f"python benchmarks/budget_study_plan.py {config} --record FILE",
        "accuracy_from": accuracy_csv,
        "runs": len(runs),
    }
    return '{"about": ' + canonical_json(head) + ',\n"runs": [\n' + ",\n".join(runs) + "\n]}\n"


def _cpu() -> str:
    from filter_templates.core.device import cpu_name

    return cpu_name()


if __name__ == "__main__":
    sys.exit(main())
