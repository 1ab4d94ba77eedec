"""``filter-templates sweep``: train a grid of models into a results store, here or on Ray."""

from __future__ import annotations

import argparse
import json
import os

from filter_templates.cli.args import (
    add_latency_args,
    add_reading_arg,
    add_rounding_args,
    add_run_args,
    latency_from_args,
    log_setting,
    model_from_args,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from filter_templates.core import trackers
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import warn
from filter_templates.core.rundir import check_writable
from filter_templates.data import data_facts
from filter_templates.method.arch import floor_warning
from filter_templates.method.latency_table import read_table
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.sweep.engines import ENGINES, EngineOptions, SlurmOptions, run_grid
from filter_templates.sweep.grid import (
    PRESETS,
    TRAIN_FIELDS,
    SweepSpec,
    known_classes,
    load_config,
    plan_grid,
    preset,
    run_dir_name,
)
from filter_templates.sweep.plan import reindex
from filter_templates.sweep.store import DEFAULT_FILE, Store, point_key, store_group
from filter_templates.training import profile as machine_profile

DESCRIPTION = """\
Train every point of a grid (families x templates x widths x datasets x seeds) and record each
run in a results store (SQLite). Give the grid with --preset, --config FILE.toml or the grid
flags; grid flags given together with a preset or config override its values. With --budgets
instead of --widths, every (family, template, budget, dataset) is first fitted (the widest model
within the budget, as 'fit' finds it) and that model is trained; a budget a template cannot reach
is recorded as skipped with the reason, and the sweep goes on. Re-running skips done points,
resumes partial ones from their checkpoints and retries failed ones only with --retry-failed.
Several sweeps may share one --db: no point runs twice. Exit status 1 when a run of this sweep
failed (it is recorded with its reason and the sweep goes on), 0 otherwise."""

#: What Ctrl-C prints after 'interrupted;' (cli.interrupted_line).
ON_INTERRUPT = "finished runs are kept: the same command again continues, each partial run from its checkpoint (as --resume does, bit-identically on a CPU)"


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("sweep", help=help, description=DESCRIPTION)
    src = p.add_mutually_exclusive_group()
    q = PRESETS["quick"]
    src.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"quick: {'+'.join(q['models'])}, 5 templates, width {', '.join(map(str, q['widths']))} "
        f"(at least {q['floor']} filters a layer), {', '.join(q['datasets'])}, {q['epochs']} epochs "
        "(minutes on a CPU); paper: the published grid (4 families x 5 templates x 8 widths x "
        "cifar10/100, 160 epochs)",
    )
    src.add_argument("--config", metavar="FILE.toml", help="a TOML sweep file (see configs/)")
    g = p.add_argument_group("grid (override the preset/config)")
    g.add_argument("--models", nargs="+", metavar="M", help="model families")
    add_reading_arg(g)
    g.add_argument("--templates", nargs="+", metavar="T", help="templates (default: all five)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--widths", nargs="+", type=positive_float, metavar="W", help="width multipliers")
    size.add_argument(
        "--budgets",
        nargs="+",
        metavar="KEY=VALUE",
        help="budgets instead of widths, e.g. params=1M flops=50M: each point trains the widest model "
        "of its template within the budget (fitted as by 'fit'). KEY: params, flops (counts, "
        "K/M/G suffixes), memory (bytes of one training step at --batch-size, K/M/G or Ki/Mi/Gi), "
        "latency (s/ms/us, measured on --device)",
    )
    g.add_argument(
        "--datasets",
        nargs="+",
        metavar="D",
        help="datasets: digits, cifar10, cifar100, synthetic, folder (your images in --data-dir)",
    )
    g.add_argument("--seeds", nargs="+", type=nonnegative_int, metavar="S", help="seeds (default: 0)")
    add_rounding_args(g, defaults=False)
    add_baseline_args(g)
    add_latency_args(p.add_argument_group("latency budgets (as for fit)"), threads=True, table=True)
    t = p.add_argument_group("training (override the preset/config)")
    add_run_args(t)
    s = p.add_argument_group("store and engine")
    s.add_argument("--db", default=DEFAULT_FILE, metavar="FILE", help=f"results store (default: {DEFAULT_FILE})")
    s.add_argument("--runs-dir", default="runs", metavar="DIR", help="one folder per run (default: runs/)")
    s.add_argument("--retry-failed", action="store_true", help="run failed points again")
    s.add_argument(
        "--reindex",
        action="store_true",
        help="rebuild the store's rows from the run folders in --runs-dir first (alone: only that)",
    )
    add_engine_args(
        s,
        jobs_default="the preset's or config's, else 1",
        threads_default="the preset's or config's, else torch's choice",
    )
    s.add_argument(
        "--dry-run", action="store_true", help="validate and list the grid (without reading the data), run nothing"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


_RAY_ONLY = ("address", "cpus_per_trial", "gpus_per_trial", "procs_per_trial", "max_failures", "storage")
_LOCAL_ONLY = ("threads", "jobs")
_SLURM_ONLY = (
    "partition",
    "time",
    "cpus_per_task",
    "gpus_per_task",
    "tasks_per_node",
    "nodes",
    "mem",
    "array_parallelism",
    "slurm_option",
    "slurm_dir",
)
_ENGINE_FLAGS = {"local": _LOCAL_ONLY, "ray": _RAY_ONLY, "slurm": _SLURM_ONLY}


def add_baseline_args(group: "argparse._ArgumentGroup") -> None:
    """--baselines, --prune-at, --prune-from: pruning baselines beside the templates at each budget."""
    group.add_argument(
        "--baselines",
        nargs="+",
        metavar="NAME",
        help="pruning baselines trained beside the templates at the same budget, data, recipe and "
        "epochs: prune-l1 (train, prune channels by L1 norm to the budget, fine-tune), "
        "prune-l1-global (one ranking across layers), prune-scratch (prune-l1-global's "
        "architecture trained from scratch); needs: pip install -e '.[prune]'",
    )
    group.add_argument(
        "--prune-at",
        type=positive_float,
        metavar="F",
        help="share of the epochs the baselines train before pruning (default: 0.5)",
    )
    group.add_argument(
        "--prune-from",
        type=positive_float,
        metavar="W",
        help="width of the base model the baselines train and prune (default: 1)",
    )


def add_engine_args(
    group: "argparse._ArgumentGroup", jobs_default: str = "1", threads_default: str = "torch's choice"
) -> None:
    """How runs are executed: local jobs and threads, or Ray and its options (sweep, reduce)."""
    group.add_argument(
        "--engine",
        choices=list(ENGINES),
        default="local",
        help="local: runs train here, --jobs at a time (default); ray: each run a Ray Tune trial; "
        "slurm: each run a Slurm job (pip install 'filter-templates[slurm]'); with ray on a "
        "cluster or slurm, --runs-dir, --data-dir and --slurm-dir must be on a file system "
        "every node mounts (not this machine's /tmp)",
    )
    group.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help=f"local: train N runs at once, one process each (default: {jobs_default}; at most the CPU count)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help=f"local: CPU threads of torch per run (default: {threads_default}; on a CPU shared "
        "with other jobs 1 is often much faster); ray: set by --cpus-per-trial",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="ray: join this cluster (e.g. auto, ray://head:10001); default: start a local Ray",
    )
    group.add_argument(
        "--cpus-per-trial",
        type=positive_float,
        metavar="C",
        help="ray: CPUs per trial, shared by its processes (default: 1 per process)",
    )
    group.add_argument(
        "--gpus-per-trial",
        type=nonnegative_float,
        metavar="G",
        help="ray: GPUs per trial, fractions allowed (default: 0); a whole G > 1 trains each trial's run as "
        "G processes on its node, one GPU each (DistributedDataParallel over NCCL)",
    )
    group.add_argument(
        "--procs-per-trial",
        type=positive_int,
        metavar="N",
        help="ray: train each trial's run as N processes on its node (DistributedDataParallel; on CPU over "
        "gloo, --cpus-per-trial split between them; default: one per GPU of --gpus-per-trial, else 1)",
    )
    group.add_argument(
        "--max-failures",
        type=nonnegative_int,
        metavar="N",
        help="ray: restart a crashed trial from its checkpoint up to N times (default: 2)",
    )
    group.add_argument(
        "--storage",
        metavar="PATH",
        help="ray: where Tune keeps trial checkpoints; on a cluster a shared path or URI (default: RUNS_DIR/_ray)",
    )
    add_slurm_args(group)


def add_slurm_args(group: "argparse._ArgumentGroup") -> None:
    """--engine slurm's requests to the cluster (see sweep.engines.SlurmOptions)."""
    group.add_argument("--partition", metavar="P", help="slurm: the partition (default: the cluster's default)")
    group.add_argument(
        "--time",
        type=positive_int,
        metavar="MIN",
        help="slurm: minutes per job (default: 60); a run that reaches it checkpoints, requeues "
        "itself and resumes where it stopped",
    )
    group.add_argument(
        "--cpus-per-task",
        type=positive_int,
        metavar="N",
        help="slurm: CPUs per job, also its torch threads (default: 1)",
    )
    group.add_argument(
        "--gpus-per-task",
        type=nonnegative_int,
        metavar="N",
        help="slurm: GPUs per point (default: 0); N > 1 without --tasks-per-node trains the point as "
        "one run of N processes, one GPU each",
    )
    group.add_argument(
        "--tasks-per-node",
        type=positive_int,
        metavar="N",
        help="slurm: train each point as one run of N processes per node (DistributedDataParallel; "
        "--cpus-per-task CPUs and --gpus-per-task GPUs each; default: 1)",
    )
    group.add_argument("--nodes", type=positive_int, metavar="N", help="slurm: nodes of each point's run (default: 1)")
    group.add_argument(
        "--mem", metavar="SIZE", help="slurm: memory per job as sbatch takes it, e.g. 8G (default: the partition's)"
    )
    group.add_argument(
        "--array-parallelism",
        type=positive_int,
        metavar="N",
        help="slurm: at most N jobs of the sweep's array run at once (default: as Slurm schedules)",
    )
    group.add_argument(
        "--slurm-option",
        action="append",
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option, without its dashes, e.g. account=myproject (repeatable)",
    )
    group.add_argument(
        "--slurm-dir",
        metavar="DIR",
        help="slurm: the jobs' logs and submitit's files, and which job "
        "runs which point (default: beside --db, DB.slurm/)",
    )


def check_engine_args(args: argparse.Namespace) -> None:
    """Refuse flags of another engine before anything is fitted or trained."""
    for engine, names in _ENGINE_FLAGS.items():
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) is not None]
        if engine == args.engine or not given:
            continue
        hint = {
            "ray": "; with ray, --cpus-per-trial and --gpus-per-trial decide how many trials run at once and "
            "their threads",
            "slurm": "; with slurm, --cpus-per-task sets each job's CPUs and threads",
        }.get(args.engine, "")
        raise UsageError(f"{', '.join(given)} only apply to --engine {engine}{hint if engine == 'local' else ''}")
    if args.engine == "slurm":  # refused now, before any data is read
        engine_options(args).slurm.validate()
    if args.engine == "ray":
        engine_options(args).validate_ray()


def engine_options(args: argparse.Namespace, jobs: int | None = None, threads: int | None = None) -> "EngineOptions":
    """The EngineOptions the flags ask for; ``jobs``/``threads``: a preset's or config's values
    (a flag overrides them; Ray ignores them, as its trials' CPU share decides)."""
    d = SlurmOptions()
    slurm = SlurmOptions(
        partition=args.partition,
        time=args.time or d.time,
        cpus_per_task=args.cpus_per_task or d.cpus_per_task,
        gpus_per_task=args.gpus_per_task or d.gpus_per_task,
        tasks_per_node=args.tasks_per_node,
        nodes=args.nodes or d.nodes,
        mem=args.mem,
        array_parallelism=args.array_parallelism,
        extra=SlurmOptions.parse_extra(args.slurm_option),
        folder=args.slurm_dir,
    )
    return EngineOptions(
        engine=args.engine,
        jobs=args.jobs or jobs,
        threads=args.threads or threads,
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial or 0.0,
        procs_per_trial=args.procs_per_trial,
        max_failures=2 if args.max_failures is None else args.max_failures,
        storage=args.storage,
        retry_failed=bool(getattr(args, "retry_failed", False)),
        slurm=slurm,
    )


def train_settings(args: argparse.Namespace) -> dict:
    """The training settings the shared flags (``add_run_args``) set, by TrainConfig field name:
    one place, so a field added to TrainConfig and its flag reaches sweep and reduce alike."""
    out = {k: getattr(args, k, None) for k in TRAIN_FIELDS}
    data_dir = out.get("data_dir")
    if data_dir:
        out["data_dir"] = os.path.abspath(data_dir)
    return out


def _models(args: argparse.Namespace) -> list[str] | None:
    """--models: family names or package.module:function (imported here: only a flag may name code;
    a user's network is discovered at --image-size when given, read by --reading)."""
    if args.models is None:
        if args.reading is not None:
            raise UsageError("--reading needs --models package.module:function")
        return None
    return [model_from_args(args, m) for m in args.models]


def spec_from_args(args: argparse.Namespace):
    """The SweepSpec the flags describe, or None when they name no grid."""
    overrides = {
        "models": _models(args),
        "templates": args.templates,
        "widths": args.widths,
        "budgets": args.budgets,
        "datasets": args.datasets,
        "seeds": args.seeds,
        "divisor": args.divisor,
        "floor": args.floor,
        "threads": args.threads,
        "jobs": args.jobs,
        "as_published": args.as_published,
        "baselines": args.baselines,
        "prune_at": args.prune_at,
        "prune_from": args.prune_from,
        **train_settings(args),
    }
    if args.preset:
        return preset(args.preset).merged(overrides)
    if args.config:
        return load_config(args.config).merged(overrides)
    grid = ("models", "widths", "datasets")
    if not any(overrides[k] is not None for k in grid + ("budgets", "templates", "seeds")):
        return None
    missing = [
        f"--{k}" if k != "widths" else "--widths (or --budgets)"
        for k in grid
        if overrides[k] is None and not (k == "widths" and overrides["budgets"] is not None)
    ]
    if missing:
        raise UsageError(f"the grid needs {', '.join(missing)} (or use --preset quick|paper or --config FILE.toml)")
    return SweepSpec(models=[], templates=list(BUILTIN_TEMPLATES), widths=[], datasets=[]).merged(overrides)


def run(args: argparse.Namespace) -> int:
    check_engine_args(args)
    spec = spec_from_args(args)
    if spec is None and not args.reindex:
        raise UsageError("name a grid: --preset quick|paper, --config FILE.toml, or --models/--widths/--datasets")
    check_writable(args.db, "--db", folder=False)  # before the data are read or anything trains
    check_writable(args.runs_dir, "--runs-dir", folder=True)
    out: dict = {"db": os.path.abspath(args.db), "runs_dir": os.path.abspath(args.runs_dir)}
    if args.reindex:
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

    spec.latency = latency_from_args(args, device="cpu")
    spec.latency_table = read_table(args.latency_table) if args.latency_table else None
    # the trackers of the flags over a config file's; the runs of one store are one group
    spec.train["log"] = trackers.prepare(log_setting(args, spec.train.get("log")), group=store_group(args.db))
    grid = plan_grid(spec, classes_of=known_classes if args.dry_run else None)  # a real run reads the data now
    for line in dict.fromkeys(filter(None, (floor_warning(c.arch) for c in grid.configs))):  # once per model
        warn(line)
    if not args.dry_run:
        data = {(c.dataset, c.data_dir, c.limit_train, c.val_split): c for c in grid.configs}
        for c in data.values():  # a split the data cannot give is refused before anything trains
            data_facts(c).val_images(c.val_split, c.batch_size)
        for profile in {c.profile for c in grid.configs}:  # so is a corrupt machine profile
            machine_profile.check(profile)
    if args.dry_run:
        names = [run_dir_name(c.to_dict(), point_key(c.to_dict())[0]) for c in grid.configs]
        skipped = [{"point": p.label(), "reason": p.reason} for p in grid.unreachable]
        if args.json:
            print(
                json.dumps(
                    {**out, "points": len(grid.configs), "grid": spec.to_dict(), "runs": names, "unreachable": skipped}
                )
            )
        else:
            print("\n".join(names + [f"unreachable: {d['point']}: {d['reason']}" for d in skipped]))
            print(
                f"{len(grid.configs)} points{f', {len(skipped)} unreachable' if skipped else ''}; "
                "nothing run (--dry-run)"
            )
        return 0

    result = run_grid(grid, args.db, args.runs_dir, engine_options(args, spec.jobs, spec.threads))
    if args.json:
        print(json.dumps({**out, **result.to_dict()}))
    else:
        print(result.line())
    return 1 if result.failed else 0
