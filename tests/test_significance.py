"""The paired comparison the benchmarks report beside every "ahead of the script" claim."""

import numpy as np

from daemon.gate import paired_difference


def test_identical_systems_differ_by_nothing():
    a = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    d = paired_difference(a, a)
    assert (d.mean, d.low, d.high, d.wins, d.losses, d.p_two_sided) == (0.0, 0.0, 0.0, 0, 0, 1.0)


def test_a_one_question_lead_on_a_benchmark_is_not_significant_and_its_interval_spans_zero():
    rng = np.random.default_rng(1)
    b = (rng.random(231) < 0.72).astype(float)
    a = b.copy()
    flip = np.flatnonzero(a == 0)[:3]  # a wins 3 questions...
    a[flip] = 1
    lose = np.flatnonzero(b == 1)[:2]  # ...and loses 2: net +1 of 231
    a[lose] = 0
    d = paired_difference(a, b)
    assert (d.wins, d.losses) == (3, 2)
    assert abs(d.mean - 1 / 231) < 1e-12
    assert d.low < 0 < d.high
    assert d.p_two_sided > 0.5
    # at this spread, a one-question lead takes thousands of questions to show at 80% power
    assert d.needed() > 10 * 231


def test_a_consistent_gain_is_significant_and_its_interval_excludes_zero():
    rng = np.random.default_rng(2)
    b = (rng.random(200) < 0.6).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:30]] = 1  # 30 won, none lost
    d = paired_difference(a, b)
    assert d.wins == 30 and d.losses == 0
    assert 0 < d.low < d.mean == 30 / 200 < d.high
    assert d.p_two_sided < 0.001
    # antisymmetric: swapping the systems mirrors the interval and keeps p
    r = paired_difference(b, a)
    assert (r.wins, r.losses) == (0, 30) and abs(r.mean + d.mean) < 1e-12 and r.p_two_sided == d.p_two_sided
    assert "30 won, 0 lost" in d.describe()
