"""Measure, on purpose, how this machine trains fastest: the work behind ``filter-templates tune``.

Every precision (fp32, bf16 autocast) x memory format (channels_last, contiguous) x thread count
(1, half and all of the usable cores) times the bare training step of one model (the step a run
takes: :func:`loop.sgd_step`, the recipe's optimiser, one fixed batch), in alternating rounds (the
order reversed every other round, so a drift in the machine's load falls on every variant alike);
a variant's speed is its median round, and min and max show the spread. Then:

- bf16 may win only if it trains: a short run of the fast recipe on ``digits`` in both precisions
  (same seed, the winner's layout and threads) must end within :data:`BF16_TOLERANCE` of fp32's
  test accuracy; otherwise the fastest fp32 variant wins.
- ``torch.compile`` of the winner's step is timed with its compile time (the first step's excess
  over an eager step), alternating with the eager winner. It is recommended only where it pays
  back on a run of :data:`PAYBACK_EPOCHS` epochs over :data:`PAYBACK_IMAGES` images:
  ``compile_s < PAYBACK_EPOCHS * (PAYBACK_IMAGES / batch) * (eager_step_s - compiled_step_s)``.

The result is what :mod:`.profile` writes; runs read the file, never a timing.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from filter_templates.core.load import Load, OthersMeter, load_average, usable_cores
from filter_templates.data import data_facts, load_dataset
from filter_templates.method.arch import Arch
from filter_templates.training import autotune
from filter_templates.training import profile as machine_profile
from filter_templates.training.config import MEMORY_FORMATS, PRECISIONS, PROFILE_OFF, RECIPES, TrainConfig
from filter_templates.training.loop import sgd_step, train
from filter_templates.training.recipe import make_optimizer

__all__ = [
    "TuneRequest",
    "Variant",
    "Timing",
    "TuneResult",
    "tune",
    "thread_counts",
    "BF16_TOLERANCE",
    "PAYBACK_EPOCHS",
    "PAYBACK_IMAGES",
    "compile_pays",
    "describe_machine",
    "alternate",
    "bench",
    "EAGER_SHARE",
]

BF16_TOLERANCE = 0.02  # test accuracy, as a fraction: bf16 must end within 2 points of fp32
PAYBACK_EPOCHS = 10  # compile must pay back on a run this long ...
PAYBACK_IMAGES = 50_000  # ... over this many training images an epoch (CIFAR-10's)
CHECK_DATASET = "digits"  # the bf16 check's data: embedded, so it needs no download


@dataclass(frozen=True)
class TuneRequest:
    """What to measure. ``arch``: the model (at its image size); ``seconds``: about how long the
    timed eager steps take in all (the rounds share it; compile and the bf16 check come on top);
    ``compile``: also measure ``torch.compile``; ``check_epochs``: epochs of each bf16 check run;
    ``say``: where progress lines go (stderr in the CLI)."""

    arch: Arch
    device: torch.device
    batch_size: int = RECIPES["fast"]["batch_size"]
    seconds: float = 60.0
    rounds: int = 3
    compile: bool = True
    check_epochs: int = 2
    say: Callable[[str], None] = lambda line: None


@dataclass(frozen=True)
class Variant:
    precision: str
    memory_format: str
    threads: int
    compile: bool = False

    @property
    def name(self) -> str:
        return f"{self.precision}/{self.memory_format}/{self.threads}" + ("/compiled" if self.compile else "")

    def execution(self) -> autotune.Execution:
        return autotune.Execution(self.precision, self.memory_format, self.threads, self.compile)


@dataclass
class Timing:
    """A variant's rounds in images/s (and, compiled, its compile time in seconds)."""

    variant: Variant
    rounds: list[float] = field(default_factory=list)
    compile_s: float | None = None
    rounds_steps: int = 0  # steps taken, warm-up included

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    def row(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "min": round(min(self.rounds), 1),
            "median": round(self.median, 1),
            "max": round(max(self.rounds), 1),
            "compile_s": None if self.compile_s is None else round(self.compile_s, 1),
        }


@dataclass
class TuneResult:
    """The timings, the checks and what they recommend (``reasons``: why, line by line)."""

    timings: list[Timing]
    recommended: Variant
    rule: Variant
    reasons: list[str]
    bf16_check: dict[str, Any] | None
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds of each part, all within --seconds
    load: Load | None = None  # what the machine was doing: a busy machine's timings are not the machine's

    def entry(self, arch: Arch, batch_size: int, device: torch.device) -> machine_profile.Entry:
        """The profile table for this machine."""
        by_name = {t.variant.name: t for t in self.timings}
        best, rule = by_name[self.recommended.name], by_name.get(self.rule.name)
        measured = {
            "model": f"{arch.family} {arch.template} w={arch.width:g} at {arch.image_size} px",
            "batch_size": batch_size,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "images_per_s": round(best.median, 1),
            "rule": self.rule.name,
            "rule_images_per_s": None if rule is None else round(rule.median, 1),
            "bf16_check": "" if self.bf16_check is None else self.bf16_check["verdict"],
            "tune_s": round(self.seconds, 1),
            **(self.load.to_dict() if self.load is not None else {}),
        }
        return machine_profile.Entry(
            machine_profile.machine_key(device),
            self.recommended.execution(),
            {k: v for k, v in measured.items() if v is not None},
        )


def thread_counts(cores: int) -> list[int]:
    """1, half and all of ``cores``: the counts worth timing (more would cost minutes, and the
    speed of a count between them lies between theirs)."""
    return sorted({1, max(1, cores // 2), cores})


class _Bench:
    """One (precision, memory format, compile) model with its optimiser and a fixed batch."""

    def __init__(self, request: TuneRequest, precision: str, memory_format: str, compile: bool) -> None:
        torch.manual_seed(0)
        fmt = autotune.torch_memory_format(memory_format)
        arch, device = request.arch, request.device
        # Module.to takes memory_format at run time; torch's stubs leave it out
        model = arch.build().to(device=device, memory_format=fmt).train()  # type: ignore[call-overload]
        config = TrainConfig(arch=arch, image_size=arch.image_size, epochs=1, batch_size=request.batch_size)
        self.optimizer = make_optimizer(model, config)
        self.model = autotune.compiled(model, compile)
        self.x = torch.randn(request.batch_size, 3, arch.image_size, arch.image_size, device=device).contiguous(
            memory_format=fmt
        )
        self.y = torch.randint(0, arch.classes, (request.batch_size,), device=device)
        self.amp, self.device = precision == "bf16", device

    def steps(self, n: int) -> float:
        """Seconds for ``n`` training steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            sgd_step(self.model, self.optimizer, self.x, self.y, self.amp)
        _sync(self.device)
        return time.perf_counter() - t0


def bench(request: TuneRequest, variant: Variant) -> _Bench:
    """The model, optimiser and batch that time ``variant`` (its threads are set when it steps)."""
    return _Bench(request, variant.precision, variant.memory_format, variant.compile)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(
    request: TuneRequest,
    benches: dict[Variant, _Bench],
    until: float,
    timings: dict[Variant, Timing],
    every: bool = False,
) -> list[Variant]:
    """Rounds over ``benches`` that end by ``until`` (``time.perf_counter``): each variant steps
    for its share of the time left (at least one step), the order reversed every other round.

    One warm-up step each first (a compiled variant's is its compile, then one more to size it); a
    variant whose warm-up would start after ``until`` is not timed (returned: a busy machine or a
    slow precision can make one step outlast the budget), unless ``every`` (a pair that is only
    worth timing together: the compile's). Rounds that one step of each variant
    could not fit in the time left are dropped; when none fits, each variant's warm-up step is its
    one round."""
    order, skipped = list(benches), []
    step_s: dict[Variant, float] = {}
    for v in list(order):
        if step_s and not every and time.perf_counter() >= until:
            skipped.append(v)
            order.remove(v)
            continue
        torch.set_num_threads(v.threads)
        step_s[v] = benches[v].steps(1)
        timings[v].rounds_steps += 1
        if v.compile:
            first, step_s[v] = step_s[v], benches[v].steps(1)
            timings[v].compile_s, timings[v].rounds_steps = max(0.0, first - step_s[v]), timings[v].rounds_steps + 1
    rounds = min(request.rounds, int(max(0.0, until - time.perf_counter()) // max(sum(step_s.values()), 1e-9)))
    if rounds == 0:
        for v in order:
            timings[v].rounds.append(request.batch_size / step_s[v])
        request.say("one step of each variant was all --seconds held: the warm-up steps are the rounds")
    for r in range(rounds):
        share = max(0.0, until - time.perf_counter()) / ((rounds - r) * len(order))
        for v in order if r % 2 == 0 else order[::-1]:
            torch.set_num_threads(v.threads)
            n, spent = 0, 0.0
            while n == 0 or spent + spent / n <= share:  # stop before a step would pass the share
                spent += benches[v].steps(1)
                n += 1
            timings[v].rounds.append(n * request.batch_size / spent)
            timings[v].rounds_steps += n
            request.say(f"round {r + 1}/{rounds}  {v.name:<32} {timings[v].rounds[-1]:9.1f} img/s")
    return skipped


def _eager_variants(request: TuneRequest) -> list[Variant]:
    cpu = request.device.type == "cpu"
    precisions = [p for p in PRECISIONS if p != "bf16" or cpu or torch.cuda.is_bf16_supported()]
    counts = thread_counts(autotune.usable_cores()) if cpu else [torch.get_num_threads()]
    # fp32 first: where --seconds runs out during the warm-ups, the variants left untimed are bf16
    # ones, whose steps can be many times slower (a CPU without bf16 units emulates it)
    return [Variant(p, m, n) for p in precisions for n in counts for m in MEMORY_FORMATS]


def _check_bf16(request: TuneRequest, winner: Variant) -> dict[str, Any]:
    """Train the fast recipe on digits in fp32 and in bf16 (winner's layout and threads, seed 0,
    no profile) and compare the final test accuracies."""
    # the same counts, for the digits' classes and 32 px images (a model's filters do not depend on either)
    facts = data_facts({"dataset": CHECK_DATASET})
    classes, size = facts.classes, facts.image_size
    arch = dataclasses.replace(request.arch, classes=classes, image_size=size)
    acc = {}
    with tempfile.TemporaryDirectory(prefix="filter-templates-tune-") as tmp:
        for precision in ("fp32", "bf16"):
            config = TrainConfig(
                arch=arch,
                dataset=CHECK_DATASET,
                epochs=request.check_epochs,
                seed=0,
                device=str(request.device),
                precision=precision,
                memory_format=winner.memory_format,
                threads=winner.threads,
                compile=False,
                profile=PROFILE_OFF,
            )
            request.say(f"bf16 check: {request.check_epochs} epochs of the fast recipe on {CHECK_DATASET}, {precision}")
            acc[precision] = train(config, Path(tmp) / precision, progress=False)["final_acc"]
    passed = acc["fp32"] is not None and acc["bf16"] is not None and acc["fp32"] - acc["bf16"] <= BF16_TOLERANCE
    verdict = (
        f"{'passed' if passed else 'failed'}: {CHECK_DATASET} {request.check_epochs} epochs, fp32 "
        f"{acc['fp32']:.4f}, bf16 {acc['bf16']:.4f} (tolerance {BF16_TOLERANCE:g})"
    )
    return {"passed": passed, "fp32": acc["fp32"], "bf16": acc["bf16"], "verdict": verdict}


def compile_pays(compile_s: float, eager_step_s: float, compiled_step_s: float, batch_size: int) -> bool:
    """Whether compiling pays back within a :data:`PAYBACK_EPOCHS`-epoch run (module docstring)."""
    saved = PAYBACK_EPOCHS * (PAYBACK_IMAGES / batch_size) * (eager_step_s - compiled_step_s)
    return compile_s < saved


#: The share of ``--seconds`` the eager rounds end by when ``torch.compile`` is timed after them;
#: the bf16 check (when bf16 wins) and the compile's child process share the rest.
EAGER_SHARE = 0.5


def tune(request: TuneRequest) -> TuneResult:
    """Measure every variant and recommend one (module docstring), all within ``request.seconds``:
    the eager rounds end by their share of it, the bf16 check runs only where its estimated time
    fits what is left, and the compile is timed in a child process stopped at the deadline. Records
    the machine's load before and during. Leaves torch's thread count as it found it."""
    t0, before = time.perf_counter(), torch.get_num_threads()
    deadline = t0 + request.seconds
    load_before, others = load_average(), OthersMeter()
    try:
        variants = _eager_variants(request)
        # threads only change how a step runs: one model per (precision, layout)
        layouts = dict.fromkeys((v.precision, v.memory_format) for v in variants)
        models = {k: _Bench(request, *k, False) for k in layouts}
        benches = {v: models[v.precision, v.memory_format] for v in variants}
        timings = {v: Timing(v) for v in variants}
        skipped = alternate(request, benches, t0 + request.seconds * (EAGER_SHARE if request.compile else 1.0), timings)
        phases = {"eager steps": time.perf_counter() - t0}
        variants = [v for v in variants if v not in skipped]
        for v in skipped:
            del timings[v]
        ranked = sorted(variants, key=lambda v: -timings[v].median)
        winner, reasons, check = ranked[0], [f"fastest eager step: {ranked[0].name}"], None
        if skipped:
            reasons.insert(0, f"not timed, --seconds ran out first: {', '.join(v.name for v in skipped)}")
        if winner.precision == "bf16":
            mark = time.perf_counter()
            winner, check = _bf16(request, winner, ranked, timings, deadline, reasons)
            phases["bf16 check"] = time.perf_counter() - mark
        if request.compile:
            mark = time.perf_counter()
            winner = _try_compile(request, winner, timings, reasons, deadline)
            phases["compile"] = time.perf_counter() - mark
        return TuneResult(
            list(timings.values()),
            winner,
            _rule_variant(request.device),
            reasons,
            check,
            time.perf_counter() - t0,
            {k: round(v, 1) for k, v in phases.items()},
            Load(load_before, others.cores(), usable_cores()),
        )
    finally:
        torch.set_num_threads(before)


def _bf16(
    request: TuneRequest,
    winner: Variant,
    ranked: list[Variant],
    timings: dict[Variant, Timing],
    deadline: float,
    reasons: list[str],
) -> tuple[Variant, dict[str, Any] | None]:
    """bf16 wins only if its check passes, and the check runs only where it fits before the
    deadline (its steps estimated from the winner's); otherwise the fastest fp32 variant wins."""
    need = 2 * request.check_epochs * _check_images() / timings[winner].median  # both precisions
    left = deadline - time.perf_counter()
    if need > left:
        fp32 = next((v for v in ranked if v.precision == "fp32"), winner)
        reasons.append(
            f"bf16 check not run: about {need:.0f} s of training, and --seconds leaves {max(0.0, left):.0f} s; "
            f"bf16 is not recommended unchecked: the fastest fp32 variant, {fp32.name}"
        )
        return fp32, None
    check = _check_bf16(request, winner)
    reasons.append(f"bf16 check {check['verdict']}")
    if not check["passed"]:
        winner = next((v for v in ranked if v.precision == "fp32"), winner)
        reasons.append(f"bf16 does not train as well here: the fastest fp32 variant, {winner.name}")
    return winner, check


def _check_images() -> int:
    """Images one epoch of the bf16 check passes through the model: its dataset's training and test sets."""
    ds = load_dataset(CHECK_DATASET)
    return len(ds.train_y) + len(ds.test_y)


def _compile_job(request: TuneRequest, winner: Variant, seconds: float) -> dict[str, Any]:
    """What the child process times (:mod:`.tune_compile`): the model, the variant, its seconds."""
    return {
        "arch": request.arch.to_dict(),
        "device": str(request.device),
        "batch_size": request.batch_size,
        "rounds": request.rounds,
        "variant": dataclasses.asdict(winner),
        "seconds": seconds,
    }


def _try_compile(
    request: TuneRequest, winner: Variant, timings: dict[Variant, Timing], reasons: list[str], deadline: float
) -> Variant:
    """Time the winner compiled against itself eager, in a child process (``tune_compile``) that
    must finish by the deadline; the compiled variant when it pays back (:func:`compile_pays`),
    else the winner. A compile the time left cannot hold is not timed and not recommended."""
    autotune.check_compile(request.device)
    compiled = dataclasses.replace(winner, compile=True)
    left = deadline - time.perf_counter()
    request.say(f"compiling {winner.name} (torch.compile, in a child process; {max(0.0, left):.0f} s left)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "filter_templates.training.tune_compile"],
            input=json.dumps(_compile_job(request, winner, max(0.0, left) * 0.9)),
            capture_output=True,
            text=True,
            timeout=max(1.0, left),
            check=False,
        )
    except subprocess.TimeoutExpired:
        reasons.append(
            f"compile: not timed: compiling {winner.name} did not finish in the {max(0.0, left):.0f} s --seconds "
            "left (a first compile fills inductor's cache, so a later tune compiles faster); not recommended"
        )
        return winner
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        reasons.append(f"compile: not timed: the child process failed ({last}); not recommended")
        return winner
    got = json.loads(done.stdout)
    if not got["compiled"]["rounds"] or not got["eager"]["rounds"]:
        reasons.append(f"compile: not timed: the child process timed no steps of {winner.name}; not recommended")
        return winner
    again = {
        v: Timing(v, list(got[k]["rounds"]), got[k]["compile_s"], int(got[k]["rounds_steps"]))
        for k, v in (("eager", winner), ("compiled", compiled))
    }
    timings[compiled] = again[compiled]
    eager_s = request.batch_size / again[winner].median
    compiled_s = request.batch_size / again[compiled].median
    compile_s = again[compiled].compile_s or 0.0
    pays = compile_pays(compile_s, eager_s, compiled_s, request.batch_size)
    saved = PAYBACK_EPOCHS * (PAYBACK_IMAGES / request.batch_size) * (eager_s - compiled_s)
    reasons.append(
        f"compile: {compile_s:.1f} s to compile, step {compiled_s * 1000:.0f} ms vs {eager_s * 1000:.0f} ms "
        f"eager; a {PAYBACK_EPOCHS}-epoch run of {PAYBACK_IMAGES:,} images saves {saved:.0f} s: "
        + ("it pays" if pays else "it does not pay")
    )
    return compiled if pays else winner


def _rule_variant(device: torch.device) -> Variant:
    """What a run gets without a profile, for the table's comparison."""
    precision, memory_format, _ = autotune.rule(device)
    threads = autotune.threads_for(device)[0] if device.type == "cpu" else torch.get_num_threads()
    return Variant(precision, memory_format, threads)


def describe_machine(device: torch.device) -> str:
    """This machine as a profile key names it."""
    key = machine_profile.machine_key(device)
    return f"{key['device']}, {key['cores']} cores, torch {key['torch']}"
