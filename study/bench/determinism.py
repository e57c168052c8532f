"""`study bench --determinism`: what moves a training's numbers, measured; into
reports/bench.json `determinism`.

Each variation trains the same training of the smoke profile twice, changing one thing, and
compares every number the two recorded, with `study rerun`'s comparison (study.rerun): each
step of every MLflow metric (losses, learning rate, gradient norm, the tune curve, final
tune/dev EM and F1), every answer (predictions_<split>.json) and the numbers of metrics.json;
for a search, by slot, its configuration, value, each reported round, its pruning decision
and its trial's numbers. Times are not compared (study.rerun.NOT_COMPARED).

- `threads`: runtime.threads 1 vs 2, in this process;
- `process`: the baseline in a new `study baseline` process vs in this process after other
  work (a teacher, searches, trainings at another thread count);
- `hog`: beside a busy loop pinned to each core (bounded in time, killed after) vs not;
- `processes`: a search of two batches, each batch trained side by side in two spawned
  processes vs one after the other here (runtime.processes 2 vs 1);
- `dvc`: `study run` in this process (prepare and baseline; a --set that changes no number
  keeps it out of DVC) vs `dvc repro` of the profile's pipeline (study.pipeline) to its
  baseline stage;
- `transformers`: the fixture training (the smoke baseline at one thread, `FIXTURE`) on this
  line vs on another Python environment's (`--python`, e.g. CI's transformers 4.x venv, built
  as .ci/run builds it), each in a new process; and this line's against the committed fixture
  (tests/data/determinism_transformers<major>.json, written by `--write-fixture`), which CI's
  two legs compare with (tests/test_determinism.py).

Each is one verdict: identical, or how many numbers differ and by how much at most. It all runs
in a scratch copy of the checkout (study/, params.yaml with --set merged into the profile's
overlay, dvc.yaml; its own DVC repository, MLflow store and artifacts); every subprocess runs
this process's `study` code.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from study.bench.common import write_section
from study.config import Config, deep_merge, load_config, parse_override, read_params
from study.errors import StudyError
from study.rerun import MISSING, Comparison, Row, _histories, _numbers

# The training a fixture records: the smoke profile's baseline stage at one torch thread (a
# setting that decides numbers: one thread keeps the CI test's training what it was here).
FIXTURE_PROFILE = "smoke"
FIXTURE = ("runtime.threads=1",)
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "data"
SHOWN = 10  # differing numbers kept per variation (the largest first)
HOG_S = 600  # a hog's own bound: it ends by itself after this long, or when its parent is gone

Numbers = dict[str, dict[str, list]]  # source -> name -> values


# --------------------------------------------------------------------------- the numbers
def run_numbers(client, run_id: str, folder: Path, prefix: str = "") -> Numbers:
    """Every number a training's MLflow run recorded: each step of each metric, the answers
    of predictions_<split>.json and the numbers of metrics.json (its artifacts)."""
    run = client.get_run(run_id)
    out: Numbers = {"metric values": {}, "answers": {}, "metrics.json": {}}
    for key, by_step in _histories(client, run_id, run.data.metrics).items():
        for step, values in by_step.items():
            out["metric values"][f"{prefix}{key} @ step {step}"] = values
    names = {a.path for a in client.list_artifacts(run_id)}
    for split in ("tune", "dev"):
        if f"predictions_{split}.json" in names:
            path = client.download_artifacts(run_id, f"predictions_{split}.json", str(folder))
            for qid, text in json.loads(Path(path).read_text()).items():
                out["answers"][f"{prefix}answer {split} {qid}"] = [text]
    if "metrics.json" in names:
        path = client.download_artifacts(run_id, "metrics.json", str(folder))
        for key, value in _numbers(json.loads(Path(path).read_text())).items():
            out["metrics.json"][f"{prefix}metrics.json {key}"] = [value]
    return out


def compare(a: Numbers, b: Numbers) -> Comparison:
    """`a` against `b`, every name of either: a number only one of them has differs too."""
    c = Comparison()
    for source in sorted(set(a) | set(b)):
        mine, theirs = a.get(source, {}), b.get(source, {})
        for name in sorted(set(mine) | set(theirs)):
            if name in mine:
                c.add(source, name, mine[name], theirs.get(name, []))
            else:  # Comparison counts what `a` recorded: b's extra numbers are rows of their own
                c.rows += [Row(name, MISSING, v) for v in theirs[name]]
                c.numbers += len(theirs[name])
                c.sources[source] = c.sources.get(source, 0) + len(theirs[name])
    return c


def kind(name: str) -> str:
    """What a number is, without its step, index, slot or question: `loss`, `answer dev`,
    `metrics.json train_loss[].loss`."""
    name = re.sub(r"^slot \d+ ", "", name)
    name = re.sub(r" @ step \d+$", "", name)
    name = re.sub(r"^(answer \w+) .*$", r"\1", name)
    return re.sub(r"\[\d+\]", "[]", name)


def _gap(row: Row) -> float | None:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in (row.recorded, row.now))
    return abs(row.now - row.recorded) if numeric else None


def verdict(c: Comparison, a: str, b: str, **more: Any) -> dict:
    """One variation's verdict: what was compared, and where the two differ, how many numbers
    (answers counted apart) and the largest difference."""
    gaps = [(g, r) for r in c.rows if (g := _gap(r)) is not None and math.isfinite(g)]
    gaps.sort(key=lambda p: -p[0])
    other = [r for r in c.rows if _gap(r) is None]
    doc = {"a": a, "b": b, "verdict": "different" if c.rows else "identical",
           "numbers": c.numbers, "sources": c.sources, "differ": len(c.rows),
           "answers_differ": sum(kind(r.name).startswith("answer ") for r in c.rows),
           "max_abs_difference": gaps[0][0] if gaps else None,
           "rounded_to_decimals": rounded_to(c),
           "where": dict(sorted(Counter(kind(r.name) for r in c.rows).items())),
           "largest": [{"name": r.name, "a": r.recorded, "b": r.now} for _, r in gaps[:SHOWN]]
           + [{"name": r.name, "a": r.recorded, "b": r.now} for r in other[:SHOWN]],
           **more}
    if not c.rows:
        del doc["largest"], doc["where"]
    return doc


def rounded_to(c: Comparison) -> int | None:
    """The decimals d when every difference is one number rounded to d decimals of the other
    (a logger that rounds, not a training that computes otherwise); None when not."""
    if not c.rows or any(_gap(r) is None for r in c.rows):
        return None
    for d in range(11):
        if all(r.now == round(r.recorded, d) or r.recorded == round(r.now, d) for r in c.rows):
            return d
    return None


def summary(name: str, v: dict) -> str:
    if v.get("verdict") == "not measured":
        return f"{name}: not measured ({v['why']})"
    kept = f"; kept from commit {v['kept'].get('commit')}" if "kept" in v else ""
    if v["verdict"] == "identical":
        return f"{name}: identical ({v['numbers']} numbers; {v.get('a')} vs {v.get('b')}{kept})"
    most, decimals = v.get("max_abs_difference"), v.get("rounded_to_decimals")
    return (f"{name}: different, {v.get('differ')} of {v['numbers']} numbers"
            + (f" (answers: {v['answers_differ']})" if v.get("answers_differ") else "")
            + (f", at most {most:.3g}" if most is not None else "")
            + (f", each one rounded to {decimals} decimals of the other"
               if decimals is not None else "")
            + f": {', '.join(v.get('where', {}))} ({v.get('a')} vs {v.get('b')}{kept})")


# --------------------------------------------------------------------------- where it runs
def _source() -> Path:
    """The folder holding the `study` package this process runs."""
    import study

    return Path(study.__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """A subprocess's environment: this process's `study` code first on its path, and this
    Python's scripts (`study`, for DVC's stage commands) first on PATH."""
    path = [str(_source()), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "TOKENIZERS_PARALLELISM": "false",
            "DVC_NO_ANALYTICS": "1",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def _call(argv: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise StudyError(f"{what} failed (exit {proc.returncode}) in {cwd}: {tail[0]}")


def study_cli(python: str, cwd: Path, *argv: str) -> None:
    """`study ARGV` in a new process of `python`, in `cwd`."""
    _call([python, "-m", "study", *argv], cwd, f"`{Path(python).name} -m study {argv[0]}`")


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _nest(key: str, value: Any) -> dict:
    *path, last = key.split(".")
    out: dict = {last: value}
    for part in reversed(path):
        out = {part: out}
    return out


def _sets(overrides: tuple[str, ...] | list[str]) -> list[str]:
    return [a for kv in overrides for a in ("--set", kv)]


class Workspace:
    """A scratch copy of the checkout where every training of the bench runs: the `study`
    package this process runs, dvc.yaml (when there is one) and params.yaml with the
    command line's --set merged into the profile's overlay (so `dvc repro` and every
    subprocess read them too) and its tracking store here, named by absolute path."""

    def __init__(self, root: Path, params: Path, profile: str, overrides: list[str]):
        self.root, self.profile = root, profile
        self.params = root / "params.yaml"
        raw = read_params(params)
        if profile != "default" and profile not in (raw.get("profiles") or {}):
            load_config(params, profile)  # the one-line refusal of an unknown profile
        changes: dict = {"tracking": {"uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                                      "artifact_location": str(root / "mlruns" / "artifacts")}}
        for text in overrides:
            changes = deep_merge(changes, _nest(*parse_override(text)))
        if profile == "default":
            raw = deep_merge(raw, changes)
        else:
            raw["profiles"][profile] = deep_merge(raw["profiles"][profile] or {}, changes)
        shutil.copytree(_source() / "study", root / "study",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "mlruns").mkdir()
        self.params.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.config()  # refused here, in one line, when a --set is not a valid setting
        self.dvc = Path("dvc.yaml").is_file()
        if self.dvc:
            shutil.copy2("dvc.yaml", root / "dvc.yaml")

    def config(self, *overrides: str) -> Config:
        return load_config(self.params, self.profile, list(overrides))

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.config().tracking.uri)

    def folder(self, name: str) -> Path:
        """A fresh folder for one training's downloaded artifacts."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def baseline_numbers(self, name: str) -> Numbers:
        """The numbers of the training the baseline stage holds now (its last)."""
        from study.layout import Layout

        with _inside(self.root):
            doc = json.loads(Layout.of(self.config()).baseline.metrics.read_text())
        return run_numbers(self.client(), doc["mlflow_run_id"], self.folder(name))


# --------------------------------------------------------------------------- the trainings
def fresh_baseline(ws: Workspace) -> Numbers:
    """The baseline stage in a new `study baseline` process."""
    study_cli(sys.executable, ws.root, "baseline", "--params", "params.yaml",
              "--profile", ws.profile)
    return ws.baseline_numbers("fresh")


def in_process_baseline(ws: Workspace, *overrides: str) -> Numbers:
    """The baseline stage here, in this process."""
    from study import baseline

    with _inside(ws.root):
        baseline.run(ws.config(*overrides))
    return ws.baseline_numbers("here")


def study_run_baseline(ws: Workspace) -> Numbers:
    """`study run` here, to the baseline stage (prepare, baseline): a --set that changes no
    number (the seed it has) keeps it in this process, out of DVC."""
    from study.cli import main

    skip = [a for s in ("teacher", "search", "best", "seeds") for a in ("--skip", s)]
    argv = ["run", "--params", "params.yaml", "--profile", ws.profile,
            "--set", f"seed={ws.config().seed}", *skip]
    with _inside(ws.root):
        if main(argv) != 0:
            raise StudyError(f"`study {' '.join(argv)}` failed in {ws.root}")
    return ws.baseline_numbers("study-run")


def dvc_baseline(ws: Workspace) -> Numbers:
    """`dvc repro` of the profile's pipeline (study.pipeline, as `study run` writes it) to its
    baseline stage, in the workspace's own DVC repository."""
    from study import pipeline

    with _inside(ws.root):
        target = pipeline.write(ws.profile)
    if not (ws.root / ".dvc").is_dir():
        _call([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], ws.root, "dvc init")
    _call([sys.executable, "-m", "dvc", "repro", f"{target.as_posix()}:baseline"], ws.root,
          "dvc repro")
    return ws.baseline_numbers("dvc")


def search_numbers(ws: Workspace, processes: int) -> Numbers:
    """A search of two batches (the authors' trial first), each trained side by side in
    `processes` processes, here when one: by slot, its state (the pruning decision), params,
    value, each reported round, tune/dev scores and steps, and its trial's numbers."""
    import optuna

    from study import search

    cfg = ws.config()
    name = f"determinism-{processes}"
    pcfg = cfg.replace(search={"study_name": name, "n_trials": 2 * cfg.search.batch,
                               "storage": f"sqlite:///{ws.root / (name + '.db')}",
                               "keep_weights": False},
                       runtime={"processes": processes})
    with _inside(ws.root):
        search.run(pcfg)
    study = optuna.load_study(study_name=name, storage=search.make_storage(pcfg))
    client, folder = ws.client(), ws.folder(name)
    numbers: Numbers = {"Optuna trials": {}}
    own = numbers["Optuna trials"]
    for t in study.get_trials(deepcopy=False):
        slot = search.slot_of(t)
        if slot is None or not search.finished(t):
            continue
        p = f"slot {slot} "
        own[p + "state"] = [t.state.name]
        own.update({p + k: [v] for k, v in t.params.items()})
        own.update({p + f"report {r}": [v] for r, v in t.intermediate_values.items()})
        if t.value is not None:
            own[p + "value"] = [t.value]
        own.update({p + k: [v] for k, v in t.user_attrs.items()
                    if k.startswith(("tune_", "dev_")) or k == search.STEPS_ATTR})
        if search.RUN_ATTR in t.user_attrs:
            for source, values in run_numbers(client, t.user_attrs[search.RUN_ATTR], folder,
                                              prefix=p).items():
                numbers.setdefault(source, {}).update(values)
    return numbers


# Its parent is named on its command line, not read as it starts: a parent killed while the
# hog starts up would leave it reading its new parent's pid.
HOG = ("import os, sys, time\n"
       "end, parent = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])\n"
       "while time.monotonic() < end and os.getppid() == parent:\n"
       "    for _ in range(100_000):\n"
       "        pass\n")


@contextmanager
def hogs(bound_s: float = HOG_S) -> Iterator[list[subprocess.Popen]]:
    """A busy loop pinned to each core this process may use, for the block. Each ends by
    itself after `bound_s` seconds or once this process is gone, and is killed as the block
    ends, however it ends."""
    procs: list[subprocess.Popen] = []
    try:
        for cpu in sorted(os.sched_getaffinity(0)):
            procs.append(subprocess.Popen([sys.executable, "-c", HOG, str(bound_s),
                                           str(os.getpid())]))
            os.sched_setaffinity(procs[-1].pid, {cpu})
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# --------------------------------------------------------------------------- transformers
def _line(env: dict) -> str:
    return f"transformers {env.get('transformers', '?')}"


def fixture_training(python: str, root: Path, params: Path) -> tuple[Numbers, dict]:
    """The fixture training (the smoke baseline at one thread, FIXTURE) in new processes of
    `python`, in `root`: its numbers, and the environment its run recorded."""
    from mlflow.tracking import MlflowClient

    from study.layout import Layout

    root.mkdir(parents=True, exist_ok=True)
    argv = ["--params", str(params), "--profile", FIXTURE_PROFILE, *_sets(FIXTURE)]
    for stage in ("prepare", "baseline"):
        study_cli(python, root, stage, *argv)
    cfg = load_config(params, FIXTURE_PROFILE, FIXTURE)
    uri = cfg.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{root / uri[len('sqlite:///'):]}"  # relative: to where it ran
    doc = json.loads((root / Layout.of(cfg).baseline.metrics).read_text())
    client = MlflowClient(uri)
    tags = client.get_run(doc["mlflow_run_id"]).data.tags
    env = {k[len("version."):]: v for k, v in tags.items() if k.startswith("version.")}
    env.update({k: tags.get(k) for k in ("cpu_capability", "torch_threads", "device",
                                         "git_commit", "git_dirty", "params_hash")})
    numbers = run_numbers(client, doc["mlflow_run_id"], Path(tempfile.mkdtemp(dir=root)))
    return numbers, env


def fixture_path(transformers_version: str) -> Path:
    return FIXTURES / f"determinism_transformers{transformers_version.split('.')[0]}.json"


def write_fixture(numbers: Numbers, env: dict) -> Path:
    path = fixture_path(env["transformers"])
    doc = {"what": "the smoke profile's baseline stage (`study prepare`, `study baseline`) "
                   f"with {', '.join(FIXTURE)}, each in a new process; written by `study "
                   "bench --determinism --write-fixture`, compared by tests/test_determinism.py",
           "profile": FIXTURE_PROFILE, "overrides": list(FIXTURE), "environment": env,
           "numbers": numbers}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def transformers_variation(ws: Workspace, params: Path, python: str | None,
                           write: bool, earlier: dict | None) -> dict:
    """The fixture training on this line against another environment's (`python`), and
    against the committed fixture of this line. Without `python`, an earlier measurement of
    the pair is kept (it needs that environment), else it is not measured."""
    from study.tracking import git_state

    # Its runs ran in the scratch folder, outside the checkout: the commit is the checkout's.
    checkout = git_state()
    here, env = fixture_training(sys.executable, ws.root / "fixture-here", params)
    env.update(checkout)
    entry: dict[str, Any]
    if python:
        other, other_env = fixture_training(python, ws.root / "fixture-other", params)
        other_env.update(checkout)
        entry = verdict(compare(here, other), _line(env), _line(other_env),
                        environments={"a": env, "b": other_env})
    elif earlier and earlier.get("verdict") in ("identical", "different"):
        entry = {k: v for k, v in earlier.items() if k not in ("fixture", "kept")}
        entry["kept"] = {"why": "--python not given: the pair as an earlier run measured it",
                         **{k: earlier.get("kept", {}).get(k, earlier.get(k))
                            for k in ("commit", "load_average", "seconds")}}
    else:
        entry = {"verdict": "not measured",
                 "why": "needs another transformers line: --python PATH (e.g. the venv .ci/run "
                        "builds for its leg 2)"}
    path = fixture_path(env["transformers"])
    if write:
        write_fixture(here, env)
        print(f"fixture written: {path}", flush=True)
    if path.is_file():
        fixture = json.loads(path.read_text())
        entry["fixture"] = {
            "path": path.relative_to(FIXTURES.parents[1]).as_posix(),
            **verdict(compare(fixture["numbers"], here),
                      f"fixture ({_line(fixture['environment'])}, "
                      f"{fixture['environment'].get('cpu_capability')})",
                      f"this line ({_line(env)}, {env.get('cpu_capability')})")}
    return entry


# --------------------------------------------------------------------------- the bench
PARTS = ("threads", "process", "hog", "processes", "dvc", "transformers")
AGAINST_STUDY_RUN = ("threads", "process", "hog", "dvc")  # each against `study run`'s training


def run(cfg: Config, parts: tuple[str, ...] | None = None, profile: str | None = None,
        params: str | None = None, overrides: list[str] | tuple[str, ...] = (),
        python: str | None = None, write_fixture: bool = False) -> dict:
    """Train `profile` (smoke unless named) under each variation of `parts` (all by default)
    and write their verdicts to reports/bench.json `determinism`; variations not run this time
    keep what an earlier run wrote there."""
    import torch

    from study import prepare
    from study import teacher as teacher_stage
    from study.bench.common import read_bench
    from study.config import default_params_path
    from study.tracking import git_state

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per read
    parts = tuple(parts or PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise StudyError(f"--parts: unknown part(s) {', '.join(unknown)} of --determinism "
                         f"(known: {', '.join(PARTS)})")
    if python and not Path(python).is_file():
        raise StudyError(f"--python {python}: no such file")
    profile = profile or FIXTURE_PROFILE
    params_path = (Path(params) if params else default_params_path()).resolve()
    earlier = read_bench(cfg).get("determinism", {}).get("variations", {})
    found: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    started = time.time()

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        t0 = time.time()
        yield
        seconds[name] = seconds.get(name, 0.0) + time.time() - t0

    def done(name: str, entry: dict, *costs: str) -> None:
        """A variation's verdict, with what its trainings cost and the load it ran under."""
        entry.update(seconds=round(sum(seconds.get(c, 0.0) for c in costs), 1),
                     load_average=[round(x, 2) for x in os.getloadavg()],
                     commit=git_state().get("git_commit"))
        found[name] = entry
        print(summary(name, entry), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-determinism-") as tmp, ExitStack() as stack:
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        ws = Workspace(Path(tmp), params_path, profile, list(overrides))
        threads = ws.config().runtime.threads
        other = 1 if threads != 1 else 2
        with _inside(ws.root):
            prepare.run(ws.config())
        # First the work that is not compared with `study run`'s training, so that training
        # comes after other work in this process.
        if "process" in parts:
            with timed("fresh"):
                fresh = fresh_baseline(ws)
        if "threads" in parts:
            with timed("other threads"):
                one = in_process_baseline(ws, f"runtime.threads={other}")
        if "processes" in parts:
            with timed("processes"):
                with _inside(ws.root):
                    teacher_stage.run(ws.config())
                by_one, by_two = search_numbers(ws, 1), search_numbers(ws, 2)
            done("processes", verdict(
                compare(by_one, by_two), "a search of 2 batches, each batch trained one "
                "after the other in this process (runtime.processes 1)", "each batch side by "
                "side in 2 processes (runtime.processes 2)"), "processes")
        if any(p in parts for p in AGAINST_STUDY_RUN):
            with timed("study run"):
                here = study_run_baseline(ws)
            label = f"`study run` in this process, after other work ({threads} threads)"
        if "threads" in parts:
            done("threads", verdict(compare(here, one), label, f"runtime.threads={other}"),
                 "study run", "other threads")
        if "process" in parts:
            done("process", verdict(compare(here, fresh), label,
                                    "`study baseline` in a new process"), "study run", "fresh")
        if "hog" in parts:
            with timed("hog"), hogs() as procs:
                hogged = in_process_baseline(ws)
                alive = sum(p.poll() is None for p in procs)
            done("hog", verdict(compare(here, hogged), label,
                                f"the same in this process beside {len(procs)} busy loops, "
                                "one pinned to each core", hogs_alive_at_end=alive), "hog")
        if "dvc" in parts:
            if ws.dvc and importlib.util.find_spec("dvc") is not None:
                with timed("dvc"):
                    entry = verdict(compare(here, dvc_baseline(ws)), label, "`dvc repro` of "
                                    "the profile's pipeline to its baseline stage")
            else:
                entry = {"verdict": "not measured",
                         "why": "no ./dvc.yaml here (run from the repository root), or no DVC"}
            done("dvc", entry, "dvc")
        if "transformers" in parts:
            with timed("transformers"):
                entry = transformers_variation(ws, params_path, python, write_fixture,
                                               earlier.get("transformers"))
            done("transformers", entry, "transformers")
    variations = {name: found.get(name, earlier.get(name)) for name in PARTS
                  if name in found or name in earlier}
    section = {"profile": profile, "overrides": list(overrides),
               "training": f"the {profile} profile's baseline stage (processes: a search of "
                           "two batches)",
               "variations": variations, "seconds": round(time.time() - started, 1)}
    return write_section(cfg, "determinism", section)
