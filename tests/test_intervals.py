"""Intervals over seeds and questions (study.intervals), checked by simulation before they
are trusted: simulated studies (seeds x questions matrices with known seed, question and
residual variance and a known effect), >= 500 each."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from study import intervals
from study.seeds import COMPARISONS, summarise

# The scenario: seed SD 2 F1, 334 dev questions; per-question F1 differences spread
# like the study's (question SD 15, residual SD 25).
SCENARIO = dict(questions=334, sd_seed=2.0, sd_question=15.0, sd_residual=25.0)
STUDIES = 500


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("residual", ["normal", "flips"])
def test_with_no_true_difference_the_interval_excludes_zero_at_most_7_percent(seeds, residual):
    sim = intervals.simulate("crossed_t", studies=STUDIES, seeds=seeds, effect=0.0,
                             residual=residual, rng_seed=seeds, **SCENARIO)
    assert sim["excludes_zero"] <= 0.07, sim
    assert sim["coverage"] >= 0.93, sim


def test_a_true_difference_of_twice_the_seed_sd_is_found_in_most_studies_at_five_seeds():
    sim = intervals.simulate("crossed_t", studies=STUDIES, seeds=5, effect=4.0, rng_seed=7,
                             **SCENARIO)
    assert sim["excludes_zero"] > 0.6, sim
    assert sim["coverage"] >= 0.93, sim


def test_with_seed_variance_dominant_the_interval_stays_calibrated_at_three_seeds():
    sim = intervals.simulate("crossed_t", studies=STUDIES, seeds=3, effect=0.0, questions=334,
                             sd_seed=4.0, sd_question=5.0, sd_residual=10.0, rng_seed=3)
    assert sim["excludes_zero"] <= 0.07, sim


def test_the_former_question_only_interval_is_too_narrow():
    # Seeds averaged first, then questions resampled: seed variance never enters, so with no
    # true difference it excludes 0 far more often than 5% (why it was replaced).
    sim = intervals.simulate("question_bootstrap", studies=STUDIES, seeds=3, effect=0.0,
                             rng_seed=11, bootstrap_samples=200, **SCENARIO)
    assert sim["excludes_zero"] > 0.12, sim


def test_without_question_or_residual_variance_it_is_the_t_interval_over_seeds():
    per_seed = np.array([1.0, 4.0, 2.5, 3.0])
    x = np.repeat(per_seed[:, None], 50, axis=1)
    iv, check = intervals.crossed(x), intervals.seed_t(x)
    assert iv.df == pytest.approx(3.0)
    assert iv.ci95 == pytest.approx(check.ci95)
    t = stats.t.ppf(0.975, 3)
    assert iv.half_width == pytest.approx(t * per_seed.std(ddof=1) / 2)


def test_mean_squares_recover_known_components():
    rng = np.random.default_rng(0)
    ms_s, ms_q, ms_e = intervals.mean_squares(
        intervals.simulated_study(rng, 40, 400, 0.0, 3.0, 10.0, 5.0))
    assert (ms_s - ms_e) / 400 == pytest.approx(9.0, rel=0.5)
    assert (ms_q - ms_e) / 40 == pytest.approx(100.0, rel=0.25)
    assert ms_e == pytest.approx(25.0, rel=0.1)


def test_the_paired_interval_uses_the_same_seeds_and_questions_for_both_arms():
    rng = np.random.default_rng(1)
    # A large seed effect and a large question effect shared by both arms: pairing by seed
    # and by question cancels them, leaving a tight interval around the true +1.
    shared = rng.normal(0, 10, (5, 1)) + rng.normal(0, 30, (1, 200))
    a = shared + rng.normal(0, 1, (5, 200))
    b = shared + 1.0 + rng.normal(0, 1, (5, 200))
    iv = intervals.paired(a, b)
    assert iv.ci95[0] < 1.0 < iv.ci95[1] and iv.half_width < 0.5
    assert iv.ci95 == intervals.crossed(b - a).ci95
    # The same rows in another seed order are no longer paired: the interval blows up.
    assert intervals.paired(a, b[::-1]).half_width > 10 * iv.half_width
    with pytest.raises(ValueError, match="same seeds and questions"):
        intervals.paired(a, b[:, :100])


def test_gap_recovered_is_a_ratio_with_its_own_interval():
    rng = np.random.default_rng(2)
    den = 20 + rng.normal(0, 5, (4, 300))
    iv = intervals.ratio(0.5 * den * 100, den)  # exactly half the gap in every cell
    assert iv.estimate == pytest.approx(50.0)
    assert iv.half_width == pytest.approx(0.0, abs=1e-9)
    noisy = intervals.ratio((0.5 * den + rng.normal(0, 5, den.shape)) * 100, den)
    assert noisy.ci95[0] < 50 < noisy.ci95[1]


def test_one_seed_has_no_seed_variance_to_estimate():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        intervals.crossed(np.zeros((1, 10)))


# --------------------------------------------------------------------- the seeds document
def _runs(seeds, questions=60, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    out = {}
    for arm, p in (("baseline", 0.2), ("authors", 0.35), ("distilled", 0.4)):
        out[arm] = {}
        for s in seeds:
            f1 = (rng.random(questions) < p) * 100.0
            out[arm][str(s)] = {"exact_match": f1.mean(), "f1": f1.mean(),
                                "mlflow_run_id": f"{arm}-{s}", "per_question_em": list(f1),
                                "per_question_f1": list(f1)}
    return out


SETTINGS = {"baseline": None, "authors": {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5},
            "distilled": {"temperature": 9.0, "alpha_ce": 0.9, "alpha_squad": 0.2}}


def test_seeds_document_records_which_seeds_and_questions_each_number_used():
    runs = _runs([1, 2, 3])
    doc = summarise(runs, SETTINGS, 4, SETTINGS["distilled"], np.full(60, 70.0), 200, 0)
    assert doc["seeds"] == [1, 2, 3] and doc["method"] == intervals.DESCRIPTION
    for name, (a, b) in COMPARISONS.items():
        d = doc["paired"][name]
        assert d["seeds"] == [1, 2, 3] and d["questions"] == 60
        assert d["resampled"] == ["seeds", "questions"]
        # per-seed differences pair seed s of one arm with seed s of the other
        want = [np.mean(runs[b][str(s)]["per_question_f1"]) - np.mean(runs[a][str(s)]["per_question_f1"])
                for s in (1, 2, 3)]
        assert d["per_seed"] == pytest.approx(want)
        assert d["ci95"][0] <= d["f1_diff"] <= d["ci95"][1]
        assert d["calibration"]["studies"] == 1000
    assert set(doc["gap_recovered"]) == {"authors", "distilled"}
    # Two more seeds pool with the three recorded ones: the same numbers for seeds 1-3.
    more = _runs([4, 5], rng_seed=9)
    pooled = {arm: {**runs[arm], **more[arm]} for arm in runs}
    doc5 = summarise(pooled, SETTINGS, 4, SETTINGS["distilled"], np.full(60, 70.0), 200, 0)
    assert doc5["seeds"] == [1, 2, 3, 4, 5]
    assert doc5["baseline"]["f1"][:3] == doc["baseline"]["f1"]
    assert doc5["paired"]["distilled_minus_baseline"]["seeds"] == [1, 2, 3, 4, 5]
