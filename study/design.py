"""What makes a study one experiment.

- The authors' setting (T = 2, alpha_ce = alpha_squad = 0.5, the defaults of the authors'
  `run_squad_w_distillation.py`) is the first trial of every new study, so the history, the
  figures and the `seeds` comparison always contain the reference point.
- The fixed settings (everything the search does not vary: data, models, layers, training
  recipe, seed) are recorded with the study when it is created. A later session or worker
  whose settings differ is refused, so the trials of one study are always comparable and
  `best`/`seeds` re-create the winner under the settings it was found with.
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from study.config import Config
from study.errors import StudyError

AUTHORS = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
ARM_ATTR = "arm"
FIXED_ATTR = "fixed_settings"
SEARCH_ATTR = "search_settings"  # how the study's first session sampled and pruned
# Sections that define what a trial trains on and how; `search`, `seeds`, `tracking` and
# `runtime` say how the study is run, not what a trial is.
FIXED_SECTIONS = ("seed", "data", "teacher", "student", "distill", "eval")


def authors_params(cfg: Config) -> dict[str, float]:
    """The authors' trial in this study's parameter space."""
    params = dict(AUTHORS)
    if cfg.search.learning_rate is not None:
        params["learning_rate"] = cfg.student.train.learning_rate
    return params


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, sub in value.items():
        out.update(_flatten(sub, f"{prefix}.{key}" if prefix else key))
    return out


def fixed_settings(cfg: Config) -> dict[str, Any]:
    """Dotted key -> value for every setting a trial depends on but the search does not vary."""
    # Through JSON, as the study stores it: tuples become lists, so both compare equal.
    full = json.loads(json.dumps(cfg.to_dict()))
    flat = _flatten({k: full[k] for k in FIXED_SECTIONS})
    varied = {f"distill.{k}" for k in AUTHORS}
    if cfg.search.learning_rate is not None:
        varied.add("student.train.learning_rate")
    return {k: v for k, v in sorted(flat.items()) if k not in varied}


def check_fixed_settings(study: optuna.Study, cfg: Config) -> None:
    """Refuse to add to (or read winners from) a study made under other fixed settings."""
    recorded = study.user_attrs.get(FIXED_ATTR)
    if recorded is None:
        return
    current = fixed_settings(cfg)
    differ = sorted(k for k in recorded.keys() | current.keys()
                    if recorded.get(k) != current.get(k))
    if differ:
        shown = "; ".join(f"{k}: {recorded.get(k)!r} in the study, {current.get(k)!r} now"
                          for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise StudyError(f"study {study.study_name!r} was created with other fixed settings: "
                         f"{shown}{more}; start a new study with --study-name NAME")


def initialise(study: optuna.Study, cfg: Config) -> bool:
    """Give a new study its fixed settings and its first trial, the authors' setting.

    Returns True if it did. The caller holds the storage's schema lock, so two workers that
    open a new study together do not both enqueue the reference trial.
    """
    if study.user_attrs.get(FIXED_ATTR) is not None:
        return False
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(authors_params(cfg), user_attrs={ARM_ATTR: "authors"})
    study.set_user_attr(FIXED_ATTR, fixed_settings(cfg))
    study.set_user_attr(SEARCH_ATTR, search_settings(cfg))
    return True


def search_settings(cfg: Config) -> dict[str, Any]:
    """What decides which configurations a seeded search visits and where it stops them."""
    s = cfg.search
    return {"sampler_seed": s.sampler_seed, "n_startup_trials": s.n_startup_trials,
            "pruner": s.pruner, "pruner_warmup_rounds": s.pruner_warmup_rounds}
