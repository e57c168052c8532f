"""`study rerun RUN`: re-train one recorded run from what it recorded, and compare every
number it recorded.

    study rerun 3f2a...c9          # any training's MLflow run id
    study rerun trial 4            # a search trial of the profile's study
    study rerun seeds distilled 3  # a training of the `seeds` stage (arm, seed)

What is re-trained is read from the run, not from params.yaml: its `config.json` (the sections
that decide a training: seed, data, teacher, student, distill, eval, and the runtime's
device, precision and thread count), its seed, its torch thread count (tag `torch_threads`),
against the data it hashed (tags `data.<split>_sha256`) and, when it distilled, the teacher
whose weights it hashed. params.yaml and --set give only the locations (artifacts, tracking
store, study storage). The training goes through the stage's own code (study.fit) in a scratch
folder, and is its own MLflow run (role `rerun`, tagged `rerun_of` and `verdict`).

Compared: every step of every metric history (losses, learning rate, gradient norm, tune
EM/F1, final tune/dev EM/F1, ...), the answers (predictions_<split>.json), the numbers of
metrics.json, a `seeds` training's per-question scores (seeds/runs.json) and a trial's numbers
in the Optuna study; not what measures time or the machine (train_seconds, *_runtime,
*_per_second, system/*). A pruned trial is re-trained with the same schedule and stopped at
the step where it was pruned.

Verdict: `identical: N numbers` (exit 0), or the numbers that differ and every difference of
environment (commit, packages, threads, device, CPU instruction set) beside them (exit 1). A run
that lacks what a rerun needs, data that no longer hash the same, another teacher, or another
commit (without --any-commit) is refused in one line (exit 2).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from transformers import TrainerCallback

from study import design
from study import search as search_stage
from study import seeds as seeds_stage
from study import teacher as teacher_stage
from study.baseline import fit_baseline
from study.config import Config
from study.data import SPLITS, read_split, split_hash
from study.distill import distill_student
from study.errors import StudyError
from study.files import read_json
from study.fit import Fitted, load_splits
from study.layout import Layout, StageDir
from study.modeling import build_student
from study.storage import open_optuna_storage, redact, resolve_url, sqlite_path
from study.teacher_logits import weights_hash
from study.tracking import (
    CACHE_SHA_TAG,
    CACHE_TAG,
    CPU_TAG,
    STATE_TAG,
    TEACHER_TAG,
    THREADS_TAG,
    RunHandle,
    Tracker,
    git_state,
)

RERUN_TAG = "rerun_of"
VERDICT_TAG = "verdict"
# Numbers that measure time or the machine, not what was trained: never compared.
NOT_COMPARED = re.compile(r"^system/|^train_seconds$|_runtime$|_per_second$")
NOT_COMPARED_DOC = {"train_seconds", "teacher_cache_seconds", "wall_seconds", "mlflow_run_id"}
# Run tags that say where and with what a run computed, shown when numbers differ.
ENV_TAGS = ("git_commit", "git_dirty", THREADS_TAG, "device", CPU_TAG, TEACHER_TAG, CACHE_TAG,
            CACHE_SHA_TAG)
ENV_PREFIX = "version."
# The roles of runs that distil a student (`study distill`, a search trial), and every
# `seed-<arm>` role; `teacher` and `baseline` runs train too.
DISTILLED = ("distill", "trial")
SHOWN = 40  # rows of the difference table printed; all of them in the rerun's rerun.json


# ------------------------------------------------------------------ what to re-run
@dataclass
class Target:
    """The run to re-run, and what else recorded its numbers."""

    run_id: str
    trial: optuna.trial.FrozenTrial | None = None  # its trial in the Optuna study
    seed_record: dict | None = None  # its record in seeds/runs.json
    seed_questions: list[str] | None = None  # the question ids of the record's scores


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StudyError(f"{what} must be a whole number, got {text!r}") from None


def find(cfg: Config, words: list[str], study_name: str | None) -> Target:
    """RUN as the user named it: a run id, `trial N` or `seeds ARM SEED`."""
    if len(words) == 1 and words[0] not in ("trial", "seeds"):
        return Target(words[0])
    if words[0] == "trial" and len(words) == 2:
        number = _int(words[1], "trial N")
        trial = _study_trial(cfg, study_name or cfg.search.study_name, number)
        if trial is None:
            raise StudyError(f"study {study_name or cfg.search.study_name!r} has no trial "
                             f"{number}")
        run_id = trial.user_attrs.get(search_stage.RUN_ATTR)
        if not run_id:
            raise StudyError(f"trial {number} has no MLflow run (it never started training)")
        return Target(run_id, trial=trial)
    if words[0] == "seeds" and len(words) == 3:
        arm, seed = words[1], str(_int(words[2], "seeds ARM SEED: SEED"))
        doc = _seed_runs(cfg, required=True)
        runs = doc["runs"]
        if arm not in runs:
            raise StudyError(f"no arm {arm!r} in {Layout.of(cfg).seed_runs} "
                             f"(arms: {', '.join(sorted(runs))})")
        if seed not in runs[arm]:
            raise StudyError(f"no seed {seed} of arm {arm!r} in {Layout.of(cfg).seed_runs} "
                             f"(seeds: {', '.join(sorted(runs[arm], key=int))})")
        record = runs[arm][seed]
        if not record.get("mlflow_run_id"):
            raise StudyError(f"seed {seed} of arm {arm!r} has no MLflow run recorded")
        return Target(record["mlflow_run_id"], seed_record=record,
                      seed_questions=doc.get("questions"))
    raise StudyError("RUN is an MLflow run id, `trial N` or `seeds ARM SEED`; got "
                     + " ".join(words))


def _study_trial(cfg: Config, name: str, number: int, required: bool = True
                 ) -> optuna.trial.FrozenTrial | None:
    """Trial `number` of study `name` in the profile's study storage (read, never created)."""
    url = resolve_url(cfg.storage_url)
    db = sqlite_path(url)
    if db is not None and not db.exists():  # opening it would create an empty database
        if required:
            raise StudyError(f"no Optuna study storage at {db}: run `study search` first")
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_optuna_storage(url))
    except KeyError:
        if required:
            raise StudyError(f"no study {name!r} in {redact(url)} (--study-name NAME)") from None
        return None
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _seed_runs(cfg: Config, required: bool) -> dict | None:
    path = Layout.of(cfg).seed_runs
    if not required and not path.exists():
        return None
    return read_json(path, "recorded seed trainings", "run `study seeds` first")


def _complete(cfg: Config, target: Target, run) -> Target:
    """A run named by its id: its trial and its seeds record too, where they are found."""
    tags = run.data.tags
    if target.trial is None and tags.get("role") == "trial" and "optuna_trial" in tags:
        trial = _study_trial(cfg, tags.get("study_name", cfg.search.study_name),
                             int(tags["optuna_trial"]), required=False)
        if trial is not None and trial.user_attrs.get(search_stage.RUN_ATTR) == target.run_id:
            target.trial = trial
    if target.seed_record is None and "seeds_of_trial" in tags:
        doc = _seed_runs(cfg, required=False) or {"runs": {}}
        for by_seed in doc["runs"].values():
            for record in by_seed.values():
                if record.get("mlflow_run_id") == target.run_id:
                    target.seed_record, target.seed_questions = record, doc.get("questions")
    return target


# ------------------------------------------------------------------ what the run needs
def _refuse_unless_rerunnable(cfg: Config, run, any_commit: bool) -> None:
    tags, rid = run.data.tags, run.info.run_id
    role = tags.get("role", "")
    if role == "rerun":
        raise StudyError(f"run {rid} is itself a rerun (of {tags.get(RERUN_TAG)}): "
                         f"rerun that run")
    if not _trains(role):
        raise StudyError(f"run {rid} ({run.info.run_name}) is a {role or 'untagged'} run, not "
                         "a training: rerun a teacher, baseline, distill, trial or seeds run")
    if run.info.status != "FINISHED":
        raise StudyError(f"run {rid} ended {run.info.status}: only a finished run has numbers "
                         "to compare")
    profile = tags.get("profile")
    if profile != cfg.profile:
        raise StudyError(f"run {rid} is of profile {profile!r}, not {cfg.profile!r}: "
                         f"add --profile {profile}")
    recorded, now = tags.get("git_commit", "(not recorded)"), git_state()["git_commit"]
    if recorded != now and not any_commit:
        raise StudyError(f"run {rid} was trained by commit {recorded}, this checkout is {now}: "
                         f"check out {recorded}, or pass --any-commit to compare anyway")
    missing = [f"data.{s}_sha256" for s in SPLITS if f"data.{s}_sha256" not in tags]
    if "seed" not in run.data.params:
        missing.append("its seed (param seed)")
    if missing:
        raise StudyError(f"run {rid} lacks what a rerun needs: {', '.join(missing)}")


def _trains(role: str) -> bool:
    return role in ("teacher", "baseline", *DISTILLED) or role.startswith("seed-")


def _check_data(cfg: Config, run) -> dict[str, str]:
    """The split hashes, refused unless the prepared splits hash as the run recorded them:
    the files as they are now, read again (not the manifest `study prepare` wrote)."""
    data = Layout.of(cfg).data
    now = {name: split_hash(read_split(data, name)) for name in SPLITS}
    differ = [f"{name} (recorded {run.data.tags[f'data.{name}_sha256'][:12]}, now "
              f"{now[name][:12]})" for name in SPLITS
              if run.data.tags[f"data.{name}_sha256"] != now[name]]
    if differ:
        raise StudyError(f"the data no longer hash as run {run.info.run_id} recorded them: "
                         f"{'; '.join(differ)} in {Layout.of(cfg).data.root}: run `study prepare` "
                         "with the run's config, or rerun where its data are")
    return now


def _check_teacher(cfg: Config, run) -> None:
    """A distilled run is re-trained only from the teacher it distilled from."""
    recorded = run.data.tags.get(TEACHER_TAG)
    if recorded is None or not (cfg.distill.alpha_ce > 0):
        return
    folder = teacher_stage.trained_folder(cfg)
    now = weights_hash(folder, None)
    if now != recorded:
        raise StudyError(f"the teacher at {folder} is not the one run {run.info.run_id} "
                         f"distilled from (weights sha256 {recorded[:12]} recorded, {now[:12]} "
                         "now): rerun where its teacher is")


def recorded_config(cfg: Config, client, run, folder: Path) -> tuple[Config, int | None]:
    """The config the run trained with: its config.json's training sections over this
    command's config (which gives only the locations: artifacts, tracking, study storage),
    with the thread count it trained with (None when nothing recorded it)."""
    rid = run.info.run_id
    if "config.json" not in {a.path for a in client.list_artifacts(rid)}:
        raise StudyError(f"run {rid} lacks what a rerun needs: its config.json artifact")
    doc = json.loads(Path(client.download_artifacts(rid, "config.json", str(folder))).read_text())
    sections = {k: doc[k] for k in design.FIXED_SECTIONS if k in doc}
    runtime = {k: v for k, v in doc.get("runtime", {}).items()
               if k in ("device", "mixed_precision", "threads")}
    try:
        rcfg = cfg.replace(**sections, runtime=runtime)
    except StudyError as exc:
        raise StudyError(f"run {rid}'s config.json does not fit this code ({exc})") from None
    threads = recorded_threads(run, doc)
    return (rcfg.replace(runtime={"threads": threads}) if threads else rcfg), threads


def recorded_threads(run, config_doc: dict) -> int | None:
    """The torch thread count the run trained with: its tag, else its config's
    runtime.threads, else the count in its device tag (runs made before the tag)."""
    tags = run.data.tags
    if tags.get(THREADS_TAG, "").isdigit():
        return int(tags[THREADS_TAG])
    threads = config_doc.get("runtime", {}).get("threads") or 0
    if threads > 0:
        return int(threads)
    found = re.search(r", (\d+) threads\)$", tags.get("device", ""))
    return int(found[1]) if found else None


# ------------------------------------------------------------------ training
class StopAt(TrainerCallback):
    """Ends training after step `step`, as the pruner ended the recorded trial there. The
    Trainer still logs and evaluates that step (it does so after on_step_end), as it did."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def _pruned_at(client, run) -> int | None:
    if run.data.tags.get(STATE_TAG) != "PRUNED":
        return None
    steps = [m.step for key in run.data.metrics if not NOT_COMPARED.search(key)
             for m in client.get_metric_history(run.info.run_id, key)]
    return max(steps) if steps else None


def _start(cfg: Config, role: str, seed: int):
    """What a teacher or baseline training starts from, made before the rerun's run opens."""
    if role == "teacher":
        return teacher_stage.initial(cfg)
    if role == "baseline":
        return build_student(cfg.student, seed)
    return None


def _train(cfg: Config, role: str, seed: int, out: Path, handle: RunHandle, start,
           stop_at: int | None) -> Fitted:
    """The training the run's stage did, through the stage's own code."""
    if role == "teacher":
        return teacher_stage.fit_teacher(cfg, out, handle, start, save=False)
    if role == "baseline":
        return fit_baseline(cfg, out, seed, handle, start, save=False)
    callbacks = [StopAt(stop_at)] if stop_at is not None else []
    return distill_student(cfg, out, seed, handle, role=role, callbacks=callbacks, save=False)


# ------------------------------------------------------------------ comparing
MISSING = None


@dataclass(frozen=True)
class Row:
    """One recorded number (or answer) that the rerun did not reproduce."""

    name: str
    recorded: Any
    now: Any  # MISSING when the rerun has no such number


@dataclass
class Comparison:
    numbers: int = 0  # recorded numbers and answers compared
    rows: list[Row] = field(default_factory=list)  # those the rerun did not reproduce
    sources: dict[str, int] = field(default_factory=dict)  # numbers compared, by where recorded

    def add(self, source: str, name: str, recorded: list, now: list) -> None:
        """Recorded values of one name (several when a metric was logged more than once at a
        step) against the rerun's. A value the rerun also has is reproduced; the others are
        paired in sorted order. The rerun may have more (a pruned trial's rerun scores its
        model after the stop): what was not recorded is not compared."""
        rec, cur = _distinct(recorded), _distinct(now)
        left = sorted((v for v in rec if not any(_same(v, w) for w in cur)), key=_order)
        spare = sorted((w for w in cur if not any(_same(w, v) for v in rec)), key=_order)
        self.rows += [Row(name, v, spare[i] if i < len(spare) else MISSING)
                      for i, v in enumerate(left)]
        self.numbers += len(rec)
        self.sources[source] = self.sources.get(source, 0) + len(rec)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float)
                      and math.isnan(a) and math.isnan(b))


def _distinct(values: list) -> list:
    out: list = []
    for v in values:
        if not any(_same(v, w) for w in out):
            out.append(v)
    return out


def _order(value: Any) -> tuple:
    return (isinstance(value, str), value if isinstance(value, str) else float(value))


def _histories(client, run_id: str, keys) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {}
    for key in keys:
        if NOT_COMPARED.search(key):
            continue
        by_step: dict[int, list[float]] = {}
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, []).append(m.value)
        out[key] = by_step
    return out


def _numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a JSON document by path (`curve[2].tune_f1`), booleans and text left out."""
    if isinstance(doc, dict):
        out: dict[str, float] = {}
        for k, v in doc.items():
            if k not in NOT_COMPARED_DOC:
                out.update(_numbers(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(doc, list):
        out = {}
        for i, v in enumerate(doc):
            out.update(_numbers(v, f"{prefix}[{i}]"))
        return out
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return {prefix: doc}
    return {}


def _artifact(client, run_id: str, name: str, folder: Path) -> Any:
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    return json.loads(Path(client.download_artifacts(run_id, name, str(folder))).read_text())


def compare(client, run, rerun_id: str, fitted: Fitted, out: Path, target: Target,
            cfg: Config, folder: Path) -> Comparison:
    """Every number the run recorded against the rerun's."""
    c = Comparison()
    rid = run.info.run_id
    recorded = _histories(client, rid, run.data.metrics)
    now = _histories(client, rerun_id, recorded)
    for key, by_step in sorted(recorded.items()):
        for step, values in sorted(by_step.items()):
            c.add("metric values", f"{key} @ step {step}", values, now[key].get(step, []))
    for split in ("tune", "dev"):
        answers = _artifact(client, rid, f"predictions_{split}.json", folder / "recorded")
        for qid, text in sorted((answers or {}).items()):
            c.add("answers", f"answer {split} {qid}", [text],
                  [fitted.predictions[split][qid]] if qid in fitted.predictions[split] else [])
    doc = _artifact(client, rid, "metrics.json", folder / "recorded")
    if doc is not None:
        mine = _numbers(json.loads(StageDir(out).metrics.read_text()))
        for path, value in _numbers(doc).items():
            c.add("metrics.json", f"metrics.json {path}", [value],
                  [mine[path]] if path in mine else [])
    if target.seed_record is not None:
        _compare_seed_record(c, target, cfg, fitted)
    if target.trial is not None:
        _compare_trial(c, target.trial, fitted)
    return c


def _compare_seed_record(c: Comparison, target: Target, cfg: Config, fitted: Fitted) -> None:
    splits, _ = load_splits(cfg)
    refs = {r["id"]: list(r["answers"]["text"]) for r in splits["dev"]}
    qids = target.seed_questions or sorted(refs)
    mine = seeds_stage._record(fitted.doc, fitted.predictions["dev"], refs, qids)
    rec = target.seed_record
    for key in ("exact_match", "f1"):
        c.add("runs.json", f"runs.json {key}", [rec[key]], [mine[key]])
    for key in ("per_question_em", "per_question_f1"):
        for i, value in enumerate(rec.get(key, [])):
            c.add("runs.json", f"runs.json {key}[{i}] {qids[i] if i < len(qids) else ''}",
                  [value], [mine[key][i]] if i < len(mine[key]) else [])


def _compare_trial(c: Comparison, trial: optuna.trial.FrozenTrial, fitted: Fitted) -> None:
    doc = fitted.doc
    curve = [p["tune_f1"] for p in doc["curve"]]
    for report, value in sorted(trial.intermediate_values.items()):
        c.add("Optuna trial", f"trial {trial.number} report {report}", [value],
              [curve[report - 1]] if 0 < report <= len(curve) else [])
    if trial.value is not None:
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        value = (curve[-1] if curve else MISSING) if pruned else doc["tune"]["f1"]
        c.add("Optuna trial", f"trial {trial.number} value", [trial.value],
              [] if value is MISSING else [value])
    mine = {f"{split}_{k}": v for split in ("tune", "dev") for k, v in doc[split].items()}
    mine[search_stage.STEPS_ATTR] = doc["steps"]
    for key, value in sorted(trial.user_attrs.items()):
        if key in mine and isinstance(value, (int, float)):
            c.add("Optuna trial", f"trial {trial.number} {key}", [value], [mine[key]])


def environment_rows(recorded: dict[str, str], now: dict[str, str]) -> list[tuple[str, str, str]]:
    """The environment tags that differ, (tag, recorded, now)."""
    keys = list(ENV_TAGS) + sorted({k for k in (*recorded, *now) if k.startswith(ENV_PREFIX)})
    rows = []
    for key in keys:
        was, is_ = (_env_value(key, tags.get(key)) for tags in (recorded, now))
        if was != is_:
            rows.append((key, was, is_))
    return rows


def _env_value(key: str, value: str | None) -> str:
    if value is None:
        return "(not recorded)"
    # The device tag carries torch's thread count when the run opened, before its training
    # applied its own (THREADS_TAG): compared there, not here.
    return re.sub(r", \d+ threads\)$", ")", value) if key == "device" else value


# ------------------------------------------------------------------ the verdict
def _shown(value: Any) -> str:
    if value is MISSING:
        return "(none)"
    if isinstance(value, str):
        return repr(value if len(value) <= 28 else value[:25] + "...")
    return repr(value)


def _difference(row: Row) -> str:
    if isinstance(row.recorded, (int, float)) and isinstance(row.now, (int, float)):
        return f"{row.now - row.recorded:+.3g}"
    return ""


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def report(c: Comparison, env: list[tuple[str, str, str]]) -> list[str]:
    numbers = [(r.name, _shown(r.recorded), _shown(r.now), _difference(r)) for r in c.rows]
    lines = table(("number", "recorded", "now", "difference"), numbers[:SHOWN])
    if len(numbers) > SHOWN:
        lines.append(f"... and {len(numbers) - SHOWN} more (all in the rerun run's rerun.json)")
    lines.append("")
    if env:
        lines += table(("environment", "recorded", "now"), env)
    else:
        lines.append("environment: no difference (commit, packages, threads, device, CPU): the "
                     "difference comes from what the run recorded or from the code")
    return lines


def run(cfg: Config, words: list[str], any_commit: bool = False, threads: int | None = None,
        study_name: str | None = None) -> int:
    """Re-run one recorded run; 0 when every number is identical, 1 when some differ."""
    from mlflow.exceptions import MlflowException

    if threads is not None and threads < 1:
        raise StudyError(f"--threads takes a number >= 1, got {threads}")
    tracker = Tracker(cfg)  # re-points a copied store's artifact folder first
    client = tracker.client
    target = find(cfg, words, study_name)
    try:
        run_ = client.get_run(target.run_id)
    except MlflowException:
        raise StudyError(f"no run {target.run_id} in the MLflow store "
                         f"{redact(cfg.tracking.uri)}") from None
    _refuse_unless_rerunnable(cfg, run_, any_commit)
    target = _complete(cfg, target, run_)
    role, seed = run_.data.tags["role"], _int(run_.data.params["seed"], "the run's seed")
    with tempfile.TemporaryDirectory(prefix="study-rerun-") as tmp:
        folder = Path(tmp)
        rcfg, recorded_count = recorded_config(cfg, client, run_, folder)
        tags = dict(run_.data.tags)
        if recorded_count is not None:  # a run made before the tag: from its config or device
            tags.setdefault(THREADS_TAG, str(recorded_count))
        if threads is not None:
            rcfg = rcfg.replace(runtime={"threads": threads})
        hashes = _check_data(rcfg, run_)
        if role not in ("teacher", "baseline"):
            _check_teacher(rcfg, run_)
        stop_at = _pruned_at(client, run_)
        start = _start(rcfg, role, seed)
        name = run_.info.run_name
        print(f"rerun of run {target.run_id} ({name}, role {role}, seed {seed}"
              + (f", stopped at step {stop_at} as pruned" if stop_at is not None else "")
              + f", {rcfg.runtime.threads or 'default'} torch threads)", flush=True)
        out = folder / "train"
        with tracker.run(f"rerun-{name}", "rerun", params=dict(run_.data.params),
                         tags={RERUN_TAG: target.run_id, "rerun_of_role": role},
                         split_hashes=hashes) as handle:
            handle.log_dict(rcfg.to_dict(), "config.json")
            fitted = _train(rcfg, role, seed, out, handle, start, stop_at)
            result = compare(client, run_, handle.run_id, fitted, out, target, rcfg, folder)
            env = environment_rows(tags, client.get_run(handle.run_id).data.tags)
            verdict = "different" if result.rows else "identical"
            handle.set_tags({VERDICT_TAG: verdict, "rerun_numbers": result.numbers,
                             "rerun_differ": len(result.rows)})
            handle.log_dict({"verdict": verdict, "rerun_of": target.run_id,
                             "numbers": result.numbers, "sources": result.sources,
                             "differ": [r.__dict__ for r in result.rows],
                             "environment": [dict(zip(("tag", "recorded", "now"), e, strict=True))
                                             for e in env]}, "rerun.json")
            summary = ", ".join(f"{n} {source}" for source, n in result.sources.items())
            if verdict == "identical":
                line = f"identical: {result.numbers} numbers ({summary}); rerun run {handle.run_id}"
                handle.describe(f"**Identical** to run `{target.run_id}`: {result.numbers} "
                                f"numbers ({summary}).")
                print(line)
                return 0
            lines = [f"different: {len(result.rows)} of {result.numbers} numbers differ "
                     f"({summary}); rerun run {handle.run_id}", *report(result, env)]
            handle.describe(f"**Different** from run `{target.run_id}`:\n\n```\n"
                            + "\n".join(lines) + "\n```")
    print("\n".join(lines))
    return 1
