"""Opening the databases that several workers share: the Optuna study storage and the
MLflow tracking store.

Workers started together all find a new database without its tables and all try to create
them; on SQLite the losers fail with `table ... already exists`, on PostgreSQL with a
duplicate-object error. `schema_lock` serialises that first creation with the backend's own
lock (a file lock next to a SQLite file, an advisory lock on PostgreSQL, GET_LOCK on MySQL),
so the second worker only opens what the first one made. Nothing is retried.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from study.errors import StudyError

SQLITE = "sqlite:///"
LOCK_WAIT_S = 120  # creating a schema takes well under a second; this only bounds a hang
SQLITE_WAIT_S = 60  # a writer holds SQLite's lock for milliseconds; this bounds a busy machine


def sqlite_path(url: str) -> Path | None:
    return Path(url[len(SQLITE):]) if url.startswith(SQLITE) else None


@contextmanager
def known_experimental() -> Iterator[None]:
    """Quiet Optuna's ExperimentalWarning around a call the project relies on knowingly
    (heartbeats, their retry callback, metric names); other warnings still show."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def absolute_sqlite(url: str) -> str:
    """A SQLite URL with its file resolved against the current folder now.

    MLflow caches one store per URL text, so a relative `sqlite:///mlruns/mlflow.db` opened
    again from another folder of the same process would reach the first folder's file.
    """
    db = sqlite_path(url)
    return f"{SQLITE}{db.resolve()}" if db is not None and not db.is_absolute() else url


def _busy_timeout(dbapi_connection, connection_record) -> None:
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_WAIT_S * 1000}")


def wait_for_sqlite_locks() -> None:
    """Every SQLite connection this process opens through SQLAlchemy waits for another
    writer's lock (up to SQLITE_WAIT_S) instead of failing with "database is locked": MLflow
    opens its store with the driver's 5 s default, and a search's training processes and
    their parent write to one store together, on a machine that may be busy."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _busy_timeout):
        event.listen(Engine, "connect", _busy_timeout)


def _lock_key(url: str) -> int:
    # A signed 32-bit key per database URL, so unrelated databases on one server do not
    # wait for each other.
    return zlib.crc32(url.encode()) - 2**31


@contextmanager
def _sqlite_lock(db: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot create the folder {db.parent}: {exc.strerror}") from None
    try:
        with FileLock(str(db) + ".lock", timeout=LOCK_WAIT_S):
            yield
    except Timeout:
        raise StudyError(f"waited {LOCK_WAIT_S} s for the lock on {db}") from None


@contextmanager
def _server_lock(url: str, acquire: str, release: str) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(acquire), {"key": _lock_key(url)})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(release), {"key": _lock_key(url)})
    finally:
        engine.dispose()


def schema_lock(url: str):
    """Held while a process creates or checks the tables of the database at `url`."""
    db = sqlite_path(url)
    if db is not None:
        return _sqlite_lock(db)
    if url.startswith("postgresql"):
        return _server_lock(url, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
    if url.startswith("mysql"):
        return _server_lock(url, f"SELECT GET_LOCK(CAST(:key AS CHAR), {LOCK_WAIT_S})",
                            "SELECT RELEASE_LOCK(CAST(:key AS CHAR))")
    return nullcontext()


def resolve_url(spec: str) -> str:
    """The database URL that `spec` names: `env:NAME` reads the environment variable NAME,
    `file:PATH` the first line of a file; anything else is the URL itself.

    A URL with a password then stays out of command lines, params.yaml and shell history;
    messages and run tags show it through `redact`.
    """
    if spec.startswith("env:"):
        name = spec[len("env:"):]
        if not os.environ.get(name):
            raise StudyError(f"storage {spec}: the environment variable {name} is not set")
        return os.environ[name].strip()
    if spec.startswith("file:"):
        path = Path(spec[len("file:"):]).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise StudyError(f"storage {spec}: cannot read {path}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise StudyError(f"storage {spec}: {path} is empty")
        return lines[0].strip()
    return spec


# A worker's connections to a database server. Optuna uses its storage from two threads:
# the main thread (ask, report, tell) and, during a trial, the heartbeat thread; each needs
# one connection at a time, so a pool of two, never more (SQLAlchemy's default, 5 + 10
# overflow per engine, is sized for a web application). While a worker opens the study it
# also holds the schema lock's own connection: STORAGE_CONNECTIONS + 1 at most.
STORAGE_CONNECTIONS = 2
POOL_WAIT_S = 60  # a checkout waits this long for one of the two, then fails
CONNECT_TIMEOUT_S = 10  # a server that does not answer: fail, do not hang
STATEMENT_TIMEOUT_S = 60  # Optuna's statements take milliseconds; this bounds a stuck one


def storage_engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments for the Optuna storage at `url`."""
    if sqlite_path(url) is not None:
        # Several local workers share one file: wait for SQLite's write lock, do not fail.
        return {"connect_args": {"timeout": SQLITE_WAIT_S}}
    kwargs: dict[str, Any] = {"pool_size": STORAGE_CONNECTIONS, "max_overflow": 0,
                              "pool_timeout": POOL_WAIT_S, "pool_pre_ping": True}
    if url.startswith("postgresql"):
        # libpq options (psycopg and psycopg2 alike): a bounded connect, TCP keepalives so
        # a vanished server is noticed within ~25 s mid-statement, a statement timeout.
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
            "keepalives_interval": 5, "keepalives_count": 3,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"}
    return kwargs


def open_optuna_storage(url: str, heartbeat_interval: int | None = None,
                        grace_period: int | None = None,
                        on_dead_trial: Callable | None = None):
    """An Optuna storage for `url` (any SQLAlchemy URL, `journal:PATH`, or `env:NAME` /
    `file:PATH` naming one), safe to open from several processes at once.
    `on_dead_trial(study, trial)` is called on each trial that heartbeats find dead."""
    import optuna
    import sqlalchemy.exc

    url = resolve_url(url)
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = storage_engine_kwargs(url)
    try:
        # Heartbeats are how a dead worker's trial is failed; Optuna still calls the
        # arguments experimental and warns on every open.
        with schema_lock(url), known_experimental():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period,
                                              heartbeat_stale_trial_callback=on_dead_trial)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        first = redact_in((str(exc).splitlines() or [type(exc).__name__])[0][:200], url)
        raise StudyError(f"cannot open Optuna storage {redact(url)}: {first}") from None


def redact_in(text: str, url: str) -> str:
    """`text` (a driver's or MLflow's error message about `url`) without the URL's password,
    wherever the message quotes it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return text
    if not password:
        return text
    from urllib.parse import quote

    for shown in {password, quote(password, safe="")}:
        text = text.replace(shown, "***")
    return text


def redact(url: str) -> str:
    """The URL without its password, for messages, logs and everything recorded
    (`Config.to_dict` applies it to every URL of the config)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a URL (journal:PATH, env:NAME, a path): nothing to hide
        return url
    # Only a URL with a password is rewritten: rendering escapes characters (`{profile}`
    # becomes %7Bprofile%7D), and a recorded value without a secret must stay as written.
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def is_lost_storage(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the database stopped answering: a refused or
    dropped connection, a connect or statement timeout, no free connection in the pool.
    Optuna wraps these in its StorageInternalError; programming errors are not among them."""
    import sqlalchemy.exc

    lost = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.TimeoutError)
    while exc is not None:
        if isinstance(exc, lost):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def root_message(exc: BaseException) -> str:
    """The driver's own words for a lost database (`psycopg.OperationalError: connection
    ... refused`), from the first DBAPI error in `exc`'s chain; else `exc`'s first line."""
    import sqlalchemy.exc

    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, sqlalchemy.exc.DBAPIError) and str(chain.orig).strip():
            return str(chain.orig).strip().splitlines()[0][:200]
        chain = chain.__cause__ or chain.__context__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
