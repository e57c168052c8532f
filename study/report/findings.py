"""The study's answers in plain sentences, from the paired seed differences.

Two questions: does distillation with the authors' setting beat the student trained with no
teacher, and does the searched setting beat the authors' own? A 95% CI that spans 0 is
reported as "no detectable difference", whatever the sign of the point estimate.
"""

from __future__ import annotations

from study.report.inputs import PairedBootstrap, SeedsDoc


def verdict(diff: PairedBootstrap, better: str, worse: str) -> str:
    lo, hi = diff.ci95
    if lo > 0:
        return better
    if hi < 0:
        return worse
    return "no detectable difference"


def _numbers(diff: PairedBootstrap, n_seeds: int) -> str:
    lo, hi = diff.ci95
    over = f" over the same {diff.questions} dev questions" if diff.questions else ""
    return (f"{diff.f1_diff:+.1f} dev F1 points (95% CI [{lo:+.1f}, {hi:+.1f}], paired{over}, "
            f"mean of {n_seeds} seeds)")


def _params(params: dict[str, float] | None) -> str:
    if not params:
        return ""
    names = {"temperature": "T", "alpha_ce": "α_ce", "alpha_squad": "α_squad",
             "learning_rate": "learning rate"}
    return " (" + ", ".join(f"{names.get(k, k)} = {v:.3g}" for k, v in sorted(params.items())) + ")"


def distillation_sentence(seeds: SeedsDoc) -> str:
    n = len(seeds.seeds)
    if seeds.authors is not None and "authors_minus_baseline" in seeds.paired:
        diff = seeds.paired["authors_minus_baseline"]
        answer = verdict(diff, "distillation helps", "distillation hurts")
        return (f"**Does distillation beat no teacher?** With the authors' setting"
                f"{_params(seeds.authors_params)}, the distilled student differs from the "
                f"baseline by {_numbers(diff, n)}: {answer}.")
    diff = seeds.paired["distilled_minus_baseline"]
    answer = verdict(diff, "distillation helps", "distillation hurts")
    return (f"**Does distillation beat no teacher?** With the searched setting (the authors' "
            f"setting was not re-trained over seeds in this file), the distilled student differs "
            f"from the baseline by {_numbers(diff, n)}: {answer}.")


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
            f"{_numbers(diff, len(seeds.seeds))}: {answer}.")


def findings(seeds: SeedsDoc | None) -> list[str]:
    if seeds is None:
        return ["Not answered yet: `study seeds` has not run, so there are no confidence "
                "intervals. Run it (the main job `study run` includes it)."]
    return [distillation_sentence(seeds), search_sentence(seeds)]
