"""Workers that open a new shared database at the same instant (issue: two search workers
starting together, one refused with `table studies already exists`).

The race is made deterministic: worker processes are started once, and in every round all
of them pass a barrier and open the same brand-new SQLite file at once. On the old code
(create the schema, retry only on an IntegrityError message) several rounds end with a
worker refused; with the schema lock none can.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest

from study.errors import StudyError
from study.storage import open_optuna_storage, redact, resolve_url, schema_lock

WORKERS = 4
ROUNDS = 12


def _worker(url_template: str, barrier, results, kind: str) -> None:
    for round_no in range(ROUNDS):
        url = url_template.format(round=round_no)
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


def race(url_template: str, kind: str) -> list[tuple[int, str]]:
    """Each round, WORKERS processes open the database `url_template.format(round=n)` at once."""
    ctx = mp.get_context("spawn")  # no forked torch/OpenMP state in the workers
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url_template, barrier, results, kind))
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
    outcomes = race(f"sqlite:///{tmp_path}/round{{round}}.db", "optuna")
    failures = [o for o in outcomes if o[1] != "ok"]
    assert failures == []
    import optuna

    for round_no in range(ROUNDS):
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/round{round_no}.db")
        assert study.trials == []


@pytest.mark.slow
def test_workers_creating_one_mlflow_store_together_all_open_it(tmp_path):
    outcomes = race(f"sqlite:///{tmp_path}/round{{round}}.db", "mlflow")
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


def test_storage_named_by_an_environment_variable_or_a_file(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("STUDY_STORAGE", url)
    assert resolve_url("env:STUDY_STORAGE") == url
    (tmp_path / "url").write_text(url + "\n# comment lines after the first are ignored\n")
    assert resolve_url(f"file:{tmp_path / 'url'}") == url
    assert resolve_url(url) == url
    import optuna

    storage = open_optuna_storage("env:STUDY_STORAGE")
    optuna.create_study(study_name="e", storage=storage)
    assert optuna.load_study(study_name="e", storage=url).study_name == "e"


def test_a_missing_storage_variable_or_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_STORAGE", raising=False)
    with pytest.raises(StudyError, match="environment variable NO_SUCH_STORAGE is not set"):
        resolve_url("env:NO_SUCH_STORAGE")
    with pytest.raises(StudyError, match="cannot read"):
        resolve_url(f"file:{tmp_path / 'absent'}")
    (tmp_path / "empty").write_text("")
    with pytest.raises(StudyError, match="is empty"):
        resolve_url(f"file:{tmp_path / 'empty'}")


def test_a_relative_sqlite_store_is_resolved_where_it_is_opened(tmp_path, monkeypatch):
    from study.storage import absolute_sqlite

    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///mlruns/mlflow.db") == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert absolute_sqlite("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_sqlite("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_server_storage_holds_a_small_bounded_pool_and_a_local_one_waits_for_its_lock():
    from study.storage import STORAGE_CONNECTIONS, storage_engine_kwargs

    kwargs = storage_engine_kwargs("postgresql+psycopg://kd:pw@db-host/optuna")
    assert kwargs["pool_size"] == STORAGE_CONNECTIONS == 2 and kwargs["max_overflow"] == 0
    assert kwargs["connect_args"]["connect_timeout"] > 0
    assert "statement_timeout" in kwargs["connect_args"]["options"]
    assert storage_engine_kwargs("mysql+pymysql://kd:pw@db-host/optuna")["max_overflow"] == 0
    assert storage_engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 60}}


def test_a_database_that_does_not_answer_is_one_line_naming_it_without_its_password():
    # Nothing listens on this loopback port: refused at once, no hang.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StudyError) as err:
        open_optuna_storage(f"postgresql+psycopg://kd:s3cret@127.0.0.1:{port}/optuna")
    text = str(err.value)
    assert text.startswith(f"cannot open Optuna storage postgresql+psycopg://kd:***@127.0.0.1:{port}")
    assert "s3cret" not in text and "\n" not in text


def test_only_a_lost_connection_counts_as_a_lost_storage():
    import optuna
    import sqlalchemy.exc

    from study.storage import is_lost_storage, root_message

    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    try:
        try:
            raise refused
        except sqlalchemy.exc.SQLAlchemyError as exc:  # as Optuna wraps it
            raise optuna.exceptions.StorageInternalError("commit failed") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_lost_storage(wrapped)
        assert root_message(wrapped) == "connection refused"  # the driver's words
    assert not is_lost_storage(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("dup")))
    assert not is_lost_storage(ValueError("a bug"))
