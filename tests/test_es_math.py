"""Seed schedule, reward shaping and update coefficients against hand-computed values."""

import math

import pytest

from esvllm.es import member_seeds, update_coefficients, zscore


def test_zscore_matches_hand_computed_values():
    # rewards 1, 2, 3: mean 2, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert zscore([1.0, 2.0, 3.0]) == pytest.approx([-1 / s, 0.0, 1 / s])


def test_all_equal_rewards_give_a_zero_update_not_nan():
    assert update_coefficients([0.5, 0.5, 0.5, 0.5], alpha=0.1) == [0.0, 0.0, 0.0, 0.0]


def test_coefficients_are_alpha_over_n_times_z():
    # rewards 0, 1 -> z = -1, +1; alpha/N = 0.001/2
    assert update_coefficients([0.0, 1.0], alpha=0.001) == pytest.approx([-0.0005, 0.0005])


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        zscore([1.0, math.nan])


def test_member_seeds_are_distinct_31_bit_and_recomputable():
    seeds = member_seeds(42, 7, 64)
    assert len(set(seeds)) == 64
    assert all(0 <= s < 2**31 for s in seeds)
    assert seeds == member_seeds(42, 7, 64)
    assert max(seeds) > 2**30  # drawn over the full range, not small integers
    assert set(seeds).isdisjoint(member_seeds(42, 8, 64))
    assert set(seeds).isdisjoint(member_seeds(43, 7, 64))
