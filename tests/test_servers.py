"""Several machines, on real servers: a PostgreSQL server holds the Optuna study and the
MLflow store, and a real `mlflow server` (basic auth, artifacts proxied through it) takes
every run. Both are started here on 127.0.0.1 and stopped at the end (tests/servers.py).

Workers get their credentials only through the environment: the database URL from
STUDY_STORAGE (`--storage env:STUDY_STORAGE`), MLflow's user from MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import study_command
from servers import MLFLOW_SERVER_POOL_ENV, mlflow_server, postgres_server
from test_storage import ROUNDS, WORKERS, race

from study.bench.workers import BackendPeak
from study.storage import STORAGE_CONNECTIONS, open_optuna_storage

pytestmark = pytest.mark.slow
# Only a guard against a hung worker: every wait ends on a state (or a worker's exit), and
# with a CPU hog on each core three smoke workers take many minutes.
HUNG_S = 1800
GRACE_S = 15  # generous: three trainings share two cores, a live heartbeat must not look dead
# The connection budget (README, "Several machines"): a worker holds its Optuna storage's
# pool and, while it opens the study, the schema lock's connection; the tracking server
# holds two engines' pools (runs, model registry); this test holds one storage of its own.
WORKER_BUDGET = STORAGE_CONNECTIONS + 1
SERVER_BUDGET = 2 * sum(int(v) for v in MLFLOW_SERVER_POOL_ENV.values())
# One configuration asked at a time (search.batch=1): a worker killed inside a batch of two
# leaves both RUNNING, and whether the second had started would depend on when the kill came.
WORKER_SETS = ["--set", "tracking.uri={url}", "--set", "search.pruner=none",
               "--set", "search.batch=1",
               "--set", "runtime.threads=1", "--set", "search.heartbeat_interval=2",
               "--set", f"search.grace_period={GRACE_S}"]


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def tracking(pg, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root, pg.create_database("mlflow")) as server:
        user, password = "worker", base64.urlsafe_b64encode(os.urandom(12)).decode()
        _api(server.url, "users/create", (server.admin, server.admin_password),
             {"username": user, "password": password})
        server.worker = (user, password)
        yield server


def _api(url: str, endpoint: str, auth: tuple[str, str] | None, body: dict | None = None):
    """One REST call to the tracking server; returns (HTTP status, parsed body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=data,
                                 headers={"Content-Type": "application/json"})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_both_servers_refuse_requests_without_credentials(pg, tracking):
    import psycopg

    hba = (pg.datadir / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and line[0] != "#"]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    for password in ("", "wrong"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            pg.connect(password=password).close()
    pg.connect().close()

    search = "experiments/search?max_results=1"
    assert _api(tracking.url, search, None)[0] == 401
    assert _api(tracking.url, search, (tracking.worker[0], "wrong"))[0] == 401
    assert _api(tracking.url, search, tracking.worker)[0] == 200


def test_workers_opening_a_new_postgres_study_together_all_get_it(pg):
    urls = [pg.create_database(f"race{n}") for n in range(ROUNDS)]
    template = urls[0].rsplit("/", 1)[0] + "/race{round}"
    outcomes = race(template, "optuna")
    assert len(outcomes) == WORKERS * ROUNDS
    assert [o for o in outcomes if o[1] != "ok"] == []
    for url in urls:
        storage = open_optuna_storage(url)
        assert optuna.load_study(study_name="s", storage=storage).trials == []
        storage.engine.dispose()  # the next test counts the server's connections


# --------------------------------------------------------------------------- three workers
def _worker(ws: Path, name: str, n: int, env: dict, url: str, study: str) -> subprocess.Popen:
    cmd, full_env = study_command(
        "search", "--n-trials", str(n), "--study-name", study, "--storage", "env:STUDY_STORAGE",
        *[a.format(url=url) for a in WORKER_SETS], env=env)
    log = (ws / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=ws, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs: dict[str, subprocess.Popen], ws: Path, timeout: float = HUNG_S) -> None:
    deadline = time.time() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"worker {name} still running after {timeout} s")
        assert proc.returncode == 0, (ws / f"{name}.log").read_text()[-3000:]


def _kill_mid_trial(victim: subprocess.Popen, storage, client, study: str,
                    timeout: float = HUNG_S):
    """SIGKILL the victim while one of its trials runs, and its MLflow run too.

    The victim is frozen first (SIGSTOP) and then checked: if its trial is still RUNNING in
    the study, has no `tune_f1` recorded yet and its run is RUNNING on the server, it is killed
    inside that trial; otherwise it is let go and checked again. No timing luck either way:
    a trial records its scores before it ends its run, so without them no request to end the
    run can be in flight (one sent just before the freeze would land after the kill and leave
    the run FINISHED, as one full-suite run under load showed).
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert victim.poll() is None, "the victim finished before it could be killed"
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).trials
        except KeyError:
            continue
        if not any(t.state.name == "COMPLETE" for t in trials):
            continue  # kill after a completed trial exists, to show none is lost
        victim.send_signal(signal.SIGSTOP)
        trials = optuna.load_study(study_name=study, storage=storage).trials
        for t in trials:
            if (t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(
                    f":{victim.pid}") and "mlflow_run_id" in t.user_attrs
                    and "tune_f1" not in t.user_attrs
                    and client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "RUNNING"):
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                return t.number, time.time(), trials
        victim.send_signal(signal.SIGCONT)
    pytest.fail("the victim never ran a trial while another one was complete")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("servers-ws")
    for stage in ("prepare", "teacher"):
        cmd, env = study_command(stage)
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                             timeout=HUNG_S, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
    return root


def test_three_workers_one_killed_share_one_study_through_the_servers(ws, pg, tracking,
                                                                     monkeypatch):
    from mlflow.tracking import MlflowClient

    started = time.time()
    # Its own database and study each time it runs (pytest --count): the servers are shared.
    study = f"team-{uuid.uuid4().hex[:8]}"
    storage = pg.create_database(study.replace("-", "_"))
    env = {"STUDY_STORAGE": storage, "MLFLOW_TRACKING_USERNAME": tracking.worker[0],
           "MLFLOW_TRACKING_PASSWORD": tracking.worker[1]}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])  # this test's own client reads the server too
    client = MlflowClient(tracking_uri=tracking.url)
    # One storage object for all of this test's reads: a URL string would open a new pool
    # on every poll, each left open until garbage-collected.
    polled = open_optuna_storage(storage)
    requested = {"a": 2, "b": 2, "victim": 3, "restarted": 1}
    with BackendPeak(pg.url("postgres")) as peak:
        procs = {name: _worker(ws, name, requested[name], env, tracking.url, study)
                 for name in ("a", "b", "victim")}
        victim = procs.pop("victim")
        killed, killed_at, before = _kill_mid_trial(victim, polled, client, study)
        # Its last heartbeat is older than the kill; once the grace period has passed it is
        # stale, and the dead machine's replacement (or a live worker) must notice it.
        time.sleep(max(0.0, killed_at + GRACE_S + 1 - time.time()))
        procs["restarted"] = _worker(ws, "restarted", requested["restarted"], env,
                                     tracking.url, study)
        _wait(procs, ws)
    wall = time.time() - started
    # Three workers alive at once at most (the restarted one starts after the kill).
    budget = SERVER_BUDGET + 3 * WORKER_BUDGET + STORAGE_CONNECTIONS
    assert peak.samples > 0 and peak.peak <= budget, (peak.peak, budget)

    trials = sorted(optuna.load_study(study_name=study, storage=polled).trials,
                    key=lambda t: t.number)
    polled.engine.dispose()  # a repeated run counts the server's connections afresh
    by_number = {t.number: t for t in trials}
    victim_trials = [t for t in before if t.user_attrs.get("worker", "").endswith(
        f":{victim.pid}")]
    # Every worker ran what it was asked for; the victim what it had started when it died.
    total = requested["a"] + requested["b"] + requested["restarted"] + len(victim_trials)
    assert [t.number for t in trials] == list(range(total))
    states = Counter(t.state.name for t in trials)
    assert states == {"COMPLETE": total - 1, "FAIL": 1}
    assert by_number[killed].state.name == "FAIL"
    for t in before:
        if t.state.name == "COMPLETE":
            assert by_number[t.number].state.name == "COMPLETE"
            assert by_number[t.number].value == t.value
    retried = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert [t.user_attrs["retry_of"] for t in retried] == [killed]
    assert retried[0].params == by_number[killed].params and retried[0].state.name == "COMPLETE"

    exp = client.get_experiment_by_name("kd-qa-smoke")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id], f"tags.study_name = '{study}'",
                              max_results=500)
    statuses = Counter(r.info.status for r in runs)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {int(r.data.params["trial_number"]): r for r in runs
                if r.data.tags.get("role") == "trial"}
    assert sorted(children) == list(range(total))
    assert "RUNNING" not in statuses
    for n, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        if n == killed:  # killed right after its run started: it may have no artifact yet
            assert run.info.status == "KILLED"
            assert run.data.tags["failure_reason"] == "worker died (no heartbeat)"
            continue
        assert run.info.status == "FINISHED"
        config = client.download_artifacts(run.info.run_id, "config.json", str(ws / "dl" / str(n)))
        assert json.loads(Path(config).read_text())["profile"] == "smoke"
        local = client.download_artifacts(run.info.run_id, "predictions_tune.json",
                                          str(ws / "dl" / str(n)))
        assert json.loads(Path(local).read_text()), n
    assert children[retried[0].number].data.tags["retry_of"] == str(killed)
    assert list(tracking.artifacts.rglob("predictions_tune.json"))  # stored by the server

    secrets_ = (pg.password, tracking.worker[1])
    assert "***" in parents[0].data.tags["optuna_storage"]
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags])
        assert not any(s in text for s in secrets_), run.info.run_name
    for log in ws.glob("*.log"):
        assert not any(s in log.read_text() for s in secrets_), log.name
    done = [t for t in trials if t.state.name == "COMPLETE"]
    print(f"\nthree workers + restart: trials {dict(states)}, runs {dict(statuses)}, "
          f"retried {len(retried)} (trial {killed} -> {retried[0].number}), "
          f"wall {wall:.0f} s, peak {peak.peak} backends (budget {budget}), mean complete trial "
          f"{sum(t.duration.total_seconds() for t in done) / len(done):.0f} s, "
          f"{pg.version}, mlflow {__import__('mlflow').__version__}")


# --------------------------------------------------------------------------- a dead database
FAULT_SETS = ["--set", "search.pruner=none", "--set", "runtime.threads=1",
              "--set", "search.heartbeat_interval=1", "--set", "search.grace_period=5"]
LOST_BOUND_S = 180  # a hang guard only: the worker stops at its next training step


def _running_trial(storage, name: str):
    """The study's RUNNING trial that has its MLflow run, if any."""
    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:
        return None
    return next((t for t in trials if t.state.name == "RUNNING"
                 and "mlflow_run_id" in t.user_attrs), None)


def test_a_stopped_database_ends_the_worker_in_one_line_and_the_study_resumes(ws, pg):
    # Last in this module: it stops the PostgreSQL server the other tests share.
    from mlflow.tracking import MlflowClient

    name, storage = "fault", pg.create_database("fault")
    env = {"STUDY_STORAGE": storage}
    cmd, full_env = study_command("search", "--n-trials", "3", "--study-name", name,
                                  "--storage", "env:STUDY_STORAGE", *FAULT_SETS, env=env)
    worker = subprocess.Popen(cmd, cwd=ws, env=full_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    polled = open_optuna_storage(storage)
    deadline = time.time() + 300
    while (running := _running_trial(polled, name)) is None:
        assert worker.poll() is None and time.time() < deadline, "no trial ever ran"
        time.sleep(0.5)
    polled.engine.dispose()
    pg.stop()  # mid-trial: the worker's next heartbeat or storage call finds it gone
    try:
        _, err = worker.communicate(timeout=LOST_BOUND_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"the worker still ran {LOST_BOUND_S} s after its database stopped")
    finally:
        pg.start()  # same data folder, same port
    stopped_at = time.time()

    lines = err.replace("\r", "\n").strip().splitlines()  # progress bars end in \r
    assert worker.returncode == 2, err[-3000:]
    # One line, the last (after the Trainer's progress bar, which ends without a newline).
    assert err.count("study search: error:") == 1, err[-3000:]
    assert ("study search: error: lost the Optuna storage "
            f"postgresql://kd:***@127.0.0.1:{pg.port}/fault") in lines[-1], err[-3000:]
    assert "Traceback" not in err and pg.password not in err
    reason = re.search(r"fault \((.*)\); the running trial is left", lines[-1])
    assert reason and reason.group(1).strip("() "), lines[-1]  # the driver's words

    # Nothing recorded the trial's end: it is RUNNING until the heartbeats fail it.
    polled = open_optuna_storage(storage)
    left = optuna.load_study(study_name=name, storage=polled).trials[running.number]
    assert left.state.name == "RUNNING"
    time.sleep(max(0.0, stopped_at + 5 + 1 - time.time()))  # past the grace period
    cmd, full_env = study_command("search", "--n-trials", "1", "--study-name", name,
                                  "--storage", "env:STUDY_STORAGE", *FAULT_SETS, env=env)
    res = subprocess.run(cmd, cwd=ws, env=full_env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name=name, storage=polled).trials
    polled.engine.dispose()
    assert trials[running.number].state.name == "FAIL"
    retried = [t for t in trials if t.user_attrs.get("retry_of") == running.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == running.params
    assert not [t.number for t in trials if t.state.name == "RUNNING"]

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(running.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "worker died (no heartbeat)"
    exp = client.get_experiment_by_name("kd-qa-smoke")
    runs = client.search_runs([exp.experiment_id], f"tags.study_name = '{name}'")
    assert runs and all(r.info.status != "RUNNING" for r in runs)
