"""No credential is recorded: a database password given any way the study takes one never
reaches an MLflow param, tag or artifact (config.json included), nor a printed line.

The password is the real PostgreSQL server's (tests/servers.py: random per server), so every
URL below works: each way runs a real one-trial smoke search against its own database.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, study_command
from test_servers import pg, ws  # noqa: F401 - the real server and a prepared smoke folder

from study.config import load_config

pytestmark = pytest.mark.slow
SETS = ["--n-trials", "1", "--set", "search.pruner=none", "--set", "runtime.threads=1"]


def _search(folder: Path, name: str, *args: str, params: Path | None = None,
            env: dict | None = None) -> str:
    cmd, full_env = study_command("search", "--study-name", name, *SETS, *args, env=env)
    if params is not None:
        cmd[cmd.index("--params") + 1] = str(params)
    proc = subprocess.run(cmd, cwd=folder, env=full_env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _recorded(store_uri: str, artifacts: Path) -> str:
    """Every param, tag and artifact file of every run in the store, as one text."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    assert runs
    text = json.dumps([[r.data.params, r.data.tags] for r in runs])
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files)
    return text + "".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def test_a_password_given_any_way_is_never_recorded(ws, pg):  # noqa: F811
    secret = pg.password
    said = []
    # 1. --set search.storage=URL
    said.append(_search(ws, "by-set", "--set", f"search.storage={pg.create_database('o1')}"))
    # 2. --storage URL
    said.append(_search(ws, "by-flag", "--storage", pg.create_database("o2")))
    # 3. params.yaml
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["search"]["storage"] = pg.create_database("o3")
    params = ws / "secret-params.yaml"
    params.write_text(yaml.safe_dump(raw))
    said.append(_search(ws, "by-params", params=params))
    # 4. an environment variable named by --storage env:NAME
    said.append(_search(ws, "by-env", "--storage", "env:STUDY_STORAGE",
                        env={"STUDY_STORAGE": pg.create_database("o4")}))
    # 5. the MLflow store itself: tracking.uri with the password
    tracking = pg.create_database("mlflow_secret")
    said.append(_search(ws, "by-tracking-uri", "--set", f"tracking.uri={tracking}"))

    artifacts = ws / "mlruns" / "artifacts"
    recorded = _recorded(f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}", artifacts)
    recorded += _recorded(tracking, artifacts)
    assert "kd:***@127.0.0.1" in recorded  # the URLs are recorded, without their password
    assert secret not in recorded
    for text in said:
        assert secret not in text


def test_to_dict_hides_a_url_password_that_the_config_keeps(params_path):
    cfg = load_config(params_path, "smoke", ["search.storage=postgresql://kd:s3cret@h/db",
                                             "tracking.uri=http://u:s3cret@h:5000"])
    dumped = json.dumps(cfg.to_dict())
    assert "s3cret" not in dumped
    assert cfg.to_dict()["search"]["storage"] == "postgresql://kd:***@h/db"
    assert cfg.to_dict()["tracking"]["uri"] == "http://u:***@h:5000"
    # The config itself still opens the database, also through a validated copy.
    assert cfg.replace(seed=7).search.storage == "postgresql://kd:s3cret@h/db"
    # A URL without a password is recorded as written, so hashes do not move.
    plain = load_config(params_path, "smoke")
    assert plain.to_dict()["search"]["storage"] == plain.search.storage
    same = load_config(params_path, "smoke", ["search.storage=postgresql://kd:other@h/db"])
    assert same.hash() == cfg.replace(tracking={"uri": plain.tracking.uri}).hash()


def test_a_refused_value_is_quoted_without_its_password(params_path):
    from study.errors import StudyError

    with pytest.raises(StudyError) as info:
        load_config(params_path, "smoke", ["search.n_trials=postgresql://kd:s3cret@h/db"])
    assert "s3cret" not in str(info.value) and "kd:***@h" in str(info.value)
