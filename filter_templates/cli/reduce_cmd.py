"""``filter-templates reduce``: fit every template to one budget, train them, keep the best."""

from __future__ import annotations

import argparse
import json

from filter_templates.cli.args import (
    add_latency_args,
    add_model_arg,
    add_rounding_args,
    add_run_args,
    arch_options,
    latency_from_args,
    log_setting,
    model_from_args,
    nonnegative_int,
    positive_int,
)
from filter_templates.cli.fit_cmd import BUDGET_HELP, latency_caption
from filter_templates.cli.sweep_cmd import (
    ON_INTERRUPT,  # noqa: F401  (cli.interrupted_line reads it: reduce's runs resume like a sweep's)
    add_baseline_args,
    add_engine_args,
    check_engine_args,
    engine_options,
    train_settings,
)
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.core.status import DONE
from filter_templates.data.split import DEFAULT_MAX
from filter_templates.method.fit import format_value
from filter_templates.method.latency_table import read_table
from filter_templates.method.measure import mib
from filter_templates.pruning.adapter import Baselines
from filter_templates.reduction import Candidate, ReduceRequest, ReduceResult, reduce
from filter_templates.sweep.halving import DEFAULT_RUNGS, Halving
from filter_templates.sweep.separation import points

#: What ``best_acc`` is, in every place reduce shows it: never a basis for selection.
BEST_ACC_WORDS = "best test accuracy over epochs (optimistic)"

DESCRIPTION = """\
The study's method as one command: fit every template to the budget (the widest model of each
within it, as 'fit' finds it; base is always included, as the uniformly scaled baseline), train
the candidates, rank them by final validation accuracy (mean over seeds; ties go to fewer
parameters) on a stratified part of the training set held out for every candidate and seed alike
(--val-split), write a report and export the winner's seed with the best validation accuracy
(ONNX where the onnx extra is installed, else TorchScript, next to its weights). Every
candidate's final test accuracy is reported beside it, never used to choose; with --val-split 0
the ranking falls back to the test accuracy, and says so. Everything goes to --out: the results store DIR/results.sqlite, the runs
DIR/runs/ and the report DIR/report/; running the same command again resumes where it stopped
(finished runs are not repeated). A template the budget cannot reach is listed as unreachable
with the reason. Exit status 0 when a candidate finished, 1 when none did."""


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("reduce", help=help, description=DESCRIPTION)
    add_model_arg(p, required=True)
    p.add_argument("--budget", required=True, metavar="KEY=VALUE", help=BUDGET_HELP)
    p.add_argument(
        "--dataset",
        required=True,
        metavar="D",
        help="digits, cifar10, cifar100, synthetic, or folder (your images in --data-dir)",
    )
    p.add_argument(
        "--templates", nargs="+", metavar="T", help="templates to try (default: all five); base is always added"
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=nonnegative_int,
        metavar="S",
        default=[0],
        help="seeds: each candidate trains once per seed and ranks by the mean (default: 0)",
    )
    add_rounding_args(p)
    p.add_argument(
        "--out",
        default="reduce",
        metavar="DIR",
        help="folder of the store, runs and report (default: reduce/); reuse it to resume",
    )
    p.add_argument("--no-export", action="store_true", help="do not export the winner")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout: 'selection' (val_acc, or final_acc with --val-split 0), "
        "the recipe, the test views, and per candidate val_acc, final_acc (test), best_acc (the "
        f"{BEST_ACC_WORDS}), seeds_done, tied (not separable from the most accurate: it could have won) and "
        "separation (difference from the winner, its 95%% interval, p, images and seeds); 'separable' and "
        "'tied' for the whole choice",
    )
    add_latency_args(p.add_argument_group("latency budgets (as for fit)"), threads=True, table=True)
    t = p.add_argument_group("training (as for train and sweep)")
    add_run_args(t, val_default=f"10%% of the training set, at most {DEFAULT_MAX:,} images")
    add_baseline_args(p.add_argument_group("pruning baselines (ranked with the templates)"))
    h = p.add_argument_group("successive halving (docs/training.md says when it pays)")
    h.add_argument(
        "--halving",
        type=int,
        metavar="R",
        help="train every candidate to the first rung, keep the best 1/R (at least one) by mean "
        "validation accuracy there, and so on; the last rung is the full schedule (R >= 2; "
        "default: off, every candidate trains to the end)",
    )
    h.add_argument(
        "--rungs",
        type=int,
        metavar="K",
        help=f"rungs at E//R^(K-1), ..., E//R, E epochs, each rounded down; the first must be at least one "
        f"epoch (default: {DEFAULT_RUNGS})",
    )
    p.add_argument(
        "--seeds-until-separable",
        type=positive_int,
        metavar="N",
        help="while the most accurate candidate is tied with others (not separable on the validation "
        "images), train one more seed of each tied candidate, up to N seeds each; resumable like every run",
    )
    e = p.add_argument_group("engine")
    e.add_argument("--retry-failed", action="store_true", help="train candidates that failed before again")
    add_engine_args(
        e,
        jobs_default="on a CPU, the core count (at most one per run), else 1",
        threads_default="1 on a CPU without --jobs, else torch's choice",
    )
    p.set_defaults(run=run)


def halving_plan(args: argparse.Namespace) -> Halving | None:
    """``--halving`` and ``--rungs`` as a plan (None: off); a bad value is one line."""
    if args.halving is None:
        if args.rungs is not None:
            raise UsageError("--rungs needs --halving R")
        return None
    return Halving(args.halving, DEFAULT_RUNGS if args.rungs is None else args.rungs)


def run(args: argparse.Namespace) -> int:
    check_engine_args(args)
    halving = halving_plan(args)
    args.model = model_from_args(args)
    result = reduce(
        ReduceRequest(
            args.model,
            args.budget,
            args.dataset,
            templates=args.templates,
            seeds=args.seeds,
            train={**train_settings(args), "log": log_setting(args)},
            options=arch_options(args),
            out=args.out,
            engine=engine_options(args),
            export=not args.no_export,
            baselines=Baselines.from_flags(args.baselines, args.prune_at, args.prune_from),
            halving=halving,
            seeds_until_separable=args.seeds_until_separable,
            latency=latency_from_args(args, device="cpu"),
            latency_table=read_table(args.latency_table) if args.latency_table else None,
        )
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        note(result.sweep.line())
        print(render(result))
    return 0 if result.winner is not None else 1


def render(result: ReduceResult) -> str:
    """The ranked table and where the winner, its export and the report are; says what ranked the
    candidates and what each accuracy column is."""
    b = result.budget
    seeds = ", ".join(map(str, result.seeds))
    views = result.test_views if result.test_views is not None else "-"
    lines = [
        f"reduce {result.model} to {b.key} <= {format_value(b.key, b.value)} on {result.dataset}: "
        f"{len(result.candidates)} candidates, recipe {result.recipe.get('name', '-')}, {result.epochs} epochs, "
        f"seed{'s' if len(result.seeds) > 1 else ''} {seeds}, {views} test view(s)",
        f"ranked by {_selection_words(result)}",
    ]
    w = max(8, *(len(c.template) for c in result.candidates))
    lines.append(
        f"{'rank':>4}  {'template':<{w}}  {'width':>9}  {'params':>11}  {'MFLOPs':>8}  {'train MiB':>9}  "
        f"{'val %':>7}  {'vs winner, points [95%]':>24}  {'test %':>7}  {'best test* %':>12}  status"
    )
    for i, c in enumerate(result.candidates, 1):

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        def pct(v, width=7):
            return num(None if v is None else 100 * v, f">{width}.2f")

        status = c.status if c.status == DONE else f"{c.status}: {c.reason}" if c.reason else c.status
        if c.stopped_at is not None:
            status = f"stopped after {c.stopped_at} epochs (val % at that rung)"
        lines.append(
            f"{i:>4}  {c.template:<{w}}  {num(c.width, '>9.6g')}  {num(c.params, '>11,')}  "
            f"{num(None if c.flops is None else c.flops / 1e6, '>8.2f')}  "
            f"{num(None if c.train_memory_bytes is None else mib(c.train_memory_bytes), '>9.1f')}  "
            f"{pct(c.val_acc)}  {_versus(c, result):>24}  {pct(c.final_acc)}  {pct(c.best_acc, 12)}  {status}"
        )
    lines.append(
        f"val: final validation accuracy; test: final test accuracy; *: the {BEST_ACC_WORDS}, "
        "never used to select; means over the finished seeds; vs winner: the selection accuracy's "
        "difference from the winner's with its 95% paired-bootstrap interval over the same images "
        "(and seeds), tied: not separable from the most accurate"
    )
    timed = [(c.template, c.latency) for c in result.candidates if c.latency]
    if timed:  # a latency budget: each fitted model's latency in the runtime, and how it was measured
        cells = ", ".join(f"{t} {r['median_s'] * 1e3:.4g} ± {r['spread_s'] * 1e3:.2g} ms" for t, r in timed)
        lines.append(f"latency: {cells}")
        lines.append(latency_caption(timed[0][1]))
    if result.halving is not None:
        h = result.halving
        lines.append(
            f"successive halving, rate {h['rate']}: rungs at {', '.join(str(g['epochs']) for g in h['rungs'])} "
            f"epochs; {h['epochs_trained']} of the {h['epochs_plain']} epochs of training every candidate "
            f"to the end trained ({h['epochs_trained'] / max(1, h['epochs_plain']):.0%})"
        )
    lines += _tie_lines(result)
    win = result.winner
    if win is None:
        lines.append("no winner: no candidate finished training")
    else:
        where = f"pruned from width {win.width:g}" if win.kind == "pruning" else f"at width {win.width:g}"
        lines.append(f"winner: {win.template} {where} ({win.params:,} parameters), run {win.run_dir}")
        if result.exported:
            lines.append(f"exported: {result.exported}")
    if result.report:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)


def _selection_words(result: "ReduceResult") -> str:
    if result.selection == "val_acc":
        return (
            f"final validation accuracy on {result.val_images:,} images (--val-split {result.val_split:g}), "
            "the same for every candidate and seed; the winner's export is its seed with the best one"
        )
    return "final test accuracy (--val-split 0: no validation split; the winner's test accuracy is optimistic)"


def _versus(c: Candidate, result: ReduceResult) -> str:
    """``+1.20 [-0.40, +2.80] tied``: a finished candidate against the winner (the winner: "winner")."""
    w = result.winner
    if w is not None and c.template == w.template:
        return "winner"
    sep = c.separation
    if sep is None:
        return "-"
    return points(sep["difference"], *sep["interval"]) + (" tied" if c.tied else "")


def _tie_lines(result: ReduceResult) -> list[str]:
    """What the tie rule did, and what --seeds-until-separable trained."""
    ch, lines = result.choice, list[str]()
    if ch is None or ch.top is None:
        return lines
    seeds = result.more_seeds
    if seeds is not None:
        for r in seeds["rounds"]:
            lines.append(f"seeds until separable: seed {r['seed']} trained for {', '.join(r['candidates'])}")
    others = [t for t in ch.tied if t != ch.top]
    if not others:
        lines.append(f"separable: {ch.top} is more accurate than every other candidate (95% interval excludes 0)")
    else:
        lines.append(
            f"tied: {', '.join(others)} not separable from the most accurate, {ch.top}; the winner is the cheapest "
            f"of them in {ch.resource}" + (f", {ch.winner}" if ch.by_cost else f" ({ch.winner} itself)")
        )
        if seeds is not None:
            lines.append(
                f"still tied after {seeds['limit']} seeds each: more seeds or more validation images may separate them"
            )
    return lines
