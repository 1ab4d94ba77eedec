"""One results file per measurement: the JSON every benchmark writes with ``--write docs/results/``.

A figure in the README or under ``docs/`` is only as good as the record behind it: which machine
(CPU model, AMX or not, GPU), how many threads, which torch, when, the exact command, the numbers,
how many seeds and which views (split, image count) they stand on. Every benchmark writes that
record through :func:`write`, so the files share one layout and ``benchmarks/render_results.py``
can render ``docs/measurements.md`` and the README's short tables from them alone.

Use from a benchmark::

    from results_file import add_write_argument, write   # benchmarks/ is on sys.path when run as a script

    add_write_argument(parser)
    ...
    if args.write:
        write(args.write, "throughput", title="Training throughput", numbers=report,
              seeds=[0], views="CIFAR-10 train, first 10000 images",
              table={"columns": ["variant", "img/s"], "rows": [["ours", 812.0], ...]})

The module does not import ``filter_templates``: it records the machine the way any script
could, so a results file means the same whoever wrote it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

__all__ = ["SCHEMA", "add_write_argument", "machine", "command_line", "record", "write", "read"]

SCHEMA = 1
REQUIRED = ("schema", "name", "title", "date", "command", "machine", "seeds", "views", "numbers")
MACHINE_KEYS = ("cpu", "amx", "gpu", "cpus", "threads", "torch", "python", "system")


def add_write_argument(parser: argparse.ArgumentParser) -> None:
    """The one ``--write DIR`` flag every benchmark takes (the JSON lands in ``DIR/<name>.json``)."""
    parser.add_argument(
        "--write",
        metavar="DIR",
        default=None,
        help="also write the result as DIR/<name>.json (docs/results/ for the published figures)",
    )


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (Linux); elsewhere what ``platform`` knows."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "cpu", flags


def machine() -> dict[str, Any]:
    """What the figures were measured on. AMX matters because bf16 and channels_last only pay off
    on CPUs that have it; the thread count because the same CPU gives different images/s under it;
    the load average because a timing taken beside other jobs is slower than on a free machine."""
    cpu, flags = _cpuinfo()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "amx": "amx_tile" in flags,
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed: ``python benchmarks/x.py ...`` for a script, the program name otherwise."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        script = Path(argv[0]).resolve()
        try:
            shown = str(script.relative_to(Path.cwd()))
        except ValueError:
            shown = str(Path(argv[0]))
        return shlex.join(["python", shown, *argv[1:]])
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def _check_table(table: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    if table is None:
        return None
    columns, rows = list(table["columns"]), [list(r) for r in table["rows"]]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"table row {row!r} has {len(row)} cells for {len(columns)} columns")
    return {"columns": columns, "rows": rows}


def record(
    name: str,
    *,
    title: str,
    numbers: Mapping[str, Any],
    seeds: Iterable[int],
    views: str,
    table: Optional[Mapping[str, Any]] = None,
    note: str = "",
    command: Optional[str] = None,
) -> dict[str, Any]:
    """The results record (not yet written). ``numbers`` is everything measured, ``table`` the
    few columns a reader needs (rendered as-is), ``note`` one or two sentences on what the
    figure means; ``seeds`` and ``views`` say what each number stands on."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"results name {name!r} must be a plain file stem")
    return {
        "schema": SCHEMA,
        "name": name,
        "title": title,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else command_line(),
        "machine": machine(),
        "seeds": [int(s) for s in seeds],
        "views": views,
        "note": note,
        "table": _check_table(table),
        "numbers": dict(numbers),
    }


def write(directory: str | os.PathLike, name: str, **fields: Any) -> Path:
    """Write :func:`record` as ``directory/<name>.json`` (atomically: a crash leaves the old file)
    and return the path. Fields are those of :func:`record`."""
    data = record(name, **fields)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A results file, checked for the fields every page relies on."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED if k not in data]
    missing += [f"machine.{k}" for k in MACHINE_KEYS if k not in data.get("machine", {})]
    if missing:
        raise ValueError(f"{path}: results file lacks {', '.join(missing)}")
    return data
