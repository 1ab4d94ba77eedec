"""The machine profile: how runs on this machine execute, as ``filter-templates tune`` measured it.

A profile is a small TOML file (default ``$XDG_CONFIG_HOME/filter-templates/profile.toml``, else
``~/.config/filter-templates/profile.toml``) with one ``[[machine]]`` table per machine it was
measured on. A table's key is what decides the speed of a setting and nothing the user chooses:
the device (:func:`device_name`: the GPU's name or the CPU's model), the cores this process may use
and the torch version. A run whose machine matches a table takes the table's precision, memory
format, threads and compile for every one of them the command does not give (see
:func:`autotune.choose`); a run on another machine, or with a file edited so no key matches, keeps
the rule and says so on one line. A home directory shared by several machines (a cluster's) holds
one table each: ``tune`` replaces its own machine's table and keeps the others.

The profile is a file, not a timing: the same command on the same machine with the same file
trains the same weights.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tomllib
import torch

from filter_templates.core import rundir
from filter_templates.core.device import device_name
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.training.autotune import Execution, usable_cores
from filter_templates.training.config import MEMORY_FORMATS, PRECISIONS, PROFILE_AUTO, PROFILE_OFF

__all__ = [
    "FILE_NAME",
    "Entry",
    "default_path",
    "machine_key",
    "resolve_path",
    "read",
    "check",
    "find",
    "write",
    "render",
]

FILE_NAME = "profile.toml"
KEY_FIELDS = ("device", "cores", "torch")
_REMEDY = "fix or delete it (`filter-templates tune` then writes a new one), or pass --no-profile"
_HEADER = (
    "# filter-templates machine profile, written by `filter-templates tune`.\n"
    "# A run on a machine matching a [[machine]] key (device, cores, torch) uses its precision,\n"
    "# memory_format, threads and compile for every setting the command does not give.\n"
)


@dataclass(frozen=True)
class Entry:
    """One machine's table: its key, its settings and what ``tune`` measured (kept as written)."""

    key: dict[str, Any]
    execution: Execution
    measured: dict[str, Any] = field(default_factory=dict)


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/filter-templates/profile.toml``, else ``~/.config/...``."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".config"
    return root / "filter-templates" / FILE_NAME


def resolve_path(profile: str) -> Path | None:
    """The file a ``TrainConfig.profile`` value names: ``auto`` the default one, ``off`` none."""
    if profile == PROFILE_OFF:
        return None
    return default_path() if profile == PROFILE_AUTO else Path(profile).expanduser()


def machine_key(device: torch.device) -> dict[str, Any]:
    """What a profile table must match to apply here."""
    return {"device": device_name(device), "cores": usable_cores(), "torch": torch.__version__}


def _entry(table: Any, where: str) -> Entry:
    if not isinstance(table, Mapping):
        raise UsageError(f"{where}: expected a table; {_REMEDY}")
    for name, kind in (
        ("device", str),
        ("cores", int),
        ("torch", str),
        ("precision", str),
        ("memory_format", str),
        ("threads", int),
        ("compile", bool),
    ):
        value = table.get(name)
        if not isinstance(value, kind) or (
            kind is int and (isinstance(value, bool) or (isinstance(value, int) and value < 1))
        ):
            raise UsageError(
                f"{where}: '{name}' must be {'a positive integer' if kind is int else kind.__name__}, "
                f"got {value!r}; {_REMEDY}"
            )
    for name, allowed in (("precision", PRECISIONS), ("memory_format", MEMORY_FORMATS)):
        if table[name] not in allowed:
            raise UsageError(f"{where}: '{name}' must be one of {', '.join(allowed)}, got {table[name]!r}; {_REMEDY}")
    measured = table.get("measured", {})
    if not isinstance(measured, Mapping):
        raise UsageError(f"{where}: 'measured' must be a table; {_REMEDY}")
    return Entry(
        {k: table[k] for k in KEY_FIELDS},
        Execution(table["precision"], table["memory_format"], table["threads"], table["compile"]),
        dict(measured),
    )


def read(path: str | os.PathLike[str]) -> list[Entry]:
    """Every table of the profile at ``path``; [] when there is no file. A file that is not a
    profile (not TOML, a table missing a key or holding a value no run could use) is a UsageError
    naming it: the user wrote or edited it, and guessing what it meant would run something else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"profile {path}: cannot be read ({getattr(exc, 'strerror', None) or exc}); {_REMEDY}"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"profile {path}: not valid TOML ({exc}); {_REMEDY}") from None
    tables = doc.get("machine", [])
    if not isinstance(tables, list) or set(doc) - {"machine"}:
        raise UsageError(f"profile {path}: expected only [[machine]] tables; {_REMEDY}")
    return [_entry(t, f"profile {path}, [[machine]] {i + 1}") for i, t in enumerate(tables)]


_SAID: set[tuple[str, str]] = set()  # (file, reason) lines already printed by this process


def check(profile: str = PROFILE_AUTO) -> list[Entry]:
    """The tables of the profile a ``TrainConfig.profile`` value names ([] for none or ``off``),
    refusing a corrupt file or a named one that does not exist: what a sweep asks once, before its
    runs (each of which would otherwise fail on it)."""
    path = resolve_path(profile)
    if path is None:
        return []
    if profile != PROFILE_AUTO and not path.is_file():
        raise UsageError(f"profile {path}: no such file (write one with `filter-templates tune --profile {path}`)")
    return read(path)


def find(device: torch.device, profile: str = PROFILE_AUTO) -> tuple[Execution, str] | None:
    """This machine's settings and the file they came from, or None (no profile, ``off``, or none
    of its tables is for this machine: then one line on stderr says so, once per process).
    ``profile``: a ``TrainConfig.profile`` value. A file named explicitly must exist."""
    path, entries = resolve_path(profile), check(profile)
    if path is None or not entries:
        return None
    key = machine_key(device)
    for entry in entries:
        if entry.key == key:
            return entry.execution, str(path)
    theirs = "; ".join(_describe(e.key) for e in entries)
    line = (
        f"profile {path} is for {theirs}, not this machine ({_describe(key)}): precision, memory format, "
        "threads and compile follow the rule (run `filter-templates tune` here to measure them)"
    )
    if (str(path), line) not in _SAID:
        _SAID.add((str(path), line))
        note(line)
    return None


def _describe(key: Mapping[str, Any]) -> str:
    return f"{key['device']}, {key['cores']} cores, torch {key['torch']}"


def write(path: str | os.PathLike[str], entry: Entry) -> Path:
    """Write ``entry`` into the profile at ``path`` (atomically), in place of the table with its
    key and beside the tables of other machines. A corrupt file is refused, not overwritten."""
    path = Path(path)
    others = [e for e in read(path) if e.key != entry.key]
    path.parent.mkdir(parents=True, exist_ok=True)
    return rundir.atomic_write_text(path, render([*others, entry]))


def render(entries: list[Entry]) -> str:
    """The TOML text of ``entries`` (strings, integers, floats and booleans only)."""
    parts = [_HEADER]
    for e in entries:
        ex = e.execution
        rows = {
            **e.key,
            "precision": ex.precision,
            "memory_format": ex.memory_format,
            "threads": ex.threads,
            "compile": ex.compile,
        }
        parts.append("\n[[machine]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in rows.items()))
        if e.measured:
            parts.append("[machine.measured]\n" + "".join(f"{_key(k)} = {_toml(v)}\n" for k, v in e.measured.items()))
    return "".join(parts)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    raise TypeError(f"a profile holds no {type(value).__name__}")


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)
