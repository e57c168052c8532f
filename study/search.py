"""Stage `search`: an Optuna study over temperature and loss weights, tracked in MLflow.

The study lives in a database (SQLite by default, any SQLAlchemy URL such as PostgreSQL,
or Optuna's file journal), several workers may share it, and it is bounded by count, never
by the clock:
- `study search` (the DVC stage) completes the study to `search.n_trials` configurations:
  after an interruption it trains only the missing ones;
- `study search --n-trials N` adds N configurations (`--timeout S` stops starting batches
  after S seconds: an interactive bound, written into the summary when it cuts a session).

Configurations are asked in batches of `search.batch` with Optuna's ask-and-tell, trained
side by side (study.parallel) and told in trial-number order. Each has a slot (its place in
the study) that seeds its sampler, and the sampler and the pruner see only the finished
trials of earlier batches, in slot order (`EarlierBatches`), so the same params visit the
same configurations, with the same pruning decisions, on any machine, at any load, and
after any interruption: a configuration whose training was interrupted (Ctrl-C, a killed
worker, a lost database) is re-run in its slot, with its params.

With an RDB storage, heartbeats (beaten by the worker that asked the trial, from ask to
tell) let a worker that starts later mark a dead worker's trial FAIL; its MLflow run is then
closed as KILLED and its configuration runs again.

MLflow: the study is one parent run; each trial a nested run named `trial-<number>`.
The objective is F1 on `tune`; `dev` is scored at the end of each trial, for reports only.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from transformers import TrainerCallback

from study import design, parallel
from study import teacher as teacher_stage
from study.config import Config, validate_distill_weights
from study.design import BATCH_ATTR, SLOT_ATTR
from study.errors import StudyError
from study.fit import load_splits
from study.layout import Layout, SearchDir
from study.results import (
    TrialRow,
    read_stage_metrics,
    write_search_summary,
    write_trials,
)
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

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
WORKER_ATTR = "worker"  # host:pid of the process running (or holding) the trial
RETRY_ATTR = "retry_of"  # number of the unfinished trial whose configuration this one re-runs
STEPS_ATTR = "steps_trained"  # what a trial cost: `study bench --pruning` adds them up
ERROR_ATTR = "failed_in_training"  # a FAIL the training itself raised: a finished configuration
SESSION_ATTR = "last_session"  # how the last session ended: target, finished, what stopped it
OBJECTIVE_NAME = "tune F1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --------------------------------------------------------------------------- storage
def make_storage(cfg: Config, url: str | None = None, on_dead_trial=None):
    return open_optuna_storage(url or cfg.storage_url, cfg.search.heartbeat_interval,
                               cfg.search.grace_period, on_dead_trial)


class DeadWorkerTrial:
    """Called by the storage, in the one worker that marks a trial FAIL because its worker
    stopped beating (killed, machine lost): closes its MLflow run as KILLED. Its
    configuration is unfinished (no ERROR_ATTR), so a session runs it again in its slot."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if RUN_ATTR in trial.user_attrs:
            self.tracker.close_stale_runs([trial.user_attrs[RUN_ATTR]], "KILLED",
                                          "worker died (no heartbeat)")


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


# --------------------------------------------------------------------------- slots
def finished(trial: FrozenTrial) -> bool:
    """Whether the trial finished its configuration: trained to the end or pruned, or failed
    by its own training. An interrupted one, or one whose worker died, did not."""
    return trial.state in FINISHED or (trial.state == TrialState.FAIL
                                       and ERROR_ATTR in trial.user_attrs)


def slot_of(trial: FrozenTrial) -> int | None:
    return trial.user_attrs.get(SLOT_ATTR)


class EarlierBatches:
    """The study as the sampler or the pruner of a trial in batch `batch` may see it: the
    finished trials of earlier batches, in slot order (and the trial itself, `own`). Whatever
    else is running, and in whatever order the trials finished, it is the same."""

    def __init__(self, study: optuna.Study, batch: int | None, own: int | None = None):
        self._study, self._batch, self._own = study, batch, own

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _keep(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        def seen(t: FrozenTrial) -> bool:
            b = t.user_attrs.get(BATCH_ATTR)
            return self._batch is None or (b is not None and b < self._batch)

        kept = [t for t in trials if t.number == self._own or (finished(t) and seen(t))]
        return sorted(kept, key=lambda t: (slot_of(t) is None, slot_of(t) or 0, t.number))

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._keep(self._study.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states,
                                                  use_cache=False))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def _batch_of(trial: FrozenTrial) -> int | None:
    return trial.user_attrs.get(BATCH_ATTR)


class BatchPruner(optuna.pruners.BasePruner):
    """A pruner that decides on the trials of earlier batches only (EarlierBatches)."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.inner.prune(EarlierBatches(study, _batch_of(trial), trial.number), trial)


class BatchSampler(optuna.samplers.BaseSampler):
    """A sampler that samples from the trials of earlier batches only (EarlierBatches)."""

    def __init__(self, inner: optuna.samplers.BaseSampler):
        self.inner = inner

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(
            EarlierBatches(study, _batch_of(trial), trial.number), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(
            EarlierBatches(study, _batch_of(trial), trial.number), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(
            EarlierBatches(study, _batch_of(trial), trial.number), trial, param_name,
            param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def slot_sampler(cfg: Config, slot: int) -> BatchSampler:
    """The sampler that draws slot `slot`'s configuration: seeded by the slot, so a slot's
    params depend on the search settings and the earlier batches alone."""
    return BatchSampler(optuna.samplers.TPESampler(seed=cfg.search.sampler_seed + slot,
                                                   n_startup_trials=cfg.search.n_startup_trials))


def load_study(cfg: Config, storage=None, study_name: str | None = None, check: bool = True):
    """The study (created if new), its pruner deciding on earlier batches only. With
    `check`, refused when its trials were trained under other fixed settings or code."""
    storage = storage or make_storage(cfg)
    study = optuna.create_study(study_name=study_name or cfg.search.study_name, storage=storage,
                                sampler=slot_sampler(cfg, 0), pruner=BatchPruner(make_pruner(cfg)),
                                direction="maximize", load_if_exists=True)
    if check:
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

    @property
    def requested(self) -> bool:
        if self.reason is None and parallel.stop_requested():  # a child's parent saw Ctrl-C
            self.request(KeyboardInterrupt())
        return self.reason is not None

    def check(self, *args, **kwargs) -> None:
        if self.requested:
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
                "arm": trial.user_attrs.get(design.ARM_ATTR, "searched"),
                **{k: trial.user_attrs[k] for k in (SLOT_ATTR, BATCH_ATTR, RETRY_ATTR)
                   if k in trial.user_attrs}}
        out = self.folder.trial(trial.number).root
        with self.tracker.run(f"trial-{trial.number}", "trial", params=run_params, tags=tags,
                              parent_run_id=self.parent_run_id, split_hashes=self.hashes,
                              on_end=trial_ended(trial, out)) as handle, \
                storage_guard(self.storage_url):
            trial.set_user_attr(WORKER_ATTR, worker_name())
            trial.set_user_attr(RUN_ATTR, handle.run_id)
            tcfg = parallel.trainee(trial_config(cfg, params))
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
            if outcome.status == "FAILED":  # its own error, not a stop: the slot is done
                trial.set_user_attr(ERROR_ATTR, True)
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str | None) -> bool:
    """Whether `worker` (host:pid) was a process of this host that no longer runs."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: its heartbeats say
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def close_stale(study: optuna.Study, tracker: Tracker) -> int:
    """Mark FAIL the trials of dead workers: by heartbeats (any machine), or at once when the
    worker was a process of this machine that is gone; close their RUNNING MLflow runs."""
    try:
        with known_experimental():  # since Optuna 2.9, and the one way to do it
            optuna.storages.fail_stale_trials(study)
    except Exception:  # noqa: BLE001 - storages without heartbeats have nothing to fail
        pass
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _gone(t.user_attrs.get(WORKER_ATTR)) and \
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            print(f"trial {t.number}: its worker {t.user_attrs[WORKER_ATTR]} is gone; its "
                  "configuration runs again", flush=True)
    ids = [t.user_attrs[RUN_ATTR] for t in study.get_trials(deepcopy=False)
           if t.state == TrialState.FAIL and RUN_ATTR in t.user_attrs]
    return tracker.close_stale_runs(ids, "KILLED", "worker died (no heartbeat)")


@dataclass(frozen=True)
class Slots:
    """The study's configurations by slot, read once: which are finished, which are held
    (waiting, or running in a live worker), and which must run again."""

    trials: list[FrozenTrial]

    def _slots(self, keep) -> set[int]:
        return {slot_of(t) for t in self.trials if slot_of(t) is not None and keep(t)}

    @property
    def finished(self) -> set[int]:
        return self._slots(finished)

    @property
    def held(self) -> set[int]:
        return self._slots(lambda t: t.state in (TrialState.WAITING, TrialState.RUNNING))

    @property
    def unfinished(self) -> list[int]:
        """Slots asked before and neither finished nor held: interrupted, or their worker died."""
        return sorted(self._slots(lambda t: True) - self.finished - self.held)

    @property
    def waiting(self) -> dict[int, FrozenTrial]:
        return {slot_of(t): t for t in self.trials
                if t.state == TrialState.WAITING and slot_of(t) is not None}

    @property
    def next(self) -> int:
        return max(self._slots(lambda t: True), default=-1) + 1

    def last_of(self, slot: int) -> FrozenTrial:
        return max((t for t in self.trials if slot_of(t) == slot), key=lambda t: t.number)


def summarise(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    doc: dict[str, Any] = {"study_name": study.study_name, "n_trials": len(states),
                           "configurations": len(Slots(trials).finished),
                           **{key: states.count(state) for key, state in
                              (("n_complete", "COMPLETE"), ("n_pruned", "PRUNED"),
                               ("n_failed", "FAIL"), ("n_running", "RUNNING"))},
                           "target": None, "stopped_by": None, "stopped": None,
                           **study.user_attrs.get(SESSION_ATTR, {})}
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


def trials_markdown(study: optuna.Study, stopped: str | None = None) -> str:
    """The trials as a Markdown table, best first, with the searched params only: the parent
    run's description, which the MLflow UI shows on the study's run page."""
    rows = sorted(trials_table(study), key=lambda r: (r.tune_f1 is None, -(r.tune_f1 or 0)))
    searched = ["temperature", "alpha_ce", "alpha_squad"]
    if any(r.learning_rate is not None for r in rows):
        searched.append("learning_rate")
    head = (f"Optuna study {study.study_name}: {len(rows)} trials, best first (objective: tune "
            "F1; dev F1 is reported only).")
    lines = [head + (f" Stopped {stopped}." if stopped else ""), "",
             "| trial | state | arm | " + " | ".join(searched) + " | tune F1 | dev F1 |",
             "|" + "---|" * (5 + len(searched))]
    for r in rows:
        params = " | ".join(_cell(getattr(r, k), 6 if k == "learning_rate" else 3)
                            for k in searched)
        lines.append(f"| {r.number} | {r.state} | {r.arm} | {params} "
                     f"| {_cell(r.tune_f1, 2)} | {_cell(r.dev_f1, 2)} |")
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


# --------------------------------------------------------------------------- a session
@dataclass(frozen=True)
class TrialJob:
    """What a training process needs to run one asked trial (picklable)."""

    cfg: Config
    url: str  # the storage's URL, with its password: it never leaves the processes
    study_name: str
    trial_id: int
    parent_run_id: str
    callbacks: tuple = ()


@dataclass(frozen=True)
class TrialOutcome:
    state: str  # COMPLETE, PRUNED, FAIL (its own error), STOPPED (Ctrl-C), LOST (the database)
    value: float | None = None
    reason: str = ""


def run_trial(objective: Objective, trial: optuna.Trial) -> TrialOutcome:
    """One trial through the objective; how it ended, for the parent to tell."""
    if objective.interrupt.requested:  # asked, but a Ctrl-C came before it started
        return TrialOutcome("STOPPED", reason="interrupted")
    try:
        return TrialOutcome("COMPLETE", objective(trial))
    except optuna.TrialPruned as exc:
        return TrialOutcome("PRUNED", reason=str(exc))
    except KeyboardInterrupt:
        return TrialOutcome("STOPPED", reason="interrupted")
    except StorageLost as exc:
        return TrialOutcome("LOST", reason=" ".join(map(str, exc.args)))
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure; the study goes on
        return TrialOutcome("FAIL", reason=f"{type(exc).__name__}: {exc}")
    finally:
        gc.collect()


_HERE: dict[tuple, tuple] = {}  # in a training process: its study and objective, made once


def _run_job(job: TrialJob) -> TrialOutcome:
    """A trial in a training process (study.parallel): the objective is made once per
    process, and reads the trial the parent asked, params already drawn."""
    key = (job.url, job.study_name, job.parent_run_id)
    if key not in _HERE:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = load_study(job.cfg, make_storage(job.cfg, job.url), job.study_name, check=False)
        interrupt = Interrupt()
        objective = Objective(job.cfg, Tracker(job.cfg), job.parent_run_id, study.study_name,
                              callbacks=job.callbacks, interrupt=interrupt,
                              storage_url=redact(job.url))
        _HERE[key] = (study, objective)
    study, objective = _HERE[key]
    with objective.interrupt.installed(redact(job.url)):
        return run_trial(objective, optuna.Trial(study, job.trial_id))


@contextmanager
def heartbeats(study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """The asking worker beats for its trials from ask to tell (trained here or in a child):
    a trial asked but not yet started is held too, and all stop beating if the worker dies."""
    from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses

    threads = [get_heartbeat_thread(t._trial_id, study._storage) for t in trials]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.join()


class Session:
    """One `study search`: batches of configurations until the target (`complete`: the study
    holds `search.n_trials` finished configurations; else this session has run `add`) or a
    stop, then the summary, written wherever the numbers are read."""

    def __init__(self, cfg: Config, study: optuna.Study, objective: Objective,
                 parent: RunHandle, url: str, add: int | None, timeout: float | None):
        self.cfg, self.study, self.objective, self.parent = cfg, study, objective, parent
        self.url, self.storage_url = url, redact(url)
        self.add, self.timeout, self.ran = add, timeout, 0
        self.target = (len(Slots(study.get_trials(deepcopy=False)).finished) + add
                       if add is not None else cfg.search.n_trials)

    # ------------------------------------------------------------------ asking
    def _claim(self, slot: int, slots: Slots) -> optuna.Trial:
        """The trial of `slot` that waits (the authors' trial), or a new one re-running its
        unfinished configuration with its params, slot and batch."""
        waiting = slots.waiting.get(slot)
        if waiting is None:
            last = slots.last_of(slot)
            keep = {k: v for k, v in last.user_attrs.items()
                    if k in (SLOT_ATTR, BATCH_ATTR, design.ARM_ATTR)}
            self.study.enqueue_trial(last.params, user_attrs={
                **keep, RETRY_ATTR: last.user_attrs.get(RETRY_ATTR, last.number)})
            waiting = Slots(self.study.get_trials(deepcopy=False)).waiting[slot]
        if not self.study._storage.set_trial_state_values(waiting._trial_id,
                                                          state=TrialState.RUNNING):
            raise StudyError(f"trial {waiting.number} was taken by another worker")
        return optuna.Trial(self.study, waiting._trial_id)

    def _new(self, slot: int) -> optuna.Trial:
        self.study.sampler = slot_sampler(self.cfg, slot)
        with warnings.catch_warnings():  # heartbeats are beaten here, see `heartbeats`
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed")
            trial = self.study.ask()
        if slot_of(trial._cached_frozen_trial) is not None:
            raise StudyError(f"trial {trial.number} of slot {slot_of(trial._cached_frozen_trial)} "
                             "was waiting where a new configuration was due")
        trial.set_user_attr(SLOT_ATTR, slot)
        trial.set_user_attr(BATCH_ATTR, slot // self.cfg.search.batch)
        return trial

    def next_batch(self) -> list[optuna.Trial]:
        """The next batch, under the storage's lock (several workers may share the study):
        the lowest batch that has work, its unfinished configurations re-run and its new
        slots drawn (up to `search.n_trials` when completing); empty at the target."""
        room = (self.add - self.ran) if self.add is not None else None
        if room is not None and room <= 0:
            return []
        size = self.cfg.search.batch
        slots = Slots(self.study.get_trials(deepcopy=False))
        redo = sorted(set(slots.unfinished) | set(slots.waiting))
        end = None if self.add is not None else self.cfg.search.n_trials
        if not redo and end is not None and slots.next >= end:
            return []
        batch = min([s // size for s in redo] + [slots.next // size])
        new = range(max(slots.next, batch * size), (batch + 1) * size)
        chosen = sorted([s for s in redo if s // size == batch]
                        + [s for s in new if end is None or s < end])[:room]
        trials = [self._claim(s, slots) if s in redo else self._new(s) for s in chosen]
        for trial in trials:
            trial.set_user_attr(WORKER_ATTR, worker_name())  # held by this worker until told
            suggest(self.cfg, trial)  # the params are drawn here, in slot order
        return trials

    # ------------------------------------------------------------------ running
    def _tell(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        if outcome.state == "COMPLETE":
            self.study.tell(trial.number, outcome.value)
        elif outcome.state == "PRUNED":
            self.study.tell(trial.number, state=TrialState.PRUNED)
        else:
            if outcome.state == "STOPPED" and "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", outcome.reason)
            self.study.tell(trial.number, state=TrialState.FAIL)
        value = outcome.value if outcome.value is not None else "-"
        why = f" ({outcome.reason})" if outcome.state in ("FAIL", "STOPPED") else ""
        state = "FAIL" if outcome.state == "STOPPED" else outcome.state
        print(f"trial {trial.number} (slot {slot_of(trial._cached_frozen_trial)}): {state}"
              f"{why} params={trial.params} tune F1={value}", flush=True)

    def run(self, pool: parallel.SideBySide) -> str | None:
        """Batches until the target; what stopped the session short of it (None: nothing)."""
        started = time.monotonic()
        interrupt = self.objective.interrupt
        while True:
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                return "time bound"
            with schema_lock(self.url), storage_guard(self.storage_url):
                close_stale(self.study, self.objective.tracker)
                batch = self.next_batch()
            if not batch:
                return None
            jobs = [TrialJob(self.cfg, self.url, self.study.study_name, t._trial_id,
                             self.parent.run_id, self.objective.callbacks) for t in batch]
            with heartbeats(self.study, batch), storage_guard(self.storage_url):
                if pool.pool is None:  # here: the trials this process asked
                    outcomes = [o for _, o in pool.completed(
                        lambda t: run_trial(self.objective, t), batch)]
                else:
                    outcomes = pool.map(_run_job, jobs, lambda: interrupt.requested)
                lost = [o for o in outcomes if o.state == "LOST"]
                if lost:
                    raise StorageLost(self.storage_url, lost[0].reason)
                for trial, outcome in sorted(zip(batch, outcomes), key=lambda p: p[0].number):
                    self._tell(trial, outcome)
            self.ran += len(batch)
            if self.cfg.search.keep_weights:
                prune_weights(self.study, self.cfg)
            self.parent.describe(trials_markdown(self.study))
            interrupt.check()  # no new batch after a Ctrl-C

    # ------------------------------------------------------------------ the record
    def record(self, stopped_by: str | None) -> dict:
        """The summary, wherever the numbers are read: reports/search.json beside trials.csv,
        the study (for `best` and the report), the parent run's tags, metrics and
        description; a cut session says so in words."""
        configurations = len(Slots(self.study.get_trials(deepcopy=False)).finished)
        stopped = None
        if stopped_by is not None and configurations < self.target:
            stopped = (f"by {STOP_WORDS.get(stopped_by, stopped_by)} after {configurations} "
                       f"of {self.target} configurations")
        elif stopped_by is not None:
            stopped_by = None  # the target was reached anyway
        session = {"target": self.target, "stopped_by": stopped_by, "stopped": stopped}
        self.study.set_user_attr(SESSION_ATTR, session)
        doc = {**summarise(self.study), "parent_run_id": self.parent.run_id}
        layout = Layout.of(self.cfg)
        export_trials(self.study, layout.reports.trials)
        write_search_summary(layout.reports.search, doc)
        self.parent.set_tags({**{k: v for k, v in doc.items() if k.startswith(("best", "n_"))},
                              "configurations": f"{configurations} of {self.target}",
                              "stopped": stopped or "no"})
        self.parent.describe(trials_markdown(self.study, stopped))
        if doc.get("best_trial") is not None:
            self.parent.log_metrics({k: v for k, v in (
                ("best_tune_f1", doc["best_tune_f1"]), ("tune_f1", doc["best_tune_f1"]),
                ("dev_f1", doc.get("best_dev_f1")),
                ("dev_exact_match", doc.get("best_dev_exact_match"))) if v is not None})
        return doc


STOPS = ((KeyboardInterrupt, "Ctrl-C"),)  # what ends a session early, by exception
STOP_WORDS = {"time bound": "the time bound"}


def check_session(n_trials: int | None, timeout: float | None) -> None:
    """A session's numbers, refused before anything is opened or written."""
    if n_trials is not None and n_trials < 1:
        raise StudyError(f"--n-trials must be at least 1 (got {n_trials})")
    if timeout is not None and not timeout > 0:
        raise StudyError(f"--timeout must be greater than 0 seconds (got {timeout})")


def run(cfg: Config, n_trials: int | None = None, timeout: float | None = None,
        storage: str | None = None, study_name: str | None = None,
        callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Complete the study to `search.n_trials` configurations, or, with `n_trials`
    (--n-trials), add that many; `timeout` (--timeout) stops starting batches after that
    many seconds. `callbacks` are Trainer callbacks given to every trial. Bad numbers are
    refused before anything is opened or written."""
    check_session(n_trials, timeout)
    interrupt = Interrupt()
    url = resolve_url(storage or cfg.storage_url)
    try:
        with interrupt.installed(redact(url)):
            return _run(cfg, interrupt, url, study_name, callbacks, n_trials, timeout)
    except StorageLost as exc:
        where, why = exc.args
        raise StudyError(f"lost the Optuna storage {where} ({why}); the running trial is "
                         "left to the heartbeats: run again once the database is back") from None


def _start_anew(cfg: Config, study: optuna.Study, storage, differ: list[str]) -> optuna.Study:
    """The pipeline's study, made by other settings or code: kept under another name (its
    trials and runs stay), and the study started anew, so the stage's result is a function
    of the code and params it runs with, not of what the checkout searched before."""
    names = set(optuna.get_all_study_names(storage))
    archive = next(f"{study.study_name}~{i}" for i in range(1, 10**6)
                   if f"{study.study_name}~{i}" not in names)
    optuna.copy_study(from_study_name=study.study_name, from_storage=storage,
                      to_storage=storage, to_study_name=archive)
    optuna.delete_study(study_name=study.study_name, storage=storage)
    shutil.rmtree(Layout.of(cfg).search.trials, ignore_errors=True)  # the old trials' weights
    print(f"study {study.study_name}: made with other settings or code ({'; '.join(differ[:3])}"
          f"{' ...' if len(differ) > 3 else ''}); kept as {archive!r}, starting it anew",
          flush=True)
    return load_study(cfg, storage, study.study_name, check=False)


def _run(cfg: Config, interrupt: Interrupt, url: str, study_name: str | None,
         callbacks: Sequence[TrainerCallback], add: int | None, timeout: float | None) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(cfg)
    storage_obj = make_storage(cfg, url, DeadWorkerTrial(tracker))
    storage_url = redact(url)  # for tags and the summary: never the database password
    study = load_study(cfg, storage_obj, study_name, check=False)
    objective = Objective(cfg, tracker, "", study.study_name, callbacks=callbacks,
                          interrupt=interrupt, storage_url=storage_url)
    with ExitStack() as stack:
        # Workers starting together: one gives a new study its first trial (the authors'
        # setting) and its parent run; the others find both.
        with schema_lock(url):
            differ = design.differences(study, cfg)
            if differ and add is None:
                study = _start_anew(cfg, study, storage_obj, differ)
            elif differ:
                raise design.refusal(study, differ, "start a new study with --study-name NAME, "
                                     "or run `study search` without --n-trials to start it anew")
            design.initialise(study, cfg)
            with known_experimental():  # since Optuna 3.2; optuna-dashboard's axis name
                study.set_metric_names([OBJECTIVE_NAME])  # not "Objective 0"
            parent = stack.enter_context(parent_run(cfg, tracker, study, storage_url, storage_obj))
        objective.parent_run_id = parent.run_id
        interrupt.check()  # a Ctrl-C while the parent run was found: it ends KILLED
        closed = close_stale(study, tracker)
        if closed:
            print(f"closed {closed} MLflow run(s) left RUNNING by a dead worker")
        session = Session(cfg, study, objective, parent, url, add, timeout)
        processes = min(cfg.runtime.processes, cfg.search.batch)
        warm_up(cfg)  # made once here, not by each training process at once
        try:
            with parallel.SideBySide(processes, cfg.runtime.process_threads) as pool:
                stopped_by = session.run(pool)
        except StorageLost:
            raise  # the summary is read from the study: nothing to record without it
        except BaseException as exc:
            session.record(next((why for kind, why in STOPS if isinstance(exc, kind)),
                                type(exc).__name__))
            raise
        doc = session.record(stopped_by)
    cut = f"; stopped {doc['stopped']}" if doc.get("stopped") else ""
    print(f"study {study.study_name}: {doc['configurations']} configurations of "
          f"{session.target} ({doc['n_complete']} complete, {doc['n_pruned']} pruned, "
          f"{doc['n_failed']} failed trials){cut}; best trial {doc.get('best_trial')} "
          f"tune F1 {doc.get('best_tune_f1')}", flush=True)
    return doc


def warm_up(cfg: Config) -> None:
    """What every trial reads and the first one would make: the student's windows and the
    teacher's logits on them, made here once, before the trials start."""
    from study.distill import prepare_caches

    prepare_caches(cfg)
