"""Shared test setup."""

from __future__ import annotations

import importlib
import os

import pytest

from filter_templates.cli import COMMANDS

# The CLI imports a command's module when the command is first given. Imported here, once, so that
# no module binds a name (``from ..measure import resources``) while a test has it monkeypatched:
# a module first imported under a patch would keep the patched function for every later test.
for _name in COMMANDS:
    importlib.import_module(f"filter_templates.cli.{_name}_cmd")


@pytest.fixture(autouse=True, scope="session")
def own_config_dir(tmp_path_factory):
    """No test reads the developer's own machine profile (``training.profile``): the user's config
    directory is an empty folder of the suite's, for every test and the subprocesses they start."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every test runs torch on one thread: the models here are tiny, and on a 2-core machine shared
    with other work two OpenMP threads wait on each other (measured: up to 10-20x slower). The
    subprocess tests pass --threads 1 too, so in-process and subprocess runs match bit for bit;
    ``$OMP_NUM_THREADS`` makes the CLI's thread rule (``autotune.threads_for``) say 1 as well."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def quick_latency():
    """The latency a run records (``measure.resources``) timed for 5-10 ms instead of 0.1-1 s: the
    tests check that it is measured and recorded, not its precision (``test_measure`` calls
    ``measure.latency`` itself, with its own times). Runs in subprocesses keep the real timing."""
    from filter_templates.method import measure

    real = measure._latency_fn
    measure._latency_fn = lambda *a, **kw: real(*a, **{**kw, "min_run_time": 0.005, "max_run_time": 0.01})
    yield
    measure._latency_fn = real
