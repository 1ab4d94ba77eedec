"""``filter-templates sweep``: train a grid of models into a results store, here or on Ray."""

from __future__ import annotations

import argparse
import json
import os

from ..errors import UsageError
from ..rundir import check_writable
from .args import add_run_args, nonnegative_float, nonnegative_int, positive_float, positive_int

DESCRIPTION = """\
Train every point of a grid (families x templates x widths x datasets x seeds) and record each
run in a results store (SQLite). Give the grid with --preset, --config FILE.toml or the grid
flags; grid flags given together with a preset or config override its values. Re-running skips
done points, resumes partial ones from their checkpoints and retries failed ones only with
--retry-failed. Several sweeps may share one --db: no point runs twice. Exit status 1 when a run
of this sweep failed (it is recorded with its reason and the sweep goes on), 0 otherwise."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..sweep.grid import PRESETS

    p = sub.add_parser("sweep", help="train a grid of models into a results store (local or Ray)",
                       description=DESCRIPTION)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=list(PRESETS),
                     help="quick: vgg19+mobilenet, 5 templates, widths 0.1 and 0.05, digits, 10 epochs (minutes on a CPU); "
                          "paper: the published grid (4 families x 5 templates x 8 widths x cifar10/100, 160 epochs)")
    src.add_argument("--config", metavar="FILE.toml", help="a TOML sweep file (see configs/)")
    g = p.add_argument_group("grid (override the preset/config)")
    g.add_argument("--models", nargs="+", metavar="M", help="model families")
    g.add_argument("--templates", nargs="+", metavar="T", help="templates (default: all five)")
    g.add_argument("--widths", nargs="+", type=positive_float, metavar="W", help="width multipliers")
    g.add_argument("--datasets", nargs="+", metavar="D", help="datasets: digits, cifar10, cifar100, synthetic")
    g.add_argument("--seeds", nargs="+", type=nonnegative_int, metavar="S", help="seeds (default: 0)")
    g.add_argument("--divisor", type=positive_int, metavar="K", help="round every layer to a multiple of K")
    g.add_argument("--floor", type=positive_int, metavar="N", help="smallest filter count of any layer")
    t = p.add_argument_group("training (override the preset/config)")
    add_run_args(t)
    t.add_argument("--jobs", type=positive_int, metavar="N",
                   help="local: train N runs at once, one process each (default: the preset's or config's, else 1; "
                        "at most the CPU count)")
    t.add_argument("--threads", type=positive_int, metavar="N",
                   help="local: CPU threads of torch (default: the preset's or config's, else torch's choice; on a CPU "
                        "shared with other jobs 1 is often much faster); ray: set by --cpus-per-trial")
    s = p.add_argument_group("store and engine")
    s.add_argument("--db", default="results.sqlite", metavar="FILE", help="results store (default: results.sqlite)")
    s.add_argument("--runs-dir", default="runs", metavar="DIR", help="one folder per run (default: runs/)")
    s.add_argument("--retry-failed", action="store_true", help="run failed points again")
    s.add_argument("--reindex", action="store_true",
                   help="rebuild the store's rows from the run folders in --runs-dir first (alone: only that)")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one run after another here (default); ray: each run a Ray Tune trial")
    s.add_argument("--address", metavar="ADDR", help="ray: join this cluster (e.g. auto, ray://head:10001); "
                                                     "default: start a local Ray")
    s.add_argument("--cpus-per-trial", type=positive_float, metavar="C", help="ray: CPUs per trial (default: 1)")
    s.add_argument("--gpus-per-trial", type=nonnegative_float, metavar="G",
                   help="ray: GPUs per trial, fractions allowed (default: 0)")
    s.add_argument("--max-failures", type=nonnegative_int, metavar="N",
                   help="ray: restart a crashed trial from its checkpoint up to N times (default: 2)")
    s.add_argument("--storage", metavar="PATH", help="ray: where Tune keeps trial checkpoints; on a cluster a "
                                                     "shared path or URI (default: RUNS_DIR/_ray)")
    s.add_argument("--dry-run", action="store_true", help="validate and list the grid (without reading the data), "
                                                          "run nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


_RAY_ONLY = ("address", "cpus_per_trial", "gpus_per_trial", "max_failures", "storage")


def spec_from_args(args: argparse.Namespace):
    """The SweepSpec the flags describe, or None when they name no grid."""
    from ..sweep.grid import load_config, preset

    overrides = {
        "models": args.models, "templates": args.templates, "widths": args.widths, "datasets": args.datasets,
        "seeds": args.seeds, "divisor": args.divisor, "floor": args.floor, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "limit_train": args.limit_train,
        "limit_test": args.limit_test, "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
        "download": args.download, "device": args.device, "threads": args.threads,
        "jobs": args.jobs,
    }
    if args.preset:
        return preset(args.preset).merged(overrides)
    if args.config:
        return load_config(args.config).merged(overrides)
    grid = ("models", "widths", "datasets")
    if not any(overrides[k] is not None for k in grid + ("templates", "seeds")):
        return None
    missing = [f"--{k}" for k in grid if overrides[k] is None]
    if missing:
        raise UsageError(f"the grid needs {', '.join(missing)} (or use --preset quick|paper or --config FILE.toml)")
    from ..sweep.grid import ALL_TEMPLATES, SweepSpec

    return SweepSpec(models=[], templates=list(ALL_TEMPLATES), widths=[], datasets=[]).merged(overrides)


def run(args: argparse.Namespace) -> int:
    if args.engine != "ray":
        given = [f"--{n.replace('_', '-')}" for n in _RAY_ONLY if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --engine ray")
    spec = spec_from_args(args)
    if spec is None and not args.reindex:
        raise UsageError("name a grid: --preset quick|paper, --config FILE.toml, or --models/--widths/--datasets")

    from ..sweep.store import Store

    check_writable(args.db, "--db", folder=False)  # before the data are read or anything trains
    check_writable(args.runs_dir, "--runs-dir", folder=True)
    out: dict = {"db": os.path.abspath(args.db), "runs_dir": os.path.abspath(args.runs_dir)}
    if args.reindex:
        from ..sweep.plan import reindex

        if not os.path.isdir(args.runs_dir):
            raise UsageError(f"--reindex: run folder {args.runs_dir!r} does not exist")
        with Store(args.db) as store:
            out["reindexed"] = reindex(store, args.runs_dir)
        if not args.json:
            print(f"reindexed {out['reindexed']} run folders from {args.runs_dir} into {args.db}")
        if spec is None:
            if args.json:
                print(json.dumps(out))
            return 0

    from ..sweep.grid import expand, known_classes

    configs = expand(spec, classes_of=known_classes if args.dry_run else None)  # a real run reads the data now
    if args.dry_run:
        from ..sweep.grid import run_dir_name
        from ..sweep.store import point_key

        names = [run_dir_name(c.to_dict(), point_key(c.to_dict())[0]) for c in configs]
        if args.json:
            print(json.dumps({**out, "points": len(configs), "grid": spec.to_dict(), "runs": names}))
        else:
            print("\n".join(names))
            print(f"{len(configs)} points; nothing run (--dry-run)")
        return 0

    if args.engine == "ray":
        given = [f"--{n}" for n in ("threads", "jobs") if getattr(args, n)]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --engine local; with ray, --cpus-per-trial and "
                             "--gpus-per-trial decide how many trials run at once and their threads")
        # (a preset's or config's threads/jobs are ignored by Ray for the same reason)
        from ..sweep.ray_engine import run_ray

        result = run_ray(configs, args.db, args.runs_dir, address=args.address,
                         cpus_per_trial=args.cpus_per_trial or 1.0, gpus_per_trial=args.gpus_per_trial or 0.0,
                         max_failures=2 if args.max_failures is None else args.max_failures,
                         storage=args.storage, retry_failed=args.retry_failed)
    else:
        from ..sweep.local import run_local
        from ..measure import resolve_device

        for device in {c.device for c in configs}:
            resolve_device(device)  # asking for CUDA where there is none fails now, not per run
        jobs = max(1, min(spec.jobs, os.cpu_count() or 1))
        result = run_local(configs, args.db, args.runs_dir, retry_failed=args.retry_failed, jobs=jobs,
                           threads=spec.threads)
    if args.json:
        print(json.dumps({**out, **result.to_dict()}))
    else:
        print(result.line())
    return 1 if result.failed else 0
