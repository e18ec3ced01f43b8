"""`dlwt doctor`'s all-reduce check launched for real: torchrun runs dlwt.doctor's worker on 2 gloo ranks (the
NCCL check on a GPU node takes the same path), and a failure comes back as the error's line."""
import pytest

from dlwt.doctor import _allreduce_check


@pytest.mark.timeout(300)
def test_two_gloo_ranks_all_reduce_through_torchrun():
    assert _allreduce_check(2, "gloo") is None


@pytest.mark.timeout(300)
def test_a_failed_all_reduce_names_the_error():
    problem = _allreduce_check(2, "nosuchbackend")
    assert problem and "nosuchbackend" in problem
