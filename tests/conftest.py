"""Shared test setup."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs torch on one thread: the models here are tiny, and on a 2-core machine shared
    with other work two OpenMP threads wait on each other (measured: up to 10-20x slower). The
    subprocess tests pass --threads 1 too, so in-process and subprocess runs match bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def measurement_cache(tmp_path_factory):
    """The measured precision/layout/thread choices of this test session go to a temporary cache,
    not the user's ~/.cache (tests that exercise the cache point it elsewhere themselves)."""
    from filter_templates import autotune

    path = tmp_path_factory.mktemp("autotune") / autotune.CACHE_FILE
    real = autotune.cache_path
    autotune.cache_path = lambda: path
    yield
    autotune.cache_path = real
