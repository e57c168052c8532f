"""The seeds stage's confidence interval of a mean (Student's t, from scipy)."""

from __future__ import annotations

import math

import pytest

from study.seeds import mean_ci


def test_three_seeds_use_t_with_two_degrees_of_freedom():
    mean, (lo, hi) = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    # t_{0.975, 2} = 4.303; sd = 1, n = 3.
    assert hi - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert mean - lo == pytest.approx(hi - mean)


def test_quantile_keeps_falling_past_thirty_seeds():
    # The old table stopped at 29 degrees of freedom (2.045); t_{0.975, 39} = 2.0227.
    values = [float(i % 5) for i in range(40)]
    mean, (lo, hi) = mean_ci(values)
    sd = (sum((v - mean) ** 2 for v in values) / 39) ** 0.5
    assert hi - mean == pytest.approx(2.0227 * sd / math.sqrt(40), rel=1e-4)


def test_one_value_has_an_empty_interval():
    assert mean_ci([5.0]) == (5.0, [5.0, 5.0])
