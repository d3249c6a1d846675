"""The drop in pass@1 between two runs, paired over the problems both scored: the drop, its 95%
interval, a two-sided p-value, and about how many problems would tell a drop of that size from
noise.

Which test, and why:
- One sample per problem in both runs: every problem is a pair of right/wrong outcomes, and the
  exact McNemar test (a binomial test on the problems whose outcome changed) is the exact test for
  paired binary outcomes, with no large-sample approximation, so it is as valid on 30 AIME
  problems as on 1,319 GSM8K ones. The interval is Newcombe's hybrid score interval for paired
  proportions (Statist. Med. 1998, 17:2635, method 10: Wilson intervals of both runs combined
  with their correlation), which keeps its coverage at small n and near 0% or 100%, where the
  Wald interval does not; it can disagree with the exact test only at the margin, and the gate
  decides by the test.
- k > 1 samples per problem: a problem's score is a fraction in [0, 1], which McNemar cannot
  take. The paired bootstrap resamples problems (the unit that is independent), which keeps the
  pairing of the two runs and the correlation of a problem's k samples; p is the percentile
  bootstrap's (the smallest level at which the interval excludes 0), so again the two agree.
  Resamples are seeded: the same two runs always give the same p.

The binomial is computed exactly in log space (scipy is not a dependency of the project)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 0.05
Z_ALPHA = 1.959963984540054    # two-sided 5%
Z_POWER = 0.8416212335729143   # 80% power
BOOTSTRAP_RESAMPLES = 10_000
MCNEMAR, BOOTSTRAP = "exact McNemar", "paired bootstrap"


@dataclass
class PairedDrop:
    n_problems: int          # problems both runs scored
    baseline: float          # pass@1 of the baseline on them
    current: float           # pass@1 of this run on them
    drop: float              # baseline - current (positive: this run is worse)
    low: float               # 95% interval of the drop
    high: float
    p_value: float           # two-sided, against "no difference"
    test: str                # MCNEMAR or BOOTSTRAP
    needed_problems: int | None  # problems for 80% power to find a drop this size at 5%

    def as_dict(self) -> dict:
        return asdict(self)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k), summed from the upper tail so that tiny tails keep their precision."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.fsum(math.exp(_log_pmf(i, n, p)) for i in range(k, n + 1)))


def binomial_test(k: int, n: int) -> float:
    """Two-sided exact p-value of k successes in n trials against p = 1/2 (the distribution is
    symmetric, so doubling the smaller tail equals summing every outcome as unlikely as k)."""
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * min(binom_cdf(k, n, 0.5), binom_sf(k, n, 0.5)))


def wilson(k: int, n: int, z: float = Z_ALPHA) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n."""
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(both: int, worse: int, better: int, neither: int) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired outcomes: `both` right in both runs, `worse` right only
    in the first, `better` right only in the second, `neither` right in neither."""
    n = both + worse + better + neither
    p1, p2 = (both + worse) / n, (both + better) / n
    l1, u1 = wilson(both + worse, n)
    l2, u2 = wilson(both + better, n)
    spread = (both + worse) * (better + neither) * (both + better) * (worse + neither)
    cross = both * neither - worse * better
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(spread) if spread else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_drop(baseline: list[bool], current: list[bool]) -> PairedDrop:
    """One right/wrong outcome per problem in each run, in the same problem order."""
    n = len(baseline)
    both = sum(1 for a, b in zip(baseline, current) if a and b)
    worse = sum(1 for a, b in zip(baseline, current) if a and not b)
    better = sum(1 for a, b in zip(baseline, current) if b and not a)
    changed = worse + better
    drop = (worse - better) / n
    low, high = newcombe_paired(both, worse, better, n - both - changed)
    needed = None
    if drop > 0:
        discordant = changed / n  # Connor (1987): problems for a paired test of this power
        needed = math.ceil((Z_ALPHA * math.sqrt(discordant) + Z_POWER * math.sqrt(max(0.0, discordant - drop ** 2)))
                           ** 2 / drop ** 2)
    return PairedDrop(n, sum(baseline) / n, sum(current) / n, drop, low, high,
                      binomial_test(worse, changed), MCNEMAR, needed)


def bootstrap_drop(baseline: list[float], current: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> PairedDrop:
    """Per-problem pass@1 (the mean over its samples) in each run, in the same problem order."""
    diffs = np.asarray(baseline, dtype=np.float64) - np.asarray(current, dtype=np.float64)
    n = len(diffs)
    drop = float(diffs.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bounded memory at any number of problems
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means[start:start + rows] = diffs[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    low, high = (float(x) for x in np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)]))
    tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p_value = min(1.0, 2.0 * (tail + 1) / (resamples + 1))
    needed = None
    if drop > 0 and n > 1:
        needed = math.ceil(((Z_ALPHA + Z_POWER) * float(diffs.std(ddof=1)) / drop) ** 2)
    return PairedDrop(n, float(np.mean(baseline)), float(np.mean(current)), drop, low, high, p_value,
                      BOOTSTRAP, needed)


def paired_drop(baseline: dict[str, list[bool]], current: dict[str, list[bool]]) -> PairedDrop | None:
    """The drop over the problems both runs hold, each given as problem id -> the correctness of
    its samples; None when they share no problem."""
    shared = [pid for pid in baseline if pid in current and baseline[pid] and current[pid]]
    if not shared:
        return None
    if all(len(baseline[pid]) == 1 and len(current[pid]) == 1 for pid in shared):
        return mcnemar_drop([bool(baseline[pid][0]) for pid in shared], [bool(current[pid][0]) for pid in shared])
    mean = lambda xs: sum(map(float, xs)) / len(xs)  # noqa: E731
    return bootstrap_drop([mean(baseline[pid]) for pid in shared], [mean(current[pid]) for pid in shared])
