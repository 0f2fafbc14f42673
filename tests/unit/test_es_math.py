"""Seed schedule, reward shaping and the update `tell` computes, against hand-computed values."""

import math

import pytest

from engines.variant import UpdateOptions
from esvllm.es import SHAPINGS, centered_rank, member_seeds, tell, zscore


def coefficients(rewards, alpha, shaping="zscore"):
    """The update's coefficients as production computes them (tell), seeds 100, 101, ..."""
    pairs, options = tell(rewards, list(range(100, 100 + len(rewards))), alpha, shaping=shaping)
    assert [s for s, _ in pairs] == list(range(100, 100 + len(rewards)))
    assert options == UpdateOptions() and options.to_log() == {}  # the paper's plain step, logged as {}
    return [c for _, c in pairs]


def test_zscore_matches_hand_computed_values():
    # rewards 1, 2, 3: mean 2, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert zscore([1.0, 2.0, 3.0]) == pytest.approx([-1 / s, 0.0, 1 / s])


def test_all_equal_rewards_give_a_zero_update_not_nan():
    assert coefficients([0.5, 0.5, 0.5, 0.5], alpha=0.1) == [0.0, 0.0, 0.0, 0.0]


def test_coefficients_are_alpha_over_n_times_z():
    # rewards 0, 1 -> z = -1, +1; alpha/N = 0.001/2
    assert coefficients([0.0, 1.0], alpha=0.001) == pytest.approx([-0.0005, 0.0005])


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


def test_centered_ranks_span_minus_half_to_half_and_ties_share_their_mean_rank():
    assert centered_rank([10.0, -3.0, 7.0]) == pytest.approx([0.5, -0.5, 0.0])
    # 1 < 2 = 2 < 5: ranks 0, 1.5, 1.5, 3 over N-1 = 3
    assert centered_rank([2.0, 5.0, 1.0, 2.0]) == pytest.approx([0.0, 0.5, -0.5, 0.0])


@pytest.mark.parametrize("shaping", sorted(SHAPINGS))
def test_every_shaping_is_zero_mean_order_preserving_and_deterministic(shaping):
    import random

    rewards = [random.Random(i).uniform(-3, 3) for i in range(9)] + [0.5, 0.5]
    shaped = SHAPINGS[shaping](rewards)
    assert sum(shaped) == pytest.approx(0.0, abs=1e-12)
    for i in range(len(rewards)):
        for j in range(len(rewards)):
            if rewards[i] < rewards[j]:
                assert shaped[i] < shaped[j]
            if rewards[i] == rewards[j]:
                assert shaped[i] == shaped[j]
    assert SHAPINGS[shaping](list(reversed(rewards))) == pytest.approx(list(reversed(shaped)), abs=1e-12)
    assert coefficients(rewards, 0.1, shaping) == pytest.approx([0.1 / 11 * f for f in shaped])


def test_an_unknown_shaping_is_named():
    with pytest.raises(ValueError, match="'ranks'"):
        coefficients([1.0, 2.0], 0.1, "ranks")
