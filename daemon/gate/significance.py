"""Paired significance tests over queries, for the gate and the benchmarks that measure it.

Test: the paired sign-flip randomization test of the mean per-query difference, one-sided.
Why this one: it needs no distributional assumption (per-query IR differences are discrete, skewed and
mostly zero), it is exact under the null that the two systems are exchangeable on every query, and
it is the test IR evaluation recommends for comparing two systems on the same queries (Smucker, Allan &
Carterette, CIKM 2007). With at most ``EXACT_MAX`` non-zero differences every sign vector is enumerated;
beyond that ``samples`` seeded random sign vectors are drawn, so a decision is reproducible.
Shifted hypotheses (H0: mean <= shift) are tested on ``d - shift``: the location-shift inversion of the
same test, used for the guard's regression margin.
Sample size: the normal approximation n = ((z_{1-a} + z_{power}) * sd / effect)^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EXACT_MAX = 16


@dataclass(frozen=True)
class PairedTest:
    """One one-sided test of H0: mean(d) <= shift, over ``n`` queries."""

    n: int
    mean: float
    sd: float
    shift: float
    p_value: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": round(self.mean, 4), "sd": round(self.sd, 4), "shift": self.shift,
                "p_value": round(self.p_value, 4)}


def sign_flip_test(d: np.ndarray, shift: float = 0.0, samples: int = 10_000, seed: int = 0) -> PairedTest:
    """One-sided paired randomization test of H0: mean(d) <= shift against H1: mean(d) > shift.

    Args:
        d: per-query differences (candidate minus serving, or serving minus candidate for a regression).
        shift: the margin the mean must exceed.
        samples: random sign vectors when there are more than ``EXACT_MAX`` non-zero differences.
        seed: seed of those sign vectors.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return PairedTest(0, 0.0, 0.0, shift, 1.0)
    x = d - shift
    x = x[np.abs(x) > 1e-12]  # a zero keeps its value under any sign: it cannot move the statistic
    observed = x.sum()
    if len(x) == 0:
        p = 1.0
    elif len(x) <= EXACT_MAX:
        bits = (np.arange(2 ** len(x))[:, None] >> np.arange(len(x))) & 1
        p = float(np.mean((1 - 2 * bits) @ x >= observed - 1e-9))
    else:  # sign = 1 - 2*bit, so the flipped sum is sum(x) - 2 * bits @ x; random bytes give 8 bits a draw
        rng = np.random.default_rng(seed)
        bits = np.unpackbits(rng.integers(0, 256, size=(samples, (len(x) + 7) // 8), dtype=np.uint8), axis=1)
        flipped = observed - 2 * (bits[:, : len(x)].astype(np.float32) @ x.astype(np.float32))
        p = float((1 + np.sum(flipped >= observed - 1e-6)) / (samples + 1))
    return PairedTest(n, float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0, shift, p)


def queries_needed(effect: float, sd: float, alpha: float, power: float = 0.8) -> int | None:
    """Queries a paired one-sided test at level ``alpha`` needs to detect ``effect`` with ``power``.

    None when the effect is not positive (no sample size makes a non-gain significant).
    """
    if effect <= 0:
        return None
    if sd <= 0:
        return 1
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return int(np.ceil((z * sd / effect) ** 2))


@dataclass(frozen=True)
class PairedDifference:
    """Two systems on the same queries: the mean per-query difference a - b, its bootstrap interval, and the
    queries each system won (for a 0/1 metric such as hit@k: the discordant pairs)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    wins: int
    losses: int
    p_two_sided: float

    def needed(self, alpha: float = 0.05, power: float = 0.8) -> int | None:
        """Queries a one-sided paired test would need to show a lead of this size (None: no lead)."""
        return queries_needed(abs(self.mean), self.sd, alpha, power) if self.mean else None

    def describe(self) -> str:
        need = self.needed()
        return (f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({self.wins} won, {self.losses} lost, "
                f"p = {self.p_two_sided:.2f}" + (f"; a lead this size needs ~{need} queries to show" if need else "")
                + ")")


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95, samples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """a - b over the same queries: percentile bootstrap interval of the mean (queries resampled with
    replacement, seeded), and the two-sided sign-flip p of H0 "no difference" (twice the smaller one-sided p).
    What a benchmark reports when it says one system is ahead of another, so that a lead of one or two
    questions reads as what it is."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return PairedDifference(0, 0.0, 0.0, 0.0, 0.0, 0, 0, 1.0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p = min(1.0, 2 * min(sign_flip_test(d, seed=seed).p_value, sign_flip_test(-d, seed=seed).p_value))
    return PairedDifference(n, float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0, float(low), float(high), int(np.sum(d > 1e-12)),
                            int(np.sum(d < -1e-12)), p)
