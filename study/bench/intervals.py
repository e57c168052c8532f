"""`study bench --intervals`: each interval method of study/intervals.py on simulated studies
(known variance components, known effect): how often it excludes 0 with no true difference,
and with one, at 3 and 5 seeds; into reports/bench.json `intervals`."""

from __future__ import annotations

from study.bench.common import write_section
from study.config import Config


INTERVAL_SCENARIOS = {
    # The scenario: seed SD 2 F1 and 334 questions, per-question differences spread
    # like the study's own (question SD 15, residual SD 25).
    "questions_matter": dict(sd_seed=2.0, sd_question=15.0, sd_residual=25.0),
    # Seed variance dominant, where a resampling of few seeds is too narrow.
    "seeds_dominate": dict(sd_seed=4.0, sd_question=5.0, sd_residual=10.0),
}


def run(cfg: Config, studies: int = 500) -> dict:
    """Each interval method on simulated studies (known components, known effect): how often
    it excludes 0 with no true difference (target <= 7%) and with a true difference of twice
    the seed SD, at 3 and 5 seeds and 334 questions, into reports/bench.json `intervals`."""
    from study import intervals

    rows = []
    for scenario, sd in INTERVAL_SCENARIOS.items():
        for seeds in (3, 5):
            for method in intervals.METHODS:
                for effect in (0.0, 2 * sd["sd_seed"]):
                    r = intervals.simulate(method, studies=studies, seeds=seeds, effect=effect,
                                           questions=334, rng_seed=seeds, bootstrap_samples=200,
                                           **sd)
                    rows.append({"scenario": scenario, **r})
                    print(f"{scenario} {seeds} seeds {method} effect {effect}: excludes 0 in "
                          f"{r['excludes_zero']:.1%}, covers in {r['coverage']:.1%}", flush=True)
    return write_section(cfg, "intervals", {
        "studies": studies, "level": intervals.LEVEL, "reported_method": "crossed_t",
        "target_excludes_zero_null_at_most": 0.07, "results": rows})

