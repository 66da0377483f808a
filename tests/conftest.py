"""Shared test setup: NaN-poisoned allocations, hypothesis profiles, the `gpu` marker.

- Every test runs with `torch.empty` / `torch.empty_like` returning NaN-filled
  floating tensors, so an output a kernel forgets to write fails `assert_close`
  instead of passing on leftover memory that happened to be right.
- Hypothesis profiles: "ci" (default; 25 derandomized examples so CI is
  reproducible) and "gpu" (200 examples), chosen by the env var HYPOTHESIS_PROFILE.
- Tests marked `@pytest.mark.gpu` are skipped when CUDA is unavailable.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "gpu",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _nan_filled(allocate):
    @functools.wraps(allocate)
    def wrapper(*args, **kwargs):
        out = allocate(*args, **kwargs)
        if out.is_floating_point() or out.is_complex():
            out.fill_(float("nan"))
        return out

    return wrapper


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Make `torch.empty` and `torch.empty_like` return NaN for floating dtypes during the test."""
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for tests of many small tensors (doc examples, the tiny DiT): on a
    busy 2-core machine a second thread mostly contends, 2-9x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device() -> str:
    """"cuda" when a GPU is present, else "cpu" (kernels then run under TRITON_INTERPRET=1)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
