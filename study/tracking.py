"""The one owner of MLflow runs.

Runs are created and ended here, through MlflowClient with explicit run ids: no fluent
"active run", so no "run already active" errors, and the Trainer's own MLflow reporting
stays off (report_to="none"); its metrics reach MLflow through `MlflowLogCallback`.
Every run is opened by a context manager here (`Tracker.run`, or `Tracker.shared_run` for
the study's parent) and ends as its block ends: FINISHED, FINISHED named, tagged and
described as pruned (Optuna stopped the trial), KILLED (Ctrl-C) or FAILED with its reason, never left RUNNING.
A process killed outright (SIGKILL, a lost machine) cannot end its run: a resumable training
continues it when it runs again (`Tracker.run(record=...)`), a search trial's is closed as
KILLED by the heartbeats.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from transformers import TrainerCallback

from study.config import Config
from study.errors import StudyError
from study.files import read_json, write_json
from study.layout import Layout
from study.storage import absolute_sqlite, redact, redact_in, schema_lock, wait_for_sqlite_locks

PARENT_TAG = "mlflow.parentRunId"
# Where a SQLite store records artifact locations (MLflow 3's schema): rewritten together
# when the store's artifact folder has moved with the checkout (`repoint_artifacts`).
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))
# MLflow stores a dataset digest in 36 characters: the split's SHA-256, shortened.
DIGEST_CHARS = 16
STATE_TAG = "optuna_state"  # a trial's Optuna state; PRUNED is set here, as the run ends
PRUNE_TAG = "prune_reason"
FAILURE_TAG = "failure_reason"
RESUMED_TAG = "resumed"  # how many times a resumable training's run was continued
NOTE_TAG = "mlflow.note.content"  # the run's Description in the UI (Markdown)
# MLflow has no PRUNED status: a pruned run keeps FINISHED (its numbers are valid) and says
# so in its name, which the runs list shows beside the status, and in its description.
PRUNED_SUFFIX = " (pruned)"
# What a run's numbers depend on beyond its code, config and data, tagged on every training:
# torch's thread count (it changes the low bits of a reduction; set by study.fit, where the
# count is applied), the CPU's instruction set, and a distilled run's teacher (the sha256 of
# its weights, and the key and content hash of the teacher-logit cache it read).
THREADS_TAG = "torch_threads"
CPU_TAG = "cpu_capability"
TEACHER_TAG = "teacher_sha256"
CACHE_TAG = "teacher_cache_key"
CACHE_SHA_TAG = "teacher_cache_sha256"
# The experiment's kind, which MLflow 3 UIs read to open a model-training experiment in their
# training pages rather than the GenAI ones (3.17 reads a per-browser setting instead, which
# `study ui` sets: study.ui_server). Set when the experiment is created; `study ui` adds it
# to experiments created before.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


# MLflow sizes its SQLAlchemy pool from the environment (mlflow/environment_variables.py;
# it passes max_overflow only when it is not 0). A worker logs from its main thread, so one
# pooled connection and one overflow bound a database tracking store to two connections
# per engine (SQLAlchemy's default is 5 + 10). An operator's own settings win.
MLFLOW_POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1",
                   "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "1"}


class RunAbandoned(BaseException):
    """Raised through a run's block when the process must stop without ending the run: the
    store that would record how it ended is gone. The run stays RUNNING; the process that
    finds its trial dead closes it (heartbeats: search.DeadWorkerTrial, search.close_stale).
    A BaseException, so that Optuna neither records it as the trial's failure nor tries to
    (the trial stays RUNNING for the heartbeats too)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its MLflow status, why, and whether Optuna pruned it."""

    status: str
    reason: str | None = None
    pruned: bool = False


def outcome_of(exc: BaseException | None) -> Outcome:
    """The one mapping from how a block ended to how its run ends."""
    if exc is None:
        return Outcome("FINISHED")
    if isinstance(exc, optuna.TrialPruned):
        # Pruning is the search working as meant: the run's numbers are valid, only fewer.
        return Outcome("FINISHED", str(exc), pruned=True)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome("KILLED", "interrupted")
    return Outcome("FAILED", f"{type(exc).__name__}: {exc}")


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        # The pipeline's own outputs (dvc.lock, reports/) change during `dvc repro`; only a
        # change to code or params makes the numbers come from something uncommitted.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                         ":(top,exclude)dvc.lock", ":(top,exclude)reports"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "accelerate", "optuna", "mlflow", "dvc"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def device_name() -> str:
    """The device, with torch's thread count now: a run opens before its training applies
    runtime.threads, so a training's own count is its THREADS_TAG (set by study.fit)."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cpu_capability() -> str:
    """The CPU instruction set torch's kernels use here (DEFAULT, AVX2, AVX512, ...): the
    same code on another set can round differently."""
    import torch
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        return "unknown"


def environment(cfg: Config, split_hashes: dict[str, str] | None = None) -> dict[str, str]:
    env = {**git_state(), **{f"version.{k}": v for k, v in package_versions().items()},
           "params_hash": cfg.hash(), "profile": cfg.profile, "device": device_name(),
           CPU_TAG: cpu_capability()}
    for name, digest in (split_hashes or {}).items():
        env[f"data.{name}_sha256"] = digest
    return env


def dataset_inputs(cfg: Config, split_hashes: dict[str, str]) -> list:
    """The splits as MLflow dataset inputs (the UI's Datasets column), digest = SHA-256."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    data = Layout.of(cfg).data
    return [DatasetInput(Dataset(name=split, digest=digest[:DIGEST_CHARS], source_type="local",
                                 source=json.dumps({"uri": str(data.split(split))}),
                                 profile=json.dumps({"sha256": digest})),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)])
            for split, digest in split_hashes.items()]


def _folder(uri: str | None) -> Path | None:
    return Path(uri[len("file://"):]) if uri and uri.startswith("file:///") else None


def repoint_artifacts(store: str, old: str, new: str | None) -> int:
    """Re-point a local store's recorded artifact locations from `old` to `new`: the
    checkout (store and artifact folder) was copied or moved. Returns the rows changed.

    MLflow records absolute locations (the experiment's, each run's, each logged model's and
    model version's) and has no API to change them, so a copy would keep writing into, and
    loading models from, the original folder. Only a SQLite store moves with the checkout,
    and only when `new` holds the artifacts (it exists, or `old` is gone): a changed
    tracking.artifact_location alone leaves the recorded runs where their files are.
    Call it under the store's `schema_lock` (Tracker does), so workers do not race.
    """
    old_dir, new_dir = _folder(old), _folder(new)
    if (not store.startswith("sqlite:///") or old_dir is None or new_dir is None
            or old_dir == new_dir or not (new_dir.is_dir() or not old_dir.exists())):
        return 0
    import sqlalchemy

    engine = sqlalchemy.create_engine(store, poolclass=sqlalchemy.pool.NullPool)
    changed = 0
    with engine.begin() as conn:  # one transaction: all or nothing
        tables = set(sqlalchemy.inspect(conn).get_table_names())
        for table, column in ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            # The folder itself, or a path below it (not a sibling sharing its prefix).
            changed += conn.execute(sqlalchemy.text(
                f"UPDATE {table} SET {column} = :new || substr({column}, :n + 1) "
                f"WHERE {column} = :old OR substr({column}, 1, :n + 1) = :old || '/'"),
                {"old": old, "new": new, "n": len(old)}).rowcount
    engine.dispose()
    return changed


# Seconds between samples of CPU, memory (and GPU) use: a few points a minute on runs that
# last minutes. MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it (the tests sample faster).
SYSTEM_METRICS_INTERVAL = 5.0


@contextmanager
def system_metrics(handle: RunHandle) -> Iterator[None]:
    """MLflow's own system metrics (system/cpu_utilization_percentage, system/system_memory_*,
    and system/gpu_* where a GPU and pynvml are present) sampled into the run while the block
    runs, so the UI shows a starved GPU next to the loss. Stopped (and flushed) before the run
    ends."""
    import logging

    # Its start/stop lines at INFO would print twice around every run.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        monitor = SystemMetricsMonitor(handle.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL,
                                       tracking_uri=handle.client.tracking_uri)
    except ImportError:  # psutil missing: the run is still tracked, without these metrics
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


class RunHandle:
    def __init__(self, client, run_id: str, resumed: bool = False):
        self.client, self.run_id = client, run_id
        # Continued by a resumed training: steps it logs again may be in the run already.
        self.resumed = resumed

    def logged_steps(self) -> dict[str, int]:
        """The last step each metric of the run was logged at (system metrics aside)."""
        metrics = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in metrics if not key.startswith("system/")}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and v == v]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        if items:
            self.client.log_batch(self.run_id, params=items)

    def describe(self, markdown: str) -> None:
        """The run's description (the UI renders it as Markdown above the run's details)."""
        self.set_tags({NOTE_TAG: markdown})

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        # Through JSON first: config values such as paths become their text.
        self.client.log_dict(self.run_id, json.loads(json.dumps(obj, default=str)), name)

    def log_model(self, flavor, **kwargs: Any):
        """Log a model into this run (`kwargs`: the flavor's save_model arguments); MLflow's
        ModelInfo. No fluent active run is opened: leaving one would end this run."""
        import mlflow
        from mlflow.models import Model

        # Without an active run, MLflow files the logged model under the fluent experiment.
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        return Model.log(artifact_path=None, flavor=flavor, run_id=self.run_id, **kwargs)


class Tracker:
    def __init__(self, cfg: Config):
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        uri = absolute_sqlite(cfg.tracking.uri)
        wait_for_sqlite_locks()
        if not uri.startswith(("sqlite:", "http:", "https:", "file:", "databricks")) and "://" in uri:
            for key, value in MLFLOW_POOL_ENV.items():
                os.environ.setdefault(key, value)
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        try:
            # The first call creates a new store's tables: one worker at a time.
            with schema_lock(uri):
                self.experiment_id = self._experiment_id(cfg.experiment_name)
        except (MlflowException, OSError) as exc:
            raise StudyError(f"cannot open MLflow tracking store {redact(uri)}: "
                             f"{redact_in(str(exc).splitlines()[0][:200], uri)}") from None

    def _artifact_root(self) -> str | None:
        """tracking.artifact_location as a URI, a local folder resolved against the current
        folder now (None: the tracking server's own, for a server store)."""
        location = self.cfg.tracking.artifact_location
        if "://" not in location:
            # A tracking server stores artifacts where its --artifacts-destination says
            # (mlflow-artifacts:), reachable by workers on every machine; a local folder is
            # only for a local store.
            remote = self.cfg.tracking.uri.startswith(("http://", "https://"))
            location = None if remote else Path(location).resolve().as_uri()
        return location

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        location = self._artifact_root()
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            repoint_artifacts(absolute_sqlite(self.cfg.tracking.uri), exp.artifact_location,
                              location)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags=EXPERIMENT_TAGS)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # A worker on another machine created it between our lookup and create.
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def run(self, name: str, role: str, on_end: Callable[[RunHandle, Outcome], None] | None = None,
            record: Path | None = None, **kwargs: Any) -> Iterator[RunHandle]:
        """A new run for the block; `on_end(handle, outcome)` runs just before it ends
        (a trial records its own state there). Exceptions pass through unchanged.

        `record`: a file in a resumable training's scratch folder (layout.CheckpointDir.run).
        The run it names is continued when it has not finished (left RUNNING by a killed
        process, or KILLED / FAILED by an interrupted one): the resumed training keeps one
        run, its status RUNNING again and its tag `resumed` counting the resumptions. Else
        (no record, or a run finished, deleted or of another store) a new run is started and
        recorded there."""
        handle = self._continue(record) if record is not None else None
        if handle is None:
            handle = self._start(name, role, **kwargs)
            if record is not None:
                write_json(record, {"mlflow_run_id": handle.run_id})
        with self._owned(handle, on_end), system_metrics(handle):
            yield handle

    @contextmanager
    def shared_run(self, name: str, role: str, recorded: str | None,
                   claim: Callable[[str], str], **kwargs: Any) -> Iterator[RunHandle]:
        """A run that several sessions and workers share (the study's parent).

        Resumed when `recorded` names a run of this store; else created, and `claim(run_id)`
        records it and returns the run that holds the claim: another worker's, when that one
        recorded its own first (then ours is deleted). Enter it under the storage's lock.
        """
        handle = self._resume(recorded) if recorded else None
        if handle is None:
            handle = self._start(name, role, **kwargs)
            try:
                winner = claim(handle.run_id)
            except BaseException as exc:  # not recorded anywhere: end it here, not RUNNING
                self._end(handle, outcome_of(exc))
                raise
            if winner != handle.run_id:
                self.client.delete_run(handle.run_id)
                handle = RunHandle(self.client, winner)
        with self._owned(handle):
            yield handle

    @contextmanager
    def _owned(self, handle: RunHandle,
               on_end: Callable[[RunHandle, Outcome], None] | None = None) -> Iterator[RunHandle]:
        try:
            yield handle
        except RunAbandoned:
            raise
        except BaseException as exc:
            self._finish(handle, outcome_of(exc), on_end)
            raise
        self._finish(handle, outcome_of(None), on_end)

    def _finish(self, handle: RunHandle, outcome: Outcome,
                on_end: Callable[[RunHandle, Outcome], None] | None) -> None:
        try:
            if on_end is not None:
                on_end(handle, outcome)
        finally:
            self._end(handle, outcome)

    def _start(self, name: str, role: str, params: dict[str, Any] | None = None,
               tags: dict[str, Any] | None = None, parent_run_id: str | None = None,
               split_hashes: dict[str, str] | None = None) -> RunHandle:
        all_tags = {"role": role, "mlflow.runName": name, **environment(self.cfg, split_hashes),
                    **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={k: str(v) for k, v in all_tags.items()})
        handle = RunHandle(self.client, run.info.run_id)
        handle.log_params(params or {})
        if split_hashes:
            self.client.log_inputs(run.info.run_id, datasets=dataset_inputs(self.cfg, split_hashes))
        return handle

    def _continue(self, record: Path) -> RunHandle | None:
        if not record.exists():
            return None
        run_id = read_json(record, "run record", "").get("mlflow_run_id")
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - recorded in another store, or gone: start anew
            return None
        if run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
            return None
        count = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
        self.client.update_run(run_id, status="RUNNING")
        handle = RunHandle(self.client, run_id, resumed=True)
        handle.set_tags({RESUMED_TAG: count})
        return handle

    def _resume(self, run_id: str) -> RunHandle | None:
        try:
            self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # noqa: BLE001 - recorded in another MLflow store: start anew here
            return None
        return RunHandle(self.client, run_id)

    def _end(self, handle: RunHandle, outcome: Outcome) -> None:
        if outcome.pruned:
            handle.set_tags({STATE_TAG: "PRUNED", PRUNE_TAG: outcome.reason or ""})
            # Plain text: the runs table shows a description raw, in one line.
            handle.describe(f"Pruned by Optuna: {outcome.reason or 'no reason given'}. "
                            "Its metrics are valid, from fewer training steps.")
            name = self.client.get_run(handle.run_id).info.run_name
            if not name.endswith(PRUNED_SUFFIX):
                self.client.update_run(handle.run_id, name=name + PRUNED_SUFFIX)
        elif outcome.reason:
            handle.set_tags({FAILURE_TAG: outcome.reason[:4000]})
        self.client.set_terminated(handle.run_id, status=outcome.status)

    def close_stale_runs(self, run_ids: list[str], status: str = "KILLED", reason: str = "") -> int:
        """End runs a killed worker left RUNNING (found through Optuna's failed trials)."""
        closed = 0
        for run_id in run_ids:
            try:
                run = self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - a run id from another store: nothing to close
                continue
            if run.info.status == "RUNNING":
                self._end(RunHandle(self.client, run_id), Outcome(status, reason or None))
                closed += 1
        return closed


class MlflowLogCallback(TrainerCallback):
    """Forwards the Trainer's logs (loss and its CE/KD parts, lr, eval EM/F1) to one run.

    In a continued run (a training resumed from its last checkpoint) the steps between that
    checkpoint and the kill are trained again, and log the same numbers: a metric at a step
    the run already holds is not logged twice."""

    def __init__(self, handle: RunHandle):
        self.handle = handle
        self.logged = handle.logged_steps() if handle.resumed else {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The Trainer's evaluations during training are on `tune` and named eval_*; logged
        # as tune_*, the step points and the final tune score share one chart.
        step = state.global_step
        metrics = {("tune_" + k[len("eval_"):] if k.startswith("eval_") else k): v
                   for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        self.handle.log_metrics({k: v for k, v in metrics.items()
                                 if step > self.logged.get(k, -1)}, step=step)
