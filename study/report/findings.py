"""The study's answers in plain sentences, from the paired seed differences.

Two questions: does distillation with the authors' setting beat the student trained with no
teacher, and does the searched setting beat the authors' own? The words follow the 95% CI,
never the point estimate: a CI that spans 0 is "no detectable difference", given with the
smallest difference the study could have detected (the CI's half-width). A CI that resampled
questions alone (a file written before seeds were resampled) says so.
"""

from __future__ import annotations

from study.report.inputs import PairedDifference, SeedsDoc


def verdict(diff: PairedDifference, better: str, worse: str) -> str:
    lo, hi = diff.ci95
    if lo > 0:
        return better
    if hi < 0:
        return worse
    return "no detectable difference"


def resampled_words(diff: PairedDifference) -> str:
    if "seeds" in diff.resampled:
        seeds = diff.seeds or []
        return (f"seeds ({', '.join(map(str, seeds))}) and the same {diff.questions} dev "
                f"questions both resampled")
    return ("dev questions resampled with the per-question F1 averaged over seeds; seed "
            "variance is NOT in this interval, so it is too narrow")


def half_width(diff: PairedDifference) -> float:
    return diff.half_width if diff.half_width is not None else (diff.ci95[1] - diff.ci95[0]) / 2


def _numbers(diff: PairedDifference) -> str:
    lo, hi = diff.ci95
    return (f"{diff.f1_diff:+.1f} dev F1 points (95% CI [{lo:+.1f}, {hi:+.1f}], paired; "
            f"{resampled_words(diff)})")


def _detectable(diff: PairedDifference, answer: str) -> str:
    if answer != "no detectable difference":
        return ""
    return (f" This study could not have detected a difference smaller than about "
            f"±{half_width(diff):.1f} F1 points (the interval's half-width); more seeds "
            f"(`study seeds --add N`) would narrow it.")


def _params(params: dict[str, float] | None) -> str:
    if not params:
        return ""
    names = {"temperature": "T", "alpha_ce": "α_ce", "alpha_squad": "α_squad",
             "learning_rate": "learning rate"}
    return " (" + ", ".join(f"{names.get(k, k)} = {v:.3g}" for k, v in sorted(params.items())) + ")"


def distillation_sentence(seeds: SeedsDoc) -> str:
    if seeds.authors is not None and "authors_minus_baseline" in seeds.paired:
        diff = seeds.paired["authors_minus_baseline"]
        setting = f"With the authors' setting{_params(seeds.authors_params)}"
    else:
        diff = seeds.paired["distilled_minus_baseline"]
        setting = ("With the searched setting (the authors' setting was not re-trained over "
                   "seeds in this file)")
    answer = verdict(diff, "distillation helps", "distillation hurts")
    return (f"**Does distillation beat no teacher?** {setting}, the distilled student differs "
            f"from the baseline by {_numbers(diff)}: {answer}.{_detectable(diff, answer)}")


def search_sentence(seeds: SeedsDoc) -> str:
    diff = seeds.paired.get("distilled_minus_authors")
    if seeds.authors is None or diff is None:
        return ("**Does the searched setting beat the authors'?** Not answered: this seeds.json "
                "has no authors' arm (re-run `study seeds`).")
    if seeds.params is not None and seeds.params == seeds.authors_params:
        return ("**Does the searched setting beat the authors'?** The search's best trial is the "
                "authors' setting itself, so the search found nothing better: no detectable "
                "difference.")
    answer = verdict(diff, "the search found a better setting",
                     "the searched setting is worse on dev than the authors'")
    return (f"**Does the searched setting beat the authors'?** The searched best"
            f"{_params(seeds.params)} differs from the authors' setting by "
            f"{_numbers(diff)}: {answer}.{_detectable(diff, answer)}")


def findings(seeds: SeedsDoc | None) -> list[str]:
    if seeds is None:
        return ["Not answered yet: `study seeds` has not run, so there are no confidence "
                "intervals. Run it (the main job `study run` includes it)."]
    return [distillation_sentence(seeds), search_sentence(seeds)]
