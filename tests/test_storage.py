"""Workers that open a new shared database at the same instant (issue: two search workers
starting together, one refused with `table studies already exists`).

The race is made deterministic: worker processes are started once, and in every round all
of them pass a barrier and open the same brand-new SQLite file at once. On the old code
(create the schema, retry only on an IntegrityError message) several rounds end with a
worker refused; with the schema lock none can.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from study.errors import StudyError
from study.storage import open_optuna_storage, redact, schema_lock

WORKERS = 4
ROUNDS = 12


def _worker(root: str, barrier, results, kind: str) -> None:
    for round_no in range(ROUNDS):
        url = f"sqlite:///{root}/round{round_no}.db"
        barrier.wait(timeout=120)
        try:
            if kind == "optuna":
                import optuna

                storage = open_optuna_storage(url, heartbeat_interval=10, grace_period=30)
                optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                    direction="maximize")
            else:
                from mlflow.tracking import MlflowClient

                with schema_lock(url):
                    MlflowClient(tracking_uri=url).search_experiments()
            results.put((round_no, "ok"))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
            results.put((round_no, f"{type(exc).__name__}: {exc}"[:300]))


def _race(tmp_path: Path, kind: str) -> list[tuple[int, str]]:
    ctx = mp.get_context("spawn")  # no forked torch/OpenMP state in the workers
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), barrier, results, kind))
             for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(WORKERS * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return outcomes


@pytest.mark.slow
def test_workers_creating_one_optuna_study_together_all_get_it(tmp_path):
    outcomes = _race(tmp_path, "optuna")
    failures = [o for o in outcomes if o[1] != "ok"]
    assert failures == []
    import optuna

    for round_no in range(ROUNDS):
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/round{round_no}.db")
        assert study.trials == []


@pytest.mark.slow
def test_workers_creating_one_mlflow_store_together_all_open_it(tmp_path):
    outcomes = _race(tmp_path, "mlflow")
    assert [o for o in outcomes if o[1] != "ok"] == []


def test_a_bad_storage_url_is_one_line_without_the_password(tmp_path):
    with pytest.raises(StudyError) as err:
        open_optuna_storage("postgresql://kd:s3cret@127.0.0.1:1/nodb")
    message = str(err.value)
    assert "s3cret" not in message and "\n" not in message
    assert message.startswith("cannot open Optuna storage postgresql://kd:***@127.0.0.1:1/nodb")


def test_redact_hides_only_the_password():
    assert redact("postgresql://u:p@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("journal:/tmp/x.log") == "journal:/tmp/x.log"
    assert redact("sqlite:///a/b.db") == "sqlite:///a/b.db"
