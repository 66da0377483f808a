"""The test tools themselves: `assert_close`'s rule, `relative_error`, `oracle_and_reference`,
and the NaN poisoning installed by conftest.py."""

from __future__ import annotations

import pytest
import torch

from adaspa import reference
from adaspa.testing import assert_close, oracle_and_reference, relative_error

INF = float("inf")


def test_bound_is_ratio_times_reference_error_plus_floor():
    oracle = torch.tensor([0.0, 10.0], dtype=torch.float64)
    reference_ = torch.tensor([0.0, 10.01], dtype=torch.float64)  # reference error 0.01
    floor = 1e-5 * 10.0
    assert_close(torch.tensor([0.0, 10.0 + 0.02 + floor * 0.9], dtype=torch.float64), oracle, reference_)
    message = r"^out: max\|actual - oracle\| = 0\.02011 > bound 0\.0201 \(= 2\.0 \* reference error 0\.01"
    with pytest.raises(AssertionError, match=message):
        assert_close(torch.tensor([0.0, 10.0 + 0.02 + floor * 1.1], dtype=torch.float64), oracle, reference_,
                     name="out")
    assert_close(torch.tensor([0.0, 10.03]), oracle, reference_, ratio=3.0)


def test_without_reference_only_the_floor():
    oracle = torch.tensor([0.5], dtype=torch.float64)
    assert_close(torch.tensor([0.5 + 9e-6], dtype=torch.float64), oracle)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([0.5 + 1.1e-5], dtype=torch.float64), oracle)


@pytest.mark.parametrize("where", ["actual", "oracle", "reference"])
def test_nan_anywhere_fails(where):
    tensors = {key: torch.tensor([1.0, 2.0]) for key in ("actual", "oracle", "reference")}
    tensors[where][1] = float("nan")
    with pytest.raises(AssertionError, match=rf"{where} has 1 NaN entries"):
        assert_close(tensors["actual"], tensors["oracle"], tensors["reference"])


def test_infinities_must_match():
    oracle = torch.tensor([-INF, 1.0])
    assert_close(torch.tensor([-INF, 1.0]), oracle, torch.tensor([-INF, 1.0]))
    for bad in ([0.0, 1.0], [INF, 1.0], [-INF, -INF]):
        with pytest.raises(AssertionError, match=r"disagree on infinities"):
            assert_close(torch.tensor(bad), oracle)
    with pytest.raises(AssertionError, match=r"reference and oracle disagree on infinities"):
        assert_close(torch.tensor([-INF, 1.0]), oracle, torch.tensor([-1e30, 1.0]))


def test_shape_mismatch_fails():
    with pytest.raises(AssertionError, match=r"actual has shape \(3,\), oracle has \(2,\)"):
        assert_close(torch.zeros(3), torch.zeros(2))


def test_relative_error():
    assert relative_error(torch.tensor([2.0, -4.0]), torch.tensor([2.0, -5.0])) == pytest.approx(0.2)
    assert relative_error(torch.tensor([-INF, 1.5]), torch.tensor([-INF, 1.0])) == pytest.approx(0.5)
    assert relative_error(torch.tensor([0.25]), torch.zeros(1)) == pytest.approx(0.25)


def test_oracle_and_reference_upcasts_only_floating_tensors():
    q = torch.randn(1, 1, 40, 16, dtype=torch.float16)
    lse = torch.zeros(1, 1, 40)
    calls = []

    def spy(q, lse, *, block_size):
        calls.append((q.dtype, lse.dtype, block_size))
        return q

    oracle, ref = oracle_and_reference(spy, q, lse, block_size=16)
    assert calls == [(torch.float64, torch.float64, 16), (torch.float16, torch.float32, 16)]
    assert oracle.dtype == torch.float64 and ref is q
    (o_out, _), (r_out, _) = oracle_and_reference(reference.attention, q, q, q)
    assert o_out.dtype == torch.float64 and r_out.dtype == torch.float16


def test_empty_is_poisoned_for_floating_dtypes_only():
    assert bool(torch.isnan(torch.empty(2, 3)).all())
    assert bool(torch.isnan(torch.empty_like(torch.zeros(4, dtype=torch.bfloat16))).all())
    assert torch.empty(3, dtype=torch.int32).dtype == torch.int32
