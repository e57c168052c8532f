"""What makes a study one experiment.

- The authors' setting (T = 2, alpha_ce = alpha_squad = 0.5, the defaults of the authors'
  `run_squad_w_distillation.py`) is the first trial of every new study, so the history, the
  figures and the `seeds` comparison always contain the reference point.
- The fixed settings (everything the search does not vary: data, models, layers, training
  recipe, seed, a trial's thread count), the search settings (sampler seed, batch, pruner)
  and the code (a fingerprint of the modules the `search` stage runs) are recorded with the
  study when it is created. A study is what they made: a later session or worker whose
  settings or code differ is refused (`study search --n-trials`, `best`, `seeds`), and the
  pipeline's `search` stage starts the study anew (study.search), so what `dvc repro`
  produces is a function of the code, params and data alone, never of a checkout's history.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import optuna

from study.config import Config
from study.errors import StudyError

AUTHORS = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
ARM_ATTR = "arm"
# A configuration's place in the study (0: the authors' setting) and its batch (slot //
# search.batch): what decides its sampled params and what its pruner compares it with. A
# configuration re-run after an interruption keeps both.
SLOT_ATTR = "slot"
BATCH_ATTR = "batch"
FIXED_ATTR = "fixed_settings"
SEARCH_ATTR = "search_settings"  # how the study samples, batches and prunes
CODE_ATTR = "code"  # the fingerprint of SEARCH_CODE the study's trials were trained by
# Sections that define what a trial trains on and how; `search`, `seeds`, `tracking` and
# `runtime` say how the study is run, not what a trial is -- except a trial's thread count,
# which changes the low bits of its numbers.
FIXED_SECTIONS = ("seed", "data", "teacher", "student", "distill", "eval")
FIXED_KEYS = ("runtime.process_threads",)
# The `study/` modules the search stage runs: its code deps in dvc.yaml (tests/test_design.py
# checks they agree; tests/test_dvc_reads.py that dvc.yaml lists what the stage runs).
SEARCH_CODE = ("search.py", "design.py", "parallel.py", "qa.py", "distill.py", "loss.py",
               "teacher_logits.py", "teacher.py", "fit.py", "windows.py", "results.py",
               "trainer.py", "modeling.py", "postprocess.py", "metric.py", "data.py", "files.py",
               "layout.py", "tracking.py", "storage.py")


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
    flat.update({k: _flatten(full)[k] for k in FIXED_KEYS})
    return {k: v for k, v in sorted(flat.items()) if k not in varied}


def search_settings(cfg: Config) -> dict[str, Any]:
    """What decides which configurations a seeded search visits and where it stops them."""
    s = cfg.search
    return {"sampler_seed": s.sampler_seed, "n_startup_trials": s.n_startup_trials,
            "pruner": s.pruner, "pruner_warmup_rounds": s.pruner_warmup_rounds,
            "batch": s.batch}


def code_fingerprint(names: tuple[str, ...] = SEARCH_CODE) -> str:
    """SHA-256 of `names` (modules of the package: the search stage's by default), as this
    checkout holds them."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _differences(recorded: dict | None, current: dict) -> list[str]:
    if recorded is None:
        return []
    return [f"{k}: {recorded.get(k)!r} in the study, {current.get(k)!r} now"
            for k in sorted(recorded.keys() | current.keys()) if recorded.get(k) != current.get(k)]


def differences(study: optuna.Study, cfg: Config, search: bool = True) -> list[str]:
    """What the study was made with that the config and code no longer say: fixed settings,
    code and (with `search`) search settings, one readable item each."""
    attrs = study.user_attrs
    out = _differences(attrs.get(FIXED_ATTR), fixed_settings(cfg))
    if FIXED_ATTR in attrs and attrs.get(CODE_ATTR) != code_fingerprint():
        out.append(f"code: fingerprint {attrs.get(CODE_ATTR)} in the study, "
                   f"{code_fingerprint()} now (study/{', study/'.join(SEARCH_CODE[:3])}, ...)")
    if search:
        out += [f"search.{d}" for d in _differences(attrs.get(SEARCH_ATTR), search_settings(cfg))]
    return out


def refusal(study: optuna.Study, differ: list[str], hint: str) -> StudyError:
    shown = "; ".join(differ[:4])
    more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
    return StudyError(f"study {study.study_name!r} was made with other settings or code: "
                      f"{shown}{more}; {hint}")


def check_fixed_settings(study: optuna.Study, cfg: Config) -> None:
    """Refuse to read winners from (or add to) a study whose trials were trained under other
    fixed settings or by other code."""
    differ = differences(study, cfg, search=False)
    if differ:
        raise refusal(study, differ, "run `study search` to start it anew, or start a new "
                                     "study with --study-name NAME")


def initialise(study: optuna.Study, cfg: Config) -> bool:
    """Give a new study what makes it one experiment (fixed and search settings, code) and
    its first trial, the authors' setting (slot 0).

    Returns True if it did. The caller holds the storage's schema lock, so two workers that
    open a new study together do not both enqueue the reference trial.
    """
    if study.user_attrs.get(FIXED_ATTR) is not None:
        return False
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(authors_params(cfg), user_attrs={ARM_ATTR: "authors", SLOT_ATTR: 0,
                                                             BATCH_ATTR: 0})
    study.set_user_attr(FIXED_ATTR, fixed_settings(cfg))
    study.set_user_attr(SEARCH_ATTR, search_settings(cfg))
    study.set_user_attr(CODE_ATTR, code_fingerprint())
    return True
