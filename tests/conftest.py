"""Shared test setup."""

from __future__ import annotations

import pytest


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
