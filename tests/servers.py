"""A real PostgreSQL server and a real `mlflow server` (basic auth, artifacts proxied),
started by a test on 127.0.0.1 and stopped and removed at its end.

PostgreSQL comes from Debian's `postgresql` package (`.ci/run` installs it). It refuses to
run as root, so as root the server runs as the `postgres` user the package creates. Both
servers only accept a password: scram-sha-256 for PostgreSQL, MLflow's basic-auth app for
the tracking server.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 90
MAX_CONNECTIONS = 100  # PostgreSQL's default: the budget the tests hold workers to
# The tracking server's SQLAlchemy pool, read by MLflow from the environment (README,
# "Several machines"): two pooled connections and two overflow per engine; the server opens
# one engine for runs and one for the model registry.
MLFLOW_SERVER_POOL_ENV = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2",
                          "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path:
    initdb = shutil.which("initdb")
    found = [Path(initdb).resolve().parent] if initdb else []
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    for bindir in found:
        if (bindir / "postgres").exists():
            return bindir
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql "
                       "(.ci/run does)")


def _as_server_user() -> dict:
    """Popen arguments that drop root to the `postgres` user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_until(ready, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    datadir: Path
    version: str
    bindir: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Serve the cluster on its port (again, after `stop`: same data, same port)."""
        with self.log.open("a") as fh:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", f"max_connections={MAX_CONNECTIONS}"],
                stdout=fh, stderr=subprocess.STDOUT, **_as_server_user())
        _wait_until(lambda: _can_connect(self), self.proc, "postgres", self.log)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # PostgreSQL's "fast" shutdown

    def url(self, db: str, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres", **kwargs):
        import psycopg

        args = {"host": "127.0.0.1", "port": self.port, "user": self.user, "dbname": db,
                "password": self.password, "connect_timeout": 5, **kwargs}
        return psycopg.connect(**args)

    def create_database(self, name: str) -> str:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb a fresh cluster (password auth only), serve it on a free loopback port."""
    bindir = postgres_bindir()
    # Not under pytest's tmp_path: its folders are private to root, and the server runs
    # as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="kdqa-pg-"))
    drop = _as_server_user()
    try:
        if drop:
            shutil.chown(root, "postgres", "postgres")
        password = secrets.token_urlsafe(16)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if drop:
            shutil.chown(pwfile, "postgres", "postgres")
        datadir, log = root / "data", root / "server.log"
        subprocess.run([str(bindir / "initdb"), "-D", str(datadir), "-U", "kd",
                        f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120, **drop)
        pwfile.unlink()
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                                 check=True,
                                 text=True).stdout.strip()
        server = Postgres(free_port(), "kd", password, datadir, version, bindir, log)
        try:
            server.start()
            yield server
        finally:
            if server.proc is not None:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _can_connect(server: Postgres) -> bool:
    import psycopg

    try:
        server.connect().close()
        return True
    except psycopg.OperationalError:
        return False


@dataclass
class MlflowServer:
    url: str
    admin: str
    admin_password: str
    artifacts: Path


@contextmanager
def mlflow_server(root: Path, backend_uri: str) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth` with artifacts proxied under root/artifacts."""
    root.mkdir(parents=True, exist_ok=True)
    admin_password = secrets.token_urlsafe(16)
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                   f"admin_username = admin\nadmin_password = {admin_password}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port, artifacts, log = free_port(), root / "artifacts", root / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    # The backend URI holds a password: in the environment, not on the command line.
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_BACKEND_STORE_URI=backend_uri,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
               # No GenAI job runners: eight idle processes the tests do not use.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **MLFLOW_SERVER_POOL_ENV)
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--artifacts-destination", artifacts.as_uri()]
    with log.open("w") as fh:
        # Its own process group: the server forks workers, and all of them must stop.
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _answers(url + "/health"), proc, "mlflow server", log)
        yield MlflowServer(url, "admin", admin_password, artifacts)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main(argv: list[str]) -> int:
    """`python tests/servers.py 'COMMAND'`: run a shell command (in the current folder) with
    both servers up on 127.0.0.1: STUDY_STORAGE names a new `optuna` database, STUDY_TRACKING
    the tracking server, MLFLOW_TRACKING_USERNAME/PASSWORD its admin. `study bench --workers`
    is measured this way (README, "Several machines")."""
    if len(argv) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    with postgres_server() as pg:
        root = Path(tempfile.mkdtemp(prefix="kdqa-mlflow-"))
        try:
            with mlflow_server(root, pg.create_database("mlflow")) as tracking:
                env = {**os.environ, "STUDY_STORAGE": pg.create_database("optuna"),
                       "STUDY_TRACKING": tracking.url,
                       "MLFLOW_TRACKING_USERNAME": tracking.admin,
                       "MLFLOW_TRACKING_PASSWORD": tracking.admin_password}
                return subprocess.run(["bash", "-c", argv[0]], env=env, check=False).returncode
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
