#!/usr/bin/env python3
"""Time ONNX models in onnxruntime or OpenVINO, alternating, with nothing but the runtime and numpy.

One code for two uses: the package's latency runtimes (``filter_templates.method.runtimes``) open
and time models with these functions, and ``filter-templates probe`` copies this file beside the
ONNX models it writes, so that a target machine without PyTorch (a board, an edge box, a server)
times the same models the same way::

    python3 time_models.py --runtime onnxruntime --threads 1 [--batch 1] [--rounds 15]

reads ``manifest.json`` beside it and writes ``latency_table.json``, which ``fit --latency-table``
reads back on the machine that trains.

How a set of models is timed (:func:`time_alternating`): every model is warmed up and given a
block size (calls per block, so that a block lasts at least ``block_s``); then each round times
one block of every model in turn, the starting model rotating from round to round. A model's
latency is the median over rounds of its per-call time and its spread the inter-quartile range of
those rounds, so a burst of load from another process falls on every model alike and shows up as
spread instead of as a difference between models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ONNX_RUNTIMES = ("onnxruntime", "openvino")
MANIFEST = "manifest.json"
TABLE = "latency_table.json"
TABLE_FORMAT = "filter-templates latency table"
DEFAULT_ROUNDS = 9
BLOCK_S = 0.02  # seconds a timed block lasts at least: many calls of a fast model, one of a slow one
WARMUP_CALLS = 3


class MissingRuntime(Exception):
    """The runtime asked for is not installed."""


def _import(runtime: str) -> Any:
    try:
        if runtime == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import openvino

        return openvino
    except ImportError:
        raise MissingRuntime(runtime) from None


def runtime_version(runtime: str) -> str:
    """The installed version of ``runtime`` (raises :class:`MissingRuntime`)."""
    module = _import(runtime)
    return str(module.get_version() if runtime == "openvino" else module.__version__).split("-")[0]


def cuda_provider_available() -> bool:
    """Whether onnxruntime here has its CUDA execution provider (the onnxruntime-gpu build)."""
    return "CUDAExecutionProvider" in _import("onnxruntime").get_available_providers()


def open_model(
    runtime: str, model: bytes | str, shape: Sequence[int], threads: int, cuda: bool = False
) -> Callable[[], object]:
    """A no-argument call running ``model`` (ONNX bytes or a file path) once on a fixed input of
    ``shape`` (N, C, H, W) in ``runtime`` with ``threads`` intra-op threads: what is timed."""
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    if runtime == "onnxruntime":
        ort = _import(runtime)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if threads > 1:
            # Idle pool threads spin by default, and a model whose threads spin steals the cores of the one
            # timed next: MobileNet at 2 threads took 0.49 ms alone and 0.96 ms alternating. Not
            # spinning costs a wake-up per call (0.63 ms either way), so the figure is an upper bound.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        inference = ort.InferenceSession(model, options, providers=providers)
        feed = {inference.get_inputs()[0].name: x}
        return lambda: inference.run(None, feed)
    ov = _import(runtime)
    core = ov.Core()
    read = core.read_model(model)
    read.reshape(list(shape))  # a static shape: what a deployed latency-bound model compiles to
    compiled = core.compile_model(read, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    # The input is fed on every call, as a server feeds each request's (onnxruntime's run does too);
    # shared, not copied, as a server hands over an array it already holds.
    return lambda: request.infer({0: x}, share_inputs=True)


def time_alternating(
    calls: Sequence[Callable[[], object]], rounds: int = DEFAULT_ROUNDS, block_s: float = BLOCK_S
) -> list[tuple[float, float]]:
    """(median, spread) seconds per call of every call, timed alternately in ``rounds`` rounds
    (see the module docstring); the spread is the inter-quartile range over rounds."""
    reps = []
    for call in calls:
        for _ in range(WARMUP_CALLS):
            call()
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                call()
            took = time.perf_counter() - start
            if took >= block_s or n >= 1 << 16:
                break
            n = max(n * 2, int(n * block_s / max(took, 1e-9)) + 1)
        reps.append(n)
    per_call: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for j in range(len(calls)):
            i = (j + r) % len(calls)
            call, n = calls[i], reps[i]
            start = time.perf_counter()
            for _ in range(n):
                call()
            per_call[i].append((time.perf_counter() - start) / n)
    return [(statistics.median(t), _iqr(t)) for t in per_call]


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def machine() -> dict[str, Any]:
    """Where a timing was taken: the CPU's model name, its logical cores and the 1-minute load
    average when the timing ended (other processes' work, which only ever adds time)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": name, "cores": os.cpu_count(), "load": load}


def main(argv: Sequence[str] | None = None) -> int:
    """Time every model of the manifest beside this file; write the latency table."""
    p = argparse.ArgumentParser(description="Time the ONNX models of manifest.json; write latency_table.json.")
    p.add_argument("--runtime", required=True, choices=ONNX_RUNTIMES)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds (default: {DEFAULT_ROUNDS})")
    p.add_argument("--dir", default=str(Path(__file__).resolve().parent), help="where manifest.json is")
    p.add_argument("--out", default=None, help=f"the table to write (default: DIR/{TABLE})")
    args = p.parse_args(argv)
    if min(args.threads, args.batch, args.rounds) < 1:
        p.error("--threads, --batch and --rounds take positive integers")
    folder = Path(args.dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        version = runtime_version(args.runtime)
    except OSError as exc:
        print(f"time_models: cannot read {folder / MANIFEST}: {exc.strerror}", file=sys.stderr)
        return 2
    except MissingRuntime:
        print(f"time_models: {args.runtime} is not installed here (pip install {args.runtime})", file=sys.stderr)
        return 2
    size = int(manifest["image_size"])
    entries = manifest["entries"]
    files = {e["file"]: None for e in entries}  # a model two entries share is timed once
    calls = [open_model(args.runtime, str(folder / f), (args.batch, 3, size, size), args.threads) for f in files]
    print(f"timing {len(calls)} models in {args.runtime} {version}, {args.rounds} rounds", file=sys.stderr)
    timed = dict(zip(files, time_alternating(calls, args.rounds)))
    where = machine()
    table = {
        **{k: v for k, v in manifest.items() if k != "entries"},
        "format": TABLE_FORMAT,
        "runtime": args.runtime,
        "version": version,
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        **where,
        "entries": [{**e, "median_s": timed[e["file"]][0], "spread_s": timed[e["file"]][1]} for e in entries],
    }
    out = Path(args.out) if args.out else folder / TABLE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
