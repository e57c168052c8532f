"""dvc.yaml says exactly what each stage reads.

Every stage runs here, in this process, on the smoke profile, in pipeline order, while
`ConfigReads` records the params keys its code reads and `CodeCalls` the `study` modules
whose functions it runs (`best` runs twice: with the best trial's weights kept, and without,
when it re-trains them). Then, per stage, against dvc.yaml:
- every key read is declared (a key or a section above it), and every declared entry is read.
  Locations are left out: where outputs and runs are written (`runtime.artifacts`,
  `runtime.reports`, the MLflow store) changes no number, and moving the tracking server
  must not re-train the teacher;
- the `study/` code deps are exactly the modules the stage runs. `cli.py` (the command line)
  and `config.py` (the params loader) serve every stage: what they hand a stage is the
  params it reads, which DVC tracks key by key;
- in the smoke profile's pipeline (study.pipeline), every key the stage reads that the
  `profiles.smoke` overlay sets is declared through the overlay too, and nothing else of it:
  the stage re-runs when the overlay's value changes, and only then.
"""

from __future__ import annotations

import pytest
from config_reads import CodeCalls, ConfigReads
from conftest import REPO_ROOT
from test_dvc import PARAMS as PARAMS_YAML
from test_dvc import PIPELINES, STAGES, param_keys, paths

from study.cli import main
from study.config import load_config
from study.layout import Layout

pytestmark = pytest.mark.slow

PARAMS = str(REPO_ROOT / "params.yaml")
# Fewer trials (2 let `best` fit importances) and student epochs than the smoke profile:
# the keys a stage reads do not depend on how long it trains.
SETS = ("--set", "search.n_trials=2", "--set", "student.train.epochs=1")
SHARED_CODE = {"study/cli.py", "study/config.py"}
# Where results go, and how many trainings run side by side: neither changes a number (the
# second: `study bench --determinism`, its `processes` variation).
LOCATIONS = {"runtime.artifacts", "runtime.reports", "tracking.uri", "tracking.artifact_location",
             "tracking.experiment", "runtime.processes"}


def covers(entry: str, key: str) -> bool:
    return key == entry or key.startswith(entry + ".")


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> dict[str, tuple[set[str], set[str]]]:
    cwd = tmp_path_factory.mktemp("reads")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("HF_HUB_OFFLINE", "1")
        cfg = load_config(PARAMS, "smoke")
        kept = Layout.of(cfg).search.trials
        for name in STAGES:
            keys: set[str] = set()
            files: set[str] = set()
            for rerun in ((False, True) if name == "best" else (False,)):
                if rerun:  # the trial's weights not kept: `best` re-trains them
                    kept.rename(cwd / "kept")
                with ConfigReads(cfg) as reads, CodeCalls(REPO_ROOT / "study") as calls:
                    code = main([name, "--profile", "smoke", "--params", PARAMS, *SETS])
                assert code == 0, f"study {name} exited {code}"
                keys |= reads.keys
                files |= {f"study/{f}" for f in calls.files}
                if rerun:
                    (cwd / "kept").rename(kept)
            out[name] = (keys - LOCATIONS, files - SHARED_CODE)
    return out


@pytest.mark.parametrize("name", list(STAGES))
def test_params_declared_are_the_params_read(observed, name):
    read, _ = observed[name]
    declared = param_keys(STAGES[name])
    undeclared = sorted(k for k in read if not any(covers(d, k) for d in declared))
    unread = sorted(d for d in declared if not any(covers(d, k) for k in read))
    assert not undeclared, f"{name} reads params that dvc.yaml does not list: {undeclared}"
    assert not unread, f"dvc.yaml lists params that {name} never reads: {unread}"


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_declared_are_the_code_run(observed, name):
    _, ran = observed[name]
    declared = [d for d in paths(STAGES[name].get("deps"))
                if d.startswith("study/") and not d.startswith("study/data/")]

    def declared_covers(file: str) -> bool:
        return any(covers(d, file) or file.startswith(d.rstrip("/") + "/") for d in declared)

    missing = sorted(f for f in ran if not declared_covers(f))
    unused = sorted(d for d in declared if not any(f == d or f.startswith(d.rstrip("/") + "/")
                                                   for f in ran))
    assert not missing, f"{name} runs code that dvc.yaml does not list: {missing}"
    assert not unused, f"dvc.yaml lists code that {name} never runs: {unused}"



def leaves(node: dict, prefix: str = "") -> set[str]:
    """The dotted keys of the values an overlay sets (a list or null is one value)."""
    out = set()
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        out |= leaves(value, dotted + ".") if isinstance(value, dict) else {dotted}
    return out


@pytest.mark.parametrize("name", list(STAGES))
def test_the_overlay_keys_declared_are_the_overlay_keys_read(observed, name):
    read, _ = observed[name]
    prefix = "profiles.smoke."
    declared = [k.removeprefix(prefix) for k in param_keys(PIPELINES["smoke"]["stages"][name])
                if k.startswith(prefix)]

    def related(a: str, b: str) -> bool:
        return covers(a, b) or covers(b, a)

    set_and_read = sorted(leaf for leaf in leaves(PARAMS_YAML["profiles"]["smoke"])
                          if any(related(leaf, k) for k in read))
    undeclared = [leaf for leaf in set_and_read if not any(covers(d, leaf) for d in declared)]
    unread = sorted(d for d in declared if not any(related(d, k) for k in read))
    assert not undeclared, f"{name} reads what profiles.smoke sets, undeclared: {undeclared}"
    assert not unread, f"the smoke pipeline lists overlay keys {name} never reads: {unread}"
