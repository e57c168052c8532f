"""Adding to a study keeps everything in step (study.adding).

Fast: the params file is edited in place (one value's text, nothing else), and `seeds` keeps
an arm's recorded trainings while the arm's params are the same.

Slow, both ways, on one smoke pipeline prepared once through DVC in a scratch clone (never
the repository's own params.yaml): `study seeds --add 1` trains only seed 4, `study search
--n-trials 1` trains exactly one configuration and re-trains seeds only when the best
changed; after each, `dvc status` of the pipeline is clean and params.yaml says what was
added.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO_ROOT
from optuna.trial import TrialState
from test_dvc_clone import SMALLER, fresh_clone, run

from study import seeds as seeds_stage
from study.config import deep_merge, load_config, params_key, write_params_value
from study.errors import StudyError
from study.layout import Layout

PIPELINE = "pipelines/smoke/dvc.yaml"


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# ------------------------------------------------------------------ the params file
@pytest.mark.parametrize("profile, key, value, lines", [
    ("default", "seeds.values", [1, 2, 3, 4, 5, 6],
     ["-  values: [1, 2, 3, 4, 5]", "+  values: [1, 2, 3, 4, 5, 6]"]),
    ("default", "search.n_trials", 13, [
        ("-  n_trials: 12              # configurations the stage completes the study to "
         "(a count, never a time)"),
        ("+  n_trials: 13              # configurations the stage completes the study to "
         "(a count, never a time)")]),
    # In the overlay's flow mappings, one wrapped over two lines.
    ("smoke", "seeds.values", [1, 2, 3, 4], [
        "-    seeds: {values: [1, 2, 3], bootstrap_samples: 200}",
        "+    seeds: {values: [1, 2, 3, 4], bootstrap_samples: 200}"]),
    ("smoke", "search.n_trials", 4, [
        "-    search: {n_trials: 3, n_startup_trials: 1, pruner_warmup_rounds: 0,",
        "+    search: {n_trials: 4, n_startup_trials: 1, pruner_warmup_rounds: 0,"]),
    # The paper's overlay sets no seeds: the key is created there, the top level unchanged.
    ("paper", "seeds.values", [1, 2, 3, 4, 5, 6], ["+    seeds: {values: [1, 2, 3, 4, 5, 6]}"]),
])
def test_one_value_is_written_in_place(tmp_path, profile, key, value, lines):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    before = path.read_text()
    write_params_value(path, params_key(profile, key), value)
    after = path.read_text()
    assert changed_lines(before, after) == lines
    section, field = key.split(".")
    read = getattr(getattr(load_config(path, profile), section), field)
    assert read == (tuple(value) if isinstance(value, list) else value)
    if profile != "default":  # an overlay's key is its profile's alone
        for other in {"default", "smoke", "paper"} - {profile}:
            assert load_config(path, other) == load_config(REPO_ROOT / "params.yaml", other)


def test_the_default_profiles_value_says_which_profiles_read_it_too(tmp_path, capsys):
    from study.adding import Record

    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    cfg = load_config(path, "default")
    Record(path, None, None).write(cfg, "seeds.values", [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])
    assert capsys.readouterr().out == (
        f"== seeds.values: [1, 2, 3, 4, 5] -> [1, 2, 3, 4, 5, 6] in {path} (also read by "
        "profile paper: it sets none of its own)\n")
    assert load_config(path, "paper").seeds.values == (1, 2, 3, 4, 5, 6)
    Record(path, None, None).write(cfg, "search.n_trials", 12, 13)  # both overlays set it
    assert capsys.readouterr().out.endswith(f"-> 13 in {path}\n")


def test_a_block_style_profile_and_an_empty_one_get_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1  # kept\nprofiles:\n  a:\n    seeds:\n      values:\n      - 1\n"
                    "      - 2\n    # the end of a\n  b:\n")
    write_params_value(path, "profiles.a.seeds.values", [1, 2, 3])
    write_params_value(path, "profiles.b.search.n_trials", 5)
    assert yaml.safe_load(path.read_text()) == {
        "seed": 1, "profiles": {"a": {"seeds": {"values": [1, 2, 3]}},
                                "b": {"search": {"n_trials": 5}}}}
    assert "seed: 1  # kept\n" in path.read_text() and "# the end of a" in path.read_text()


def test_a_value_that_cannot_be_set_in_place_is_refused_and_nothing_written(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seeds: [1, 2, 3]\n")
    with pytest.raises(StudyError, match=r"cannot set seeds.values in .* by hand"):
        write_params_value(path, "seeds.values", [1, 2, 3, 4])
    assert path.read_text() == "seeds: [1, 2, 3]\n"


# ------------------------------------------------------------------ seeds: per-arm identity
def test_an_arms_trainings_are_kept_while_its_params_are(tmp_path, capsys):
    cfg = load_config(REPO_ROOT / "params.yaml", "smoke").replace(
        runtime={"artifacts": str(tmp_path)})
    identity = seeds_stage._identity(cfg, ["q1", "q2"])
    authors = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    old = {"baseline": None, "authors": authors, "distilled": authors}
    runs = {arm: {"1": {"f1": 1.0}, "2": {"f1": 2.0}} for arm in old}
    path = Layout.of(cfg).seed_runs
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"trial": 0, "arms": old, **identity, "runs": runs}))

    assert seeds_stage.load_runs(cfg, old, identity, required=True) == runs
    # A better configuration found: only the distilled arm's trainings are left out.
    better = {**old, "distilled": {"temperature": 5.5, "alpha_ce": 0.6, "alpha_squad": 0.1}}
    kept = seeds_stage.load_runs(cfg, better, identity, required=True)
    assert kept == {"baseline": runs["baseline"], "authors": runs["authors"]}
    assert "arm distilled was trained with" in capsys.readouterr().out
    # Other questions (or fixed settings, or code): nothing pools; --add is refused.
    other = {**identity, "questions": ["q1"]}
    assert seeds_stage.load_runs(cfg, old, other, required=False) == {}
    with pytest.raises(StudyError, match="questions differ"):
        seeds_stage.load_runs(cfg, old, other, required=True)


# ------------------------------------------------------------------ both ways, through DVC
def trained(out: str) -> list[str]:
    """The `seeds` trainings a command's output reports, `seed 4 baseline`."""
    return sorted(m for m in re.findall(r"^(seed \d+ \w+): dev EM/F1", out, flags=re.MULTILINE))


def trials_trained(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"^trial (\d+) \(slot \d+\): ", out, flags=re.MULTILINE)]


def smoke_overlay(clone) -> dict:
    return yaml.safe_load((clone / "params.yaml").read_text())["profiles"]["smoke"]


def clean(clone, env) -> None:
    status = run(clone, env, "dvc", "status", PIPELINE)
    assert "Data and pipelines are up to date." in status, status


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """`study run --profile smoke` through DVC in a fresh clone, on a smaller smoke overlay
    (one trial: the authors' setting; one epoch on 24 questions)."""
    clone, env = fresh_clone(tmp_path_factory.mktemp("adding"))
    params = clone / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["smoke"] = deep_merge(raw["profiles"]["smoke"], SMALLER)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    run(clone, env, "study", "run", "--profile", "smoke", timeout=1500)
    clean(clone, env)
    return clone, env


@pytest.mark.slow
def test_seeds_add_trains_only_the_new_seed_and_leaves_dvc_clean(pipeline):
    clone, env = pipeline
    layout = Layout.of(load_config(clone / "params.yaml", "smoke"))
    before = json.loads((clone / layout.reports.seeds).read_text())
    arms = 2 if before["params"] == before["authors_params"] else 3  # authors == best: 2 arms
    text = (clone / "params.yaml").read_text()
    # Refused while the pipeline has other work to do (here: a changed setting): one line,
    # nothing written or trained.
    (clone / "params.yaml").write_text(text.replace("batch_size: 32", "batch_size: 16"))
    proc = subprocess.run([sys.executable, "-m", "study", "seeds", "--add", "1", "--profile",
                           "smoke"], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        (f"study seeds: error: the smoke pipeline is not up to date (dvc status {PIPELINE}: "
         "teacher, baseline, distill, search, best, seeds): `study run --profile smoke` first, "
         "then --add adds only what it adds")]
    assert "seed 4" not in proc.stdout
    (clone / "params.yaml").write_text(text)

    out = run(clone, env, "study", "seeds", "--add", "1", "--profile", "smoke", timeout=1500)
    assert "profiles.smoke.seeds.values: [1, 2, 3] -> [1, 2, 3, 4]" in out
    assert trained(out) == sorted(f"seed 4 {arm}" for arm in
                                  ("baseline", "authors", "distilled")[:arms]), out[-3000:]
    assert re.findall(r"Running stage '([^']+)'", out) == [f"{PIPELINE}:seeds",
                                                          f"{PIPELINE}:report"]
    assert yaml.safe_load((clone / "params.yaml").read_text()) == deep_merge(
        yaml.safe_load(text), {"profiles": {"smoke": {"seeds": {"values": [1, 2, 3, 4]}}}})
    clean(clone, env)
    after = json.loads((clone / layout.reports.seeds).read_text())
    assert after["seeds"] == [1, 2, 3, 4]
    for arm in ("baseline", "authors", "distilled"):
        assert after[arm]["f1"][:3] == before[arm]["f1"], arm
        assert after["mlflow_run_ids"][arm][:3] == before["mlflow_run_ids"][arm], arm
    assert "Seeds: 1, 2, 3, 4." in (clone / layout.reports.report).read_text()


@pytest.mark.slow
def test_search_n_trials_cut_by_the_time_bound_trains_one_and_leaves_dvc_clean(pipeline):
    """`--n-trials 2 --timeout 1`: the study holds one configuration (slot 0), so the first
    batch of two holds slot 1 alone; the bound stops the session before the next batch, and
    search.n_trials is raised by the one configuration that finished. Then `search`
    (nothing trained), `best`, `seeds` (the distilled arm again only if the best changed)
    and the report, through DVC."""
    clone, env = pipeline
    layout = Layout.of(load_config(clone / "params.yaml", "smoke"))
    before = json.loads((clone / layout.reports.seeds).read_text())
    target = smoke_overlay(clone)["search"]["n_trials"]
    assert target == 1
    text = (clone / "params.yaml").read_text()

    out = run(clone, env, "study", "search", "--n-trials", "2", "--timeout", "1", "--profile",
              "smoke", timeout=1500)
    assert "stopped by the time bound after 2 of 3 configurations" in out, out[-3000:]
    assert "profiles.smoke.search.n_trials: 1 -> 2" in out
    assert trials_trained(out) == [1], out[-3000:]  # one new configuration, in slot 1
    assert yaml.safe_load((clone / "params.yaml").read_text()) == deep_merge(
        yaml.safe_load(text), {"profiles": {"smoke": {"search": {"n_trials": 2}}}})
    assert re.findall(r"Running stage '([^']+)'", out) == [
        f"{PIPELINE}:{s}" for s in ("search", "best", "seeds", "report")]
    clean(clone, env)
    summary = json.loads((clone / layout.reports.search).read_text())
    assert (summary["configurations"], summary["target"], summary["stopped"]) == (2, 2, None)
    after = json.loads((clone / layout.reports.seeds).read_text())
    seeds = [str(s) for s in before["seeds"]]
    if after["params"] == before["params"]:  # the best did not change: nothing trained
        assert trained(out) == []
        assert after["mlflow_run_ids"] == before["mlflow_run_ids"]
    else:  # a better configuration: its arm trained again, and only it
        assert after["trial"] == 1
        assert trained(out) == sorted(f"seed {s} distilled" for s in seeds)
        for arm in ("baseline", "authors"):
            assert after["mlflow_run_ids"][arm] == before["mlflow_run_ids"][arm], arm
    print(f"best trial {before['trial']} -> {after['trial']}; seeds trained: {trained(out)}")


# ------------------------------------------------------------------ search: what is recorded
@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder (not a DVC repository) with its own params file and the smoke profile's study
    at its default storage; `study.search.run` replaced by a session that asks and finishes
    the configurations a test says, and the stages that follow by a record of the call."""
    from study import adding
    from study import search as search_stage

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    cfg = load_config(tmp_path / "params.yaml", "smoke")
    (tmp_path / Layout.of(cfg).search.root).mkdir(parents=True)
    storage = f"sqlite:///{tmp_path / Layout.of(cfg).search.root / 'optuna.db'}"
    study = optuna.create_study(study_name=cfg.search.study_name, storage=storage,
                                direction="maximize")
    calls = {"sessions": [], "followed": []}

    def trials(*states: str) -> None:
        """Configurations in the next slots: F finished, I interrupted (asked, unfinished);
        R: the first interrupted one finished, in its slot, as the session re-runs it."""
        for state in states:
            slots = search_stage.Slots(study.get_trials())
            slot = slots.unfinished[0] if state == "R" else slots.next
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.FAIL if state == "I" else TrialState.COMPLETE,
                value=None if state == "I" else float(slot), user_attrs={"slot": slot}))

    def session(states: tuple[str, ...], stop: type[BaseException] | None = None):
        def fake_run(cfg, n_trials=None, timeout=None, storage=None, study_name=None):
            calls["sessions"].append({"n_trials": n_trials, "timeout": timeout,
                                      "storage": storage, "study_name": study_name})
            trials(*states)
            if stop is not None:
                raise stop()
        monkeypatch.setattr(search_stage, "run", fake_run)

    monkeypatch.setattr(adding, "follow",
                        lambda cfg, record, stages: calls["followed"].append(stages))

    def cli(*argv: str) -> None:
        from study.cli import build_parser
        args = build_parser().parse_args(["search", *argv, "--params", "params.yaml",
                                          "--profile", "smoke"])
        adding.add_trials(load_config(args.params, args.profile, args.overrides), args)

    def n_trials() -> int:
        return load_config(tmp_path / "params.yaml", "smoke").search.n_trials

    return trials, session, cli, n_trials, calls


def test_n_trials_raises_the_target_by_what_the_session_added(workspace):
    trials, session, cli, n_trials, calls = workspace
    trials("F", "F", "F")  # in step with the smoke profile's search.n_trials: 3
    session(("F",))
    cli("--n-trials", "1")
    assert calls["sessions"][-1]["n_trials"] == 1 and n_trials() == 4
    assert calls["followed"] == [("best", "seeds", "report")]
    # Cut short by --timeout: 2 of 3 finished; the target is raised by those 2 only.
    session(("F", "F"))
    cli("--n-trials", "3", "--timeout", "60")
    assert calls["sessions"][-1] == {"n_trials": 3, "timeout": 60.0, "storage": None,
                                     "study_name": None}
    assert n_trials() == 6 and len(calls["followed"]) == 2


def test_n_trials_on_an_interrupted_study_completes_it_and_adds(workspace):
    trials, session, cli, n_trials, calls = workspace
    trials("F", "I")  # the stage was interrupted at slot 1 of 3
    session(("R", "F", "F"))
    cli("--n-trials", "1")
    # Slot 1 again, slot 2 (the stage's target, 3) and one more: 4.
    assert calls["sessions"][-1]["n_trials"] == 3 and n_trials() == 4


def test_a_ctrl_c_records_the_configurations_asked_and_follows_nothing(workspace):
    trials, session, cli, n_trials, calls = workspace
    trials("F", "F", "F")
    session(("F", "I"), stop=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        cli("--n-trials", "4")
    assert n_trials() == 5 and calls["followed"] == []  # the stage re-runs slot 4


def test_another_study_or_a_set_is_a_plain_add(workspace, capsys):
    _, session, cli, _, calls = workspace
    text = Path("params.yaml").read_text()
    session(("F",))
    cli("--n-trials", "1", "--study-name", "other")
    assert calls["sessions"][-1]["study_name"] == "other"
    cli("--n-trials", "1", "--set", "search.study_name=other")
    cli("--n-trials", "1", "--set", "search.pruner=none")
    assert "search.n_trials not written (--set search.pruner=none" in capsys.readouterr().out
    assert Path("params.yaml").read_text() == text and calls["followed"] == []
