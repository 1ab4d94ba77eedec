"""Check a latency fit from outside: run `fit --budget latency=...` as a user would, then export
every chosen model and its next width step and time them independently in the runtime.

The fit's own timing (``deploy_timing``) is not reused: each model is exported as `export` writes
it (the file a user deploys), opened with the runtime's plain Python API, and timed by a loop of
its own (the two models of a template alternately, median of per-call times over repeats). A fit passes when the
chosen model is within 10% of the budget or under it and the next step up measures above 90% of it.
With ``--probe`` the same budget is also fitted against a latency table that `probe` wrote and
`time_models.py` timed on this machine, and again against the table of a second probe refined
around the budget (``probe --refine``); the widths are compared step by step with the direct fit's
(the refined table must agree within one step). With ``--busy N``
the first runtime's fit is run again beside N CPU-bound processes: it must give the same widths
within one step or refuse in one line naming the spread, never a silent answer further off.

    python benchmarks/latency_fit_check.py [--model vgg19] [--budget 1ms] [--runtimes onnxruntime openvino]
        [--threads 1] [--probe] [--busy 2] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from results_file import add_write_argument, write

from filter_templates.method.arch import make_arch
from filter_templates.method.latency_fit import step_of
from filter_templates.method.onnx_model import onnx_bytes

REPEATS = 15
MIN_BLOCK_S = 0.05


def cli(*args: str) -> dict[str, Any]:
    """One `filter-templates` command's JSON answer (its stderr passed through); a refusal ends the
    check with its line."""
    cmd = [sys.executable, "-m", "filter_templates", *args, "--json"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"FAIL: filter-templates {' '.join(args)} exited {done.returncode}")
    return json.loads(done.stdout)


def busy_fit(args: list[str], processes: int) -> dict[str, Any]:
    """The fit run beside ``processes`` CPU-bound processes: its JSON answer, or its refusal."""
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(2)  # let the load build
        cmd = [sys.executable, "-m", "filter_templates", *args, "--json"]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        for p in spin:
            p.kill()
    if done.returncode == 0:
        return {"answer": json.loads(done.stdout)}
    lines = done.stderr.strip().splitlines()
    return {"refused": lines[-1] if lines else "", "exit": done.returncode, "stderr_lines": len(lines)}


def steps_apart(a: float, b: float) -> int:
    return step_of(b) - step_of(a)


def deployed_call(runtime: str, onnx: bytes, image_size: int, threads: int) -> Callable[[], object]:
    """The runtime's plain Python API at batch 1: the model opened (OpenVINO: compiled at a static
    shape) and a call that feeds it an input and returns its outputs, as a user's server would."""
    x = np.random.default_rng(1).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        s = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda: s.run(None, {name: x})
    import openvino as ov

    core = ov.Core()
    m = core.read_model(onnx)
    m.reshape([1, 3, image_size, image_size])
    compiled = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return lambda: req.infer({0: x})


def time_pair(calls: list[Callable[[], object]]) -> list[float]:
    """Median per-call seconds of each call, the calls alternating block by block."""
    for c in calls:
        for _ in range(20):
            c()
    blocks = []
    for c in calls:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < MIN_BLOCK_S:
            c()
            n += 1
        blocks.append(n)
    per: list[list[float]] = [[] for _ in calls]
    for r in range(REPEATS):
        for i in range(len(calls)) if r % 2 == 0 else reversed(range(len(calls))):
            start = time.perf_counter()
            for _ in range(blocks[i]):
                calls[i]()
            per[i].append((time.perf_counter() - start) / blocks[i])
    return [statistics.median(p) for p in per]


def check(fitted: dict[str, Any], runtime: str, threads: int) -> list[dict[str, Any]]:
    """Every template's chosen model and next step, exported and timed here."""
    torch.set_num_threads(threads)
    budget, size, rows = fitted["budget"]["value"], fitted["image_size"], []
    for f in fitted["fits"]:
        models, widths = [], [f["width"]] + ([f["next_step"]["width"]] if f.get("next_step") else [])
        for w, filters in zip(widths, [f["filters"]] + ([f["next_step"]["filters"]] if f.get("next_step") else [])):
            arch = make_arch(fitted["model"], f["template"], w, 10)
            assert list(arch.filters) == list(filters), (f["template"], w, arch.filters, filters)
            torch.manual_seed(0)
            models.append(deployed_call(runtime, onnx_bytes(arch.build(), size), size, threads))
        times = time_pair(models)
        row = {
            "template": f["template"],
            "width": f["width"],
            "chosen_s": times[0],
            "fit_said_s": f["latency"]["median_s"],
        }
        row["chosen_ok"] = times[0] <= 1.1 * budget
        if len(times) > 1:
            row.update(next_width=widths[1], next_s=times[1], next_ok=times[1] > 0.9 * budget)
        rows.append(row)
        print(
            f"  {runtime:<11} {f['template']:<19} width {f['width']:<9g} {times[0] * 1e3:.3f} ms "
            f"({times[0] / budget:.0%} of budget, fit said {f['latency']['median_s'] * 1e3:.3f})"
            + (f"; next {widths[1]:g}: {times[1] * 1e3:.3f} ms ({times[1] / budget:.0%})" if len(times) > 1 else ""),
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg19")
    ap.add_argument("--budget", default="1ms", help="latency budget (default: 1ms)")
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe", action="store_true", help="also fit against a probe's latency table (first runtime)")
    ap.add_argument("--busy", type=int, default=0, help="also fit beside N CPU-bound processes (first runtime)")
    add_write_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ["fit", "--model", args.model, "--budget", f"latency={args.budget}", "--latency-batch", "1"]
    base += ["--threads", str(args.threads)]
    out: dict[str, Any] = {"budget": args.budget, "threads": args.threads, "load_before": os.getloadavg()[0]}
    direct: dict[str, dict[str, Any]] = {}
    for rt in args.runtimes:
        print(f"fit in {rt} ...", flush=True)
        direct[rt] = cli(*base, "--runtime", rt)
        # a fresh process per runtime, as a deployment has: one runtime's threads and placement
        # (onnxruntime's, say) would otherwise be the next one's conditions
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            out[rt] = pool.submit(check, direct[rt], rt, args.threads).result()
    if args.probe:
        rt = args.runtimes[0]
        with tempfile.TemporaryDirectory() as tmp:
            coarse, fine = Path(tmp) / "probe", Path(tmp) / "fine"
            timer = [sys.executable, "time_models.py", "--runtime", rt, "--threads", str(args.threads)]
            cli("probe", "--model", args.model, "--out", str(coarse))
            subprocess.run(timer, cwd=coarse, check=True)
            tables = {"table": cli(*base, "--latency-table", str(coarse / "latency_table.json"))}
            refine = ["--refine", str(coarse / "latency_table.json"), "--budget", f"latency={args.budget}"]
            cli("probe", "--model", args.model, *refine, "--out", str(fine))
            subprocess.run(timer, cwd=fine, check=True)
            tables["refined"] = cli(*base, "--latency-table", str(fine / "latency_table.json"))
        by = {k: {f["template"]: f["width"] for f in t["fits"]} for k, t in tables.items()}
        out["probe"] = [
            {"template": f["template"], "direct": f["width"]}
            | {k: by[k][f["template"]] for k in tables}
            | {f"{k}_steps_apart": steps_apart(f["width"], by[k][f["template"]]) for k in tables}
            for f in direct[rt]["fits"]
        ]
        for p in out["probe"]:
            print(
                f"  probe {rt}: {p['template']:<19} direct {p['direct']:g}, table {p['table']:g} "
                f"({p['table_steps_apart']:+d} steps), refined {p['refined']:g} ({p['refined_steps_apart']:+d} steps)"
            )
    if args.busy:
        rt = args.runtimes[0]
        got = busy_fit([*base, "--runtime", rt], args.busy)
        if "answer" in got:
            by = {f["template"]: f["width"] for f in got["answer"]["fits"]}
            got["steps_apart"] = {f["template"]: steps_apart(f["width"], by[f["template"]]) for f in direct[rt]["fits"]}
            got["spread_s"] = {f["template"]: f["latency"]["spread_s"] for f in got["answer"]["fits"]}
            print(f"  beside {args.busy} busy processes: steps from the quiet fit {got['steps_apart']}")
        else:
            print(f"  beside {args.busy} busy processes: refused (exit {got['exit']}): {got['refused']}")
        out["busy"] = {"processes": args.busy, **got}
    out["load_after"] = os.getloadavg()[0]
    passed = all(r["chosen_ok"] and r.get("next_ok", True) for rt in args.runtimes for r in out[rt])
    passed &= all(abs(p["refined_steps_apart"]) <= 1 for p in out.get("probe", []))
    if "busy" in out:  # within one step, or one line naming the spread with exit 2
        b = out["busy"]
        ok = (
            all(abs(v) <= 1 for v in b["steps_apart"].values())
            if "answer" in b
            else (b["exit"] == 2 and b["stderr_lines"] == 1 and "spread" in b["refused"])
        )
        passed &= ok
    print("PASS" if passed else "FAIL", f"(load {out['load_before']:.1f} -> {out['load_after']:.1f})")
    if args.write:
        rows = [
            [
                rt,
                r["template"],
                f"{r['width']:g}",
                f"{r['chosen_s'] * 1e3:.3f}",
                f"{r.get('next_width', '')}",
                f"{r['next_s'] * 1e3:.3f}" if "next_s" in r else "",
                "yes" if r["chosen_ok"] and r.get("next_ok", True) else "NO",
            ]
            for rt in args.runtimes
            for r in out[rt]
        ]
        write(
            args.write,
            "latency_fit_check",
            title=f"{args.model} fitted to latency={args.budget} in each runtime, checked by an independent export and timing",
            numbers={**out, "passed": passed},
            seeds=[],
            views="no data: random weights, one fixed random input",
            note=(
                f"Batch 1, {args.threads} thread(s). Chosen: the fit's model, exported as `export` writes it and timed here "
                f"(median of {REPEATS} alternating blocks); passes when within 10% of the budget or under it and the next "
                "width step (5% wider) measures above 90% of it."
                + (
                    " numbers.probe compares the direct fit with fits against a probe's latency table and against"
                    " the table of a probe refined around the budget."
                    if args.probe
                    else ""
                )
            ),
            table={
                "columns": ["runtime", "template", "width", "chosen (ms)", "next width", "next (ms)", "passes"],
                "rows": rows,
            },
        )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
