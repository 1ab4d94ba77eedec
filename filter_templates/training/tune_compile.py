"""``tune``'s compile timing, in a child process it can stop at its deadline.

A first ``torch.compile`` can take minutes (inductor builds C++ from a cold cache) and cannot be
interrupted in the process that called it, so ``tune`` runs this module as a plain
``python -m filter_templates.training.tune_compile`` subprocess (not ``multiprocessing``: spawn
would re-run the caller's ``__main__``): a JSON job on stdin (``tune._compile_job``: the model,
the variant, the seconds it may take), the timings as JSON on stdout. ``tune`` kills it when its ``--seconds`` run out.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from filter_templates.method.arch import Arch
from filter_templates.training.tune import Timing, TuneRequest, Variant, alternate, bench

__all__ = ["main"]


def main() -> int:
    doc = json.load(sys.stdin)
    until = time.perf_counter() + float(doc["seconds"])
    request = TuneRequest(
        Arch.from_dict(doc["arch"]), torch.device(doc["device"]), int(doc["batch_size"]), rounds=int(doc["rounds"])
    )
    eager = Variant(**doc["variant"])
    compiled = dataclasses.replace(eager, compile=True)
    pair = {v: bench(request, v) for v in (eager, compiled)}
    timings = {v: Timing(v) for v in pair}
    alternate(dataclasses.replace(request, rounds=max(2, request.rounds)), pair, until, timings, every=True)
    json.dump(
        {"eager": dataclasses.asdict(timings[eager]), "compiled": dataclasses.asdict(timings[compiled])}, sys.stdout
    )
    return 0


if __name__ == "__main__":  # pragma: no cover - run by tune as a subprocess
    sys.exit(main())
