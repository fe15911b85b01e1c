"""The half-map check's staging (csrefine.halfsets): the rest of the sample is used only when
the first particles leave the direction undecided."""

from __future__ import annotations

import numpy as np

from csrefine.halfsets import (
    AS_GIVEN,
    OTHER_SPLIT,
    SAMPLE_FIRST,
    SWAPPED,
    Z_AT_ONCE,
    check_stages,
    sample_positions,
    staged_check,
)


def _statistics(shift: float, null_scale: float = 1.0, seed: int = 0):
    """d_i ~ N(shift, 1) (own noise in the own map: shift > 0), d0_i ~ N(0, null_scale), and a
    contrast statistic c_i that leaves the contrast as the maps'."""
    rng = np.random.default_rng(seed)
    calls = []

    def statistics(positions):
        calls.append(np.asarray(positions))
        return (rng.normal(shift, 1.0, positions.size),
                rng.normal(0.0, null_scale, positions.size), np.ones(positions.size))
    return statistics, calls


def test_stages_split_the_sample_without_overlap():
    positions = np.arange(50_000)
    first, rest = check_stages(positions)
    assert first.size == SAMPLE_FIRST and np.intersect1d(first, rest).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([first, rest])),
                                  sample_positions(positions))
    small_first, small_rest = check_stages(np.arange(60))
    assert small_first.size == 60 and small_rest.size == 0


def test_a_clear_direction_is_decided_on_the_first_particles():
    statistics, calls = _statistics(shift=5.0)  # z ~ 5 sqrt(100) = 50 >> Z_AT_ONCE
    check = staged_check(statistics, np.arange(50_000))
    assert check.verdict == AS_GIVEN and check.z > Z_AT_ONCE
    assert len(calls) == 1 and check.n_particles == SAMPLE_FIRST
    statistics, calls = _statistics(shift=-5.0)
    assert staged_check(statistics, np.arange(50_000)).verdict == SWAPPED and len(calls) == 1


def test_an_undecided_direction_uses_the_whole_sample():
    """z ~ 0 on the first stage: the whole sample measures the own-noise excess (here d's
    spread is twice the null's: another split)."""
    rng = np.random.default_rng(1)
    calls = []

    def statistics(positions):
        calls.append(positions)
        return (rng.normal(0.0, 2.0, positions.size), rng.normal(0.0, 1.0, positions.size),
                np.ones(positions.size))

    positions = np.arange(50_000)
    check = staged_check(statistics, positions)
    assert len(calls) == 2 and check.n_particles == sample_positions(positions).size
    assert check.verdict == OTHER_SPLIT and abs(check.z) < Z_AT_ONCE
