"""Stage `search`: an Optuna study over temperature and loss weights, tracked in MLflow.

The study lives in a database (SQLite by default, any SQLAlchemy URL such as PostgreSQL,
or Optuna's file journal) and resumes: each `study search` adds trials to it, and
several workers may share it. With an RDB storage, heartbeats let a worker that starts
later mark a dead worker's trial FAIL; its MLflow run is then closed as KILLED.

MLflow: the study is one parent run; each trial a nested run named `trial-<number>`.
The objective is F1 on `tune`; `dev` is scored at the end of each trial, for reports only.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from transformers import TrainerCallback

from study import design
from study import teacher as teacher_stage
from study.config import Config, validate_distill_weights
from study.errors import StudyError
from study.layout import Layout, SearchDir
from study.results import TrialRow, read_stage_metrics, write_trials
from study.storage import (
    is_lost_storage,
    known_experimental,
    open_optuna_storage,
    redact,
    resolve_url,
    root_message,
    schema_lock,
)
from study.tracking import STATE_TAG, Outcome, RunAbandoned, RunHandle, Tracker
from study.fit import load_splits

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
WORKER_ATTR = "worker"  # host:pid of the worker running the trial
RETRY_ATTR = "retry_of"  # number of the dead worker's trial this one re-runs
STEPS_ATTR = "steps_trained"  # what a trial cost: `study bench --pruning` adds them up
OBJECTIVE_NAME = "tune F1"


# --------------------------------------------------------------------------- storage
def make_storage(cfg: Config, url: str | None = None, on_dead_trial=None):
    return open_optuna_storage(url or cfg.storage_url, cfg.search.heartbeat_interval,
                               cfg.search.grace_period, on_dead_trial)


class DeadWorkerTrial:
    """Called by the storage, in the one worker that marks a trial FAIL because its worker
    stopped beating (killed, machine lost): closes its MLflow run as KILLED and queues its
    configuration once more, so a dead machine costs time, not coverage."""

    def __init__(self, tracker: Tracker):
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with known_experimental():  # since Optuna 2.8
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if RUN_ATTR in trial.user_attrs:
            self.tracker.close_stale_runs([trial.user_attrs[RUN_ATTR]], "KILLED",
                                          "worker died (no heartbeat)")
        # The retry copies the user attrs: not the dead run's id, but where it comes from.
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in (RUN_ATTR, WORKER_ATTR)}
        trial.user_attrs = {**attrs, RETRY_ATTR: trial.user_attrs.get(RETRY_ATTR, trial.number)}
        self.retry(study, trial)


def evaluation_rounds(cfg: Config) -> int:
    """Tune evaluations in one full trial: the resource the pruners count in."""
    spec = cfg.student.train
    return max(1, math.ceil(spec.epochs * spec.evals_per_epoch))


# Pruners by name. The resource is the trial's evaluation round on `tune` (several per epoch),
# which PruningCallback reports as the step.
PRUNERS = {
    "none": lambda cfg: optuna.pruners.NopPruner(),
    "median": lambda cfg: optuna.pruners.MedianPruner(
        n_startup_trials=cfg.search.n_startup_trials,
        n_warmup_steps=cfg.search.pruner_warmup_rounds),
    "successive_halving": lambda cfg: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, cfg.search.pruner_warmup_rounds), reduction_factor=3),
    "hyperband": lambda cfg: optuna.pruners.HyperbandPruner(
        min_resource=max(1, cfg.search.pruner_warmup_rounds),
        max_resource=evaluation_rounds(cfg), reduction_factor=3),
}


def make_pruner(cfg: Config):
    return PRUNERS[cfg.search.pruner](cfg)


def load_study(cfg: Config, storage=None, study_name: str | None = None):
    storage = storage or make_storage(cfg)
    name = study_name or cfg.search.study_name
    # Offset the seed by the trials already there, so a resumed session does not
    # replay the first session's startup samples; one worker stays reproducible.
    n_existing = 0
    try:
        n_existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass
    sampler = optuna.samplers.TPESampler(seed=cfg.search.sampler_seed + n_existing,
                                         n_startup_trials=cfg.search.n_startup_trials)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=make_pruner(cfg), direction="maximize", load_if_exists=True)
    design.check_fixed_settings(study, cfg)
    return study


# --------------------------------------------------------------------------- callbacks
class PruningCallback(TrainerCallback):
    """Reports each `tune` evaluation to Optuna and stops the trial when told to."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.reports = trial, 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if "eval_f1" not in (metrics or {}):
            return
        self.reports += 1
        self.trial.report(metrics["eval_f1"], step=self.reports)
        if self.trial.should_prune():
            self.trial.set_user_attr(STEPS_ATTR, state.global_step)
            raise optuna.TrialPruned(f"pruned at evaluation {self.reports} "
                                     f"(tune F1 {metrics['eval_f1']:.2f})")


class NanGuard(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {state.global_step}")


class StorageLost(RunAbandoned):
    """The study's database stopped answering mid-study. The worker stops without touching
    the trial it runs (it could not record it anyway): heartbeats fail that trial and close
    its MLflow run once a worker reaches the database again."""


class Interrupt(TrainerCallback):
    """Stopping the worker where it can stop cleanly: after Ctrl-C, or when the study's
    database was lost (the heartbeat thread finds out first).

    Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens
    to be, and some places swallow it: a finalizer (`__del__`, a weakref callback) run by
    the garbage collector prints "Exception ignored" and carries on, so a worker
    interrupted there finished its trials and exited 0. Here the handlers only record why
    to stop, and the main thread raises it itself at the next training step or evaluation
    batch, as a trial's training ends, or between trials. A second Ctrl-C is Python's own,
    immediate one.
    """

    def __init__(self):
        self.reason: BaseException | None = None

    def request(self, reason: BaseException) -> None:
        if self.reason is None:
            self.reason = reason

    def _on_sigint(self, signum, frame) -> None:
        self.request(KeyboardInterrupt())
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextmanager
    def installed(self, storage_url: str) -> Iterator[None]:
        """SIGINT handled as above; a thread (Optuna's heartbeat) that dies because the
        database is gone stops the worker, and its traceback is not printed: the worker
        says it in one line."""
        previous_hook = threading.excepthook

        def thread_died(args) -> None:
            if is_lost_storage(args.exc_value):
                self.request(StorageLost(storage_url, root_message(args.exc_value)))
            else:
                previous_hook(args)

        threading.excepthook = thread_died
        # Only the main thread gets signals; a worker started with SIGINT ignored (a
        # background job of a shell script) keeps ignoring it, as Python itself does.
        handle = (threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
        previous = signal.signal(signal.SIGINT, self._on_sigint) if handle else None
        try:
            yield
        finally:
            threading.excepthook = previous_hook
            if handle:
                signal.signal(signal.SIGINT, previous)

    def check(self, *args, **kwargs) -> None:
        if self.reason is not None:
            raise self.reason

    on_step_end = on_substep_end = on_prediction_step = on_evaluate = check


@contextmanager
def storage_guard(storage_url: str) -> Iterator[None]:
    """A lost database, raised as StorageLost wherever the block meets it."""
    try:
        yield
    except StorageLost:
        raise
    except Exception as exc:
        if is_lost_storage(exc):
            raise StorageLost(storage_url, root_message(exc)) from None
        raise


# --------------------------------------------------------------------------- objective
def suggest(cfg: Config, trial: optuna.Trial) -> dict[str, float]:
    s = cfg.search
    params = {
        "temperature": trial.suggest_float("temperature", s.temperature.low, s.temperature.high,
                                           log=s.temperature.log),
        "alpha_ce": trial.suggest_float("alpha_ce", s.alpha_ce.low, s.alpha_ce.high,
                                        log=s.alpha_ce.log),
        "alpha_squad": trial.suggest_float("alpha_squad", s.alpha_squad.low, s.alpha_squad.high,
                                           log=s.alpha_squad.log),
    }
    if s.learning_rate is not None:
        params["learning_rate"] = trial.suggest_float(
            "learning_rate", s.learning_rate.low, s.learning_rate.high, log=s.learning_rate.log)
    return params


def trial_config(cfg: Config, params: dict[str, float]) -> Config:
    validate_distill_weights(params["temperature"], params["alpha_ce"], params["alpha_squad"],
                             "trial")
    changes: dict = {"distill": {k: params[k] for k in ("temperature", "alpha_ce", "alpha_squad")}}
    if "learning_rate" in params:
        changes["student"] = {"train": {"learning_rate": params["learning_rate"]}}
    return cfg.replace(**changes)


class Objective:
    def __init__(self, cfg: Config, tracker: Tracker, parent_run_id: str, study_name: str,
                 folder: SearchDir | None = None, callbacks: Sequence[TrainerCallback] = (),
                 interrupt: Interrupt | None = None, storage_url: str = ""):
        self.cfg, self.tracker = cfg, tracker
        self.interrupt = interrupt or Interrupt()
        self.storage_url = storage_url  # redacted: named when the database is lost
        self.parent_run_id, self.study_name = parent_run_id, study_name
        self.folder = folder or Layout.of(cfg).search  # where the trials keep their weights
        self.callbacks = tuple(callbacks)  # more Trainer callbacks for every trial
        self.splits, self.hashes = load_splits(cfg)
        teacher_stage.trained_folder(cfg)  # fail early, before any trial, if there is none

    def __call__(self, trial: optuna.Trial) -> float:
        from study.distill import distill_student

        params = suggest(self.cfg, trial)
        cfg = self.cfg
        run_params = {**params, "seed": cfg.seed, "trial_number": trial.number,
                      "profile": cfg.profile, "student": cfg.student.init,
                      "student.layers": list(cfg.student.layers or []),
                      "teacher": str(Layout.of(cfg).teacher.model),
                      "learning_rate": params.get("learning_rate", cfg.student.train.learning_rate)}
        tags = {"study_name": self.study_name, "optuna_trial": trial.number,
                "arm": trial.user_attrs.get(design.ARM_ATTR, "searched")}
        if RETRY_ATTR in trial.user_attrs:
            tags[RETRY_ATTR] = trial.user_attrs[RETRY_ATTR]
        out = self.folder.trial(trial.number).root
        with self.tracker.run(f"trial-{trial.number}", "trial", params=run_params, tags=tags,
                              parent_run_id=self.parent_run_id, split_hashes=self.hashes,
                              on_end=trial_ended(trial, out)) as handle, \
                storage_guard(self.storage_url):
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
            trial.set_user_attr(RUN_ATTR, handle.run_id)
            tcfg = trial_config(cfg, params)
            handle.log_dict(tcfg.to_dict(), "config.json")
            doc = distill_student(
                tcfg, out, cfg.seed, handle, role="trial",
                # Interrupt first: a Ctrl-C at an evaluation stops the trial before the
                # pruner can.
                callbacks=[self.interrupt, PruningCallback(trial), NanGuard(), *self.callbacks],
                save=cfg.search.keep_weights).doc
            for split in ("tune", "dev"):
                for k, v in doc[split].items():
                    trial.set_user_attr(f"{split}_{k}", v)
            trial.set_user_attr(STEPS_ATTR, doc["steps"])
            # A Ctrl-C that came before the scores were recorded fails this trial.
            self.interrupt.check()
            handle.set_tags({STATE_TAG: "COMPLETE"})
        return doc["tune"]["f1"]


def trial_ended(trial: optuna.Trial, out: Path):
    """What a trial records as its run ends; the run's status is the Tracker's."""
    def on_end(handle: RunHandle, outcome: Outcome) -> None:
        if outcome.status == "FINISHED" and not outcome.pruned:
            return
        shutil.rmtree(out, ignore_errors=True)
        if not outcome.pruned:  # a pruned trial's run is tagged PRUNED by the Tracker
            trial.set_user_attr("fail_reason", (outcome.reason or "")[:2000])
            handle.set_tags({STATE_TAG: "FAIL"})
    return on_end


# --------------------------------------------------------------------------- parent run
def _linked_runs(cfg: Config) -> dict[str, str]:
    tags = {}
    layout = Layout.of(cfg)
    for role, folder in (("teacher", layout.teacher), ("baseline", layout.baseline)):
        path = folder.metrics
        if path.exists():
            tags[f"{role}_run_id"] = read_stage_metrics(path, role).mlflow_run_id or ""
    return tags


def parent_run(cfg: Config, tracker: Tracker, study: optuna.Study, storage_url: str, storage):
    """The study's parent run, as a context manager: found through the study's user attrs,
    else created once. Enter it under the storage's lock."""
    def claim(run_id: str) -> str:
        current = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs
        if current.get(PARENT_ATTR) and current[PARENT_ATTR] != run_id:
            return current[PARENT_ATTR]  # another worker won the race
        study.set_user_attr(PARENT_ATTR, run_id)
        return run_id

    return tracker.shared_run(
        f"study-{study.study_name}", "study", study.user_attrs.get(PARENT_ATTR), claim,
        params={"study_name": study.study_name, "profile": cfg.profile, "sampler": "TPE",
                "sampler_seed": cfg.search.sampler_seed, "pruner": cfg.search.pruner,
                "search_space": {k: getattr(cfg.search, k) for k in
                                 ("temperature", "alpha_ce", "alpha_squad", "learning_rate")}},
        tags={"study_name": study.study_name, "optuna_storage": storage_url, **_linked_runs(cfg)})


def close_stale(study: optuna.Study, tracker: Tracker) -> int:
    """Mark trials of dead workers FAIL (heartbeats) and close their RUNNING MLflow runs."""
    try:
        with known_experimental():  # since Optuna 2.9, and the one way to do it
            optuna.storages.fail_stale_trials(study)
    except Exception:  # noqa: BLE001 - storages without heartbeats have nothing to fail
        pass
    ids = [t.user_attrs[RUN_ATTR] for t in study.get_trials(deepcopy=False)
           if t.state == optuna.trial.TrialState.FAIL and RUN_ATTR in t.user_attrs]
    return tracker.close_stale_runs(ids, "KILLED", "worker died (no heartbeat)")


def summarise(study: optuna.Study) -> dict[str, Any]:
    states = [t.state.name for t in study.trials]
    doc: dict[str, Any] = {"study_name": study.study_name, "n_trials": len(states),
                           **{key: states.count(state) for key, state in
                              (("n_complete", "COMPLETE"), ("n_pruned", "PRUNED"),
                               ("n_failed", "FAIL"), ("n_running", "RUNNING"))}}
    try:
        best = study.best_trial
        doc.update(best_trial=best.number, best_tune_f1=best.value, best_params=best.params,
                   best_dev_f1=best.user_attrs.get("dev_f1"),
                   best_dev_exact_match=best.user_attrs.get("dev_exact_match"))
    except ValueError:
        doc.update(best_trial=None)
    return doc


def trials_table(study: optuna.Study) -> list[TrialRow]:
    """One row per trial, from Optuna's own table (`study.trials_dataframe`). A column is a
    trial's param of that name, else its user attr (tune/dev scores, RUN_ATTR, ARM_ATTR,
    fail_reason): TrialRow names the columns."""
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs"), multi_index=True)
    if frame.empty:
        return []
    frame = frame.sort_values(("number", ""), kind="stable")
    none = pd.Series(None, index=frame.index, dtype=object)
    rows = pd.DataFrame({name: next((frame[(group, name)] for group in ("params", "user_attrs")
                                     if (group, name) in frame), none)
                         for name in TrialRow.model_fields})
    value = frame["value"].iloc[:, 0]  # named after the objective when it has a name
    rows["number"], rows["state"] = frame[("number", "")], frame[("state", "")]
    # A pruned trial without a value (no evaluation reported) may still carry its tune F1.
    rows["tune_f1"] = value.where(value.notna(), rows["tune_f1"])
    # Python's round (not numpy's), and a zero duration left empty, as before.
    rows["duration_s"] = frame[("duration", "")].map(
        lambda d: round(d.total_seconds(), 1) if pd.notna(d) and d else None)
    rows[design.ARM_ATTR] = rows[design.ARM_ATTR].fillna("searched")  # not enqueued by design
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    return [TrialRow.model_validate(r) for r in records]


def export_trials(study: optuna.Study, path: Path) -> None:
    write_trials(path, trials_table(study))


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def trials_markdown(study: optuna.Study) -> str:
    """The trials as a Markdown table, best first: the parent run's description, which the
    MLflow UI shows on the study's run page without any column to pick."""
    rows = sorted(trials_table(study), key=lambda r: (r.tune_f1 is None, -(r.tune_f1 or 0)))
    lines = [(f"**Optuna study `{study.study_name}`**: {len(rows)} trials, best first "
              "(objective: tune F1; dev F1 is reported only)."), "",
             ("| trial | state | arm | temperature | alpha_ce | alpha_squad | learning_rate "
              "| tune F1 | dev F1 |"), "|" + "---|" * 9]
    lines += [f"| {r.number} | {r.state} | {r.arm} | {_cell(r.temperature, 3)} "
              f"| {_cell(r.alpha_ce, 3)} | {_cell(r.alpha_squad, 3)} | {_cell(r.learning_rate, 6)} "
              f"| {_cell(r.tune_f1, 2)} | {_cell(r.dev_f1, 2)} |" for r in rows]
    return "\n".join(lines)


def prune_weights(study: optuna.Study, cfg: Config) -> None:
    """Keep only the best trial's weights on disk (each student is ~70 MB)."""
    root = Layout.of(cfg).search.trials
    if not root.exists():
        return
    try:
        keep = str(study.best_trial.number)
    except ValueError:
        keep = None
    running = {str(t.number) for t in study.get_trials(deepcopy=False,
                                                       states=(optuna.trial.TrialState.RUNNING,))}
    for d in root.iterdir():
        if d.name != keep and d.name not in running:
            shutil.rmtree(d, ignore_errors=True)


def optimize(cfg: Config, study: optuna.Study, objective: Objective, parent: RunHandle,
             storage_url: str) -> dict:
    """Run this session's trials (`search.n_trials`, within `search.timeout`); the summary
    reaches trials.csv and the parent run also when the session is interrupted."""
    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(f"trial {trial.number}: {trial.state.name} params={trial.params} "
              f"tune F1={trial.value if trial.value is not None else '-'}", flush=True)
        if cfg.search.keep_weights:
            prune_weights(study, cfg)
        parent.describe(trials_markdown(study))
        objective.interrupt.check()  # no new trial after a Ctrl-C

    def record_session() -> dict:
        doc = summarise(study)
        doc.update(parent_run_id=parent.run_id, storage=storage_url,
                   session_seconds=round(time.time() - started, 1))
        export_trials(study, Layout.of(cfg).reports.trials)
        parent.set_tags({k: v for k, v in doc.items() if k.startswith(("best", "n_"))})
        parent.describe(trials_markdown(study))
        if doc.get("best_trial") is not None:
            parent.log_metrics({"best_tune_f1": doc["best_tune_f1"]})
        return doc

    started = time.time()
    try:
        with storage_guard(storage_url):
            study.optimize(objective, n_trials=cfg.search.n_trials, timeout=cfg.search.timeout,
                           catch=(Exception,), callbacks=[after_trial], gc_after_trial=True)
    except StorageLost:
        raise  # the summary is read from the study: nothing to record without it
    except BaseException:
        record_session()
        raise
    return record_session()


def run(cfg: Config, n_trials: int | None = None, timeout: float | None = None,
        storage: str | None = None, study_name: str | None = None,
        callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Add trials to the study; `callbacks` are Trainer callbacks given to every trial.
    `n_trials` and `timeout` (--n-trials, --timeout) replace `search.n_trials` and
    `search.timeout` for this session, checked by the config's own rules before anything
    is opened or written (0 is refused, not read as "the default")."""
    limits = {k: v for k, v in {"n_trials": n_trials, "timeout": timeout}.items() if v is not None}
    if limits:
        cfg = cfg.replace(search=limits)
    interrupt = Interrupt()
    url = resolve_url(storage or cfg.storage_url)
    try:
        with interrupt.installed(redact(url)):
            return _run(cfg, interrupt, url, study_name, callbacks)
    except StorageLost as exc:
        where, why = exc.args
        raise StudyError(f"lost the Optuna storage {where} ({why}); the running trial is "
                         "left to the heartbeats: run again once the database is back") from None


def _run(cfg: Config, interrupt: Interrupt, url: str, study_name: str | None,
         callbacks: Sequence[TrainerCallback]) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(cfg)
    storage_obj = make_storage(cfg, url, DeadWorkerTrial(tracker))
    storage_url = redact(url)  # for tags and the summary: never the database password
    study = load_study(cfg, storage_obj, study_name)
    closed = close_stale(study, tracker)
    if closed:
        print(f"closed {closed} MLflow run(s) left RUNNING by a dead worker")
    objective = Objective(cfg, tracker, "", study.study_name, callbacks=callbacks,
                          interrupt=interrupt, storage_url=storage_url)
    with ExitStack() as stack:
        # Workers starting together: one gives a new study its first trial (the authors'
        # setting) and its parent run; the others find both.
        with schema_lock(url):
            design.initialise(study, cfg)
            design.check_fixed_settings(study, cfg)
            with known_experimental():  # since Optuna 3.2; optuna-dashboard's axis name
                study.set_metric_names([OBJECTIVE_NAME])  # not "Objective 0"
            parent = stack.enter_context(parent_run(cfg, tracker, study, storage_url, storage_obj))
        objective.parent_run_id = parent.run_id
        interrupt.check()  # a Ctrl-C while the parent run was found: it ends KILLED
        doc = optimize(cfg, study, objective, parent, storage_url)
    print(f"study {study.study_name}: {doc['n_trials']} trials ({doc['n_complete']} complete, "
          f"{doc['n_pruned']} pruned, {doc['n_failed']} failed); best trial {doc.get('best_trial')} "
          f"tune F1 {doc.get('best_tune_f1')}")
    return doc
