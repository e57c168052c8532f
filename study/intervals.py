"""Confidence intervals over the study's two sources of variance: seeds and questions.

Every score of `study seeds` is a seeds x questions matrix (dev F1 or EM of one arm, per seed
and per question), and a comparison of two arms is the matrix of their paired differences:
the same seed (data order, head init, dropout) and the same question in both arms. Both
factors are samples, of training runs and of questions, so an interval must carry both.

The model is the two-way crossed random-effects model
    x[s, q] = mu + a[s] + b[q] + e[s, q],
with seed effects a ~ (0, var_seed), question effects b ~ (0, var_question) and an
interaction/residual e ~ (0, var_residual). The mean of the matrix estimates mu with variance
    var_seed / S + var_question / Q + var_residual / (S Q),
which the ANOVA mean squares estimate without bias as (MS_seed + MS_question - MS_residual)
/ (S Q). The interval is Student-t with Satterthwaite's degrees of freedom, which fall to
S - 1 when seed variance dominates: with 3 to 5 seeds that is what keeps the interval honest.

Why not a two-level percentile bootstrap (resample seeds, then questions): with S seeds there
are only a handful of distinct seed resamples, the bootstrap variance of a mean is (S - 1) / S
of the true one and its tails are normal, not t with S - 1 degrees of freedom. `simulate`
measures it: at 3 seeds it excludes a true zero far more often than 5% of the time
(reports/bench.json, section `intervals`; tests/test_intervals.py). The question-only
bootstrap the study used before (seeds averaged first) is measured the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLED = ("seeds", "questions")
DESCRIPTION = ("seeds and questions are both treated as random (two-way crossed random "
               "effects: variance components from the ANOVA mean squares, Student-t with "
               "Satterthwaite's degrees of freedom); a paired difference uses the same seeds "
               "and the same questions in both arms")


@dataclass(frozen=True)
class Interval:
    estimate: float
    ci95: tuple[float, float]
    se: float
    df: float
    seeds: int
    questions: int
    resampled: tuple[str, ...] = RESAMPLED

    @property
    def half_width(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / 2

    def excludes_zero(self) -> bool:
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95"], d["resampled"] = list(self.ci95), list(self.resampled)
        d["half_width"] = self.half_width
        return d


def _matrix(x) -> np.ndarray:
    m = np.asarray(x, dtype=float)
    if m.ndim != 2 or min(m.shape) < 1:
        raise ValueError(f"a seeds x questions matrix is needed, got shape {m.shape}")
    return m


def mean_squares(x) -> tuple[float, float, float]:
    """(MS_seed, MS_question, MS_residual) of a seeds x questions matrix, one value a cell."""
    m = _matrix(x)
    s, q = m.shape
    grand = m.mean()
    rows, cols = m.mean(axis=1), m.mean(axis=0)
    ms_seed = q * float(((rows - grand) ** 2).sum()) / (s - 1) if s > 1 else 0.0
    ms_q = s * float(((cols - grand) ** 2).sum()) / (q - 1) if q > 1 else 0.0
    resid = m - rows[:, None] - cols[None, :] + grand
    dof = (s - 1) * (q - 1)
    ms_resid = float((resid ** 2).sum()) / dof if dof else 0.0
    return ms_seed, ms_q, ms_resid


def crossed(x, level: float = LEVEL) -> Interval:
    """Interval for the mean of a seeds x questions matrix, seeds and questions random."""
    m = _matrix(x)
    s, q = m.shape
    if s < 2:
        raise ValueError("seed variance needs at least 2 seeds")
    ms_s, ms_q, ms_e = mean_squares(m)
    # Unbiased combination; it can dip below what seeds or questions alone imply when the
    # residual is large by chance, so it is floored there (never narrower than either factor).
    combo = max(ms_s + ms_q - ms_e, ms_s, ms_q)
    var = combo / (s * q)
    denom = ms_s ** 2 / (s - 1) + ms_q ** 2 / (q - 1) + ms_e ** 2 / ((s - 1) * (q - 1))
    df = combo ** 2 / denom if denom > 0 else float(s - 1)
    df = float(min(max(df, s - 1), (s - 1) + (q - 1)))  # Satterthwaite, within its bounds
    se = math.sqrt(var)
    t = float(stats.t.ppf(0.5 + level / 2, df))
    est = float(m.mean())
    return Interval(est, (est - t * se, est + t * se), se, df, s, q)


def paired(a, b, level: float = LEVEL) -> Interval:
    """Interval for mean(b - a): rows are the same seeds, columns the same questions."""
    a, b = _matrix(a), _matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds and questions: {a.shape} vs {b.shape}")
    return crossed(b - a, level)


def ratio(num, den, level: float = LEVEL) -> Interval:
    """Interval for mean(num) / mean(den) (the gap recovered), by the delta method on the
    same crossed model: the linearised matrix (num - r den) / mean(den) has the ratio's
    variance."""
    num, den = _matrix(num), _matrix(den)
    r = float(num.mean() / den.mean())
    lin = crossed((num - r * den) / den.mean(), level)
    t = float(stats.t.ppf(0.5 + level / 2, lin.df))
    return Interval(r, (r - t * lin.se, r + t * lin.se), lin.se, lin.df, lin.seeds,
                    lin.questions)


def seed_t(x, level: float = LEVEL) -> Interval:
    """The check beside it: a t-interval over the per-seed means (questions held fixed)."""
    m = _matrix(x)
    per_seed = m.mean(axis=1)
    s = len(per_seed)
    est = float(per_seed.mean())
    se = float(per_seed.std(ddof=1)) / math.sqrt(s) if s > 1 else 0.0
    t = float(stats.t.ppf(0.5 + level / 2, max(s - 1, 1)))
    return Interval(est, (est - t * se, est + t * se), se, float(s - 1), s, m.shape[1],
                    ("seeds",))


def question_bootstrap(x, samples: int = 2000, seed: int = 0, level: float = LEVEL) -> Interval:
    """The study's former interval: seeds averaged first, then questions resampled (percentile
    bootstrap). Kept to measure it, not to report with."""
    m = _matrix(x)
    per_q = m.mean(axis=0)
    rng = np.random.default_rng(seed)
    means = per_q[rng.integers(0, len(per_q), size=(samples, len(per_q)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(per_q.mean()), (float(lo), float(hi)), float(means.std(ddof=1)),
                    math.inf, m.shape[0], m.shape[1], ("questions",))


def two_level_bootstrap(x, samples: int = 2000, seed: int = 0, level: float = LEVEL) -> Interval:
    """Resample seeds, then questions, with replacement (percentile). Measured, not reported
    with: with few seeds it is too narrow (module docstring)."""
    m = _matrix(x)
    s, q = m.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, s, size=(samples, s))
    cols = rng.integers(0, q, size=(samples, q))
    # mean over the resampled grid = mean over resampled rows of the row sums at the
    # resampled columns; done per sample to keep memory at S x Q.
    means = np.array([m[np.ix_(r, c)].mean() for r, c in zip(rows, cols)])
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(m.mean()), (float(lo), float(hi)), float(means.std(ddof=1)),
                    math.inf, s, q)


METHODS: dict[str, Callable[..., Interval]] = {
    "crossed_t": crossed, "seed_t": seed_t, "question_bootstrap": question_bootstrap,
    "two_level_bootstrap": two_level_bootstrap}


# --------------------------------------------------------------------------- simulation
def simulated_study(rng: np.random.Generator, seeds: int, questions: int, effect: float,
                    sd_seed: float, sd_question: float, sd_residual: float,
                    residual: str = "normal") -> np.ndarray:
    """A seeds x questions matrix of paired differences with a known mean `effect`.
    `residual="flips"`: per-question differences of F1 are mostly 0 with rare +-100 flips
    (one arm answers, the other does not), the shape real per-question F1 differences have."""
    if residual == "flips":
        p = sd_residual ** 2 / (2 * 100.0 ** 2)
        e = rng.choice([-100.0, 0.0, 100.0], size=(seeds, questions), p=[p, 1 - 2 * p, p])
    else:
        e = rng.normal(0, sd_residual, (seeds, questions))
    return (effect + rng.normal(0, sd_seed, (seeds, 1))
            + rng.normal(0, sd_question, (1, questions)) + e)


def simulate(method: str, *, studies: int = 500, seeds: int = 3, questions: int = 334,
             effect: float = 0.0, sd_seed: float = 2.0, sd_question: float = 15.0,
             sd_residual: float = 20.0, residual: str = "normal", rng_seed: int = 0,
             bootstrap_samples: int = 400) -> dict:
    """Run `method` on `studies` simulated studies: how often its interval excludes 0 and how
    often it covers the true effect."""
    rng = np.random.default_rng(rng_seed)
    fn = METHODS[method]
    kw = {"samples": bootstrap_samples} if "bootstrap" in method else {}
    excl = cover = 0
    widths = []
    for _ in range(studies):
        iv = fn(simulated_study(rng, seeds, questions, effect, sd_seed, sd_question,
                                sd_residual, residual), **kw)
        excl += iv.excludes_zero()
        cover += iv.ci95[0] <= effect <= iv.ci95[1]
        widths.append(iv.half_width)
    return {"method": method, "studies": studies, "seeds": seeds, "questions": questions,
            "effect": effect, "sd_seed": sd_seed, "sd_question": sd_question,
            "sd_residual": sd_residual, "residual": residual, "excludes_zero": excl / studies,
            "coverage": cover / studies, "mean_half_width": float(np.mean(widths))}
