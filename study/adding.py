"""Adding to a study keeps everything in step: `study seeds --add N` and `study search
--n-trials N` on the pipeline's study.

Each records what it adds where DVC reads it, in the params file (`seeds.values`,
`search.n_trials`: the top level for the default profile, `profiles.<name>.` for another,
study.config.params_key), then brings the pipeline up to date as `study run` does: on what
a DVC pipeline tracks (study.cli.not_what_dvc_tracks), `dvc repro` of the profile's pipeline,
so its dvc.lock records the result and `dvc status` is clean afterwards; otherwise the
stages that follow, in this process, which says that no dvc.lock was updated.

- seeds: N seeds, numbered on from the largest of seeds.values, are added to it; the `seeds`
  stage trains only those (every other training is in runs.json), and the report follows.
- search: the pipeline's target (search.n_trials, or the configurations the study has
  asked, if more) is raised by N, and the study is completed to it here, by the interactive
  session (`--timeout` and Ctrl-C act on it as on any `study search`). Then search.n_trials
  becomes the configurations the study has asked: all of the target, or, when the time bound
  cut the session short, only what finished (the params file says what the study is, and a
  later `dvc repro` does not turn a time-bounded request into hours of training). The stages
  after it follow: `search` re-records the study and trains nothing, `best`, `seeds` (which
  trains again only the `distilled` arm, and only when the best trial changed), the report.
  A Ctrl-C records the configurations asked (an interrupted one is re-run by the stage,
  in its slot) and brings nothing else up to date.

Through DVC, the pipeline must be up to date before anything is added (`dvc status` of its
file): otherwise `dvc repro` would also re-run whatever else changed, and an add is refused
with the stages that `study run` would run first.

A plain add, recorded nowhere, as before: `--storage`/`--study-name` (another study, e.g.
workers on one database), `--set` (the params file does not describe what runs), or the
packaged params file (no file of the user's to record in); the command says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from study.config import (
    Config,
    default_params_path,
    load_config,
    params_key,
    write_params_value,
)
from study.errors import StudyError
from study.layout import Layout

PACKAGED = Path(__file__).with_name("params.yaml")


@dataclass(frozen=True)
class Record:
    """Where an add is recorded and how the pipeline is brought up to date."""

    params: Path | None  # the params file to write; None: recorded nowhere
    unrecorded: str | None  # why not, when not
    not_dvc: str | None  # why not through DVC (None: `dvc repro`)

    @classmethod
    def of(cls, cfg: Config, args: argparse.Namespace) -> Record:
        from study.cli import not_what_dvc_tracks

        path = Path(args.params) if args.params else default_params_path()
        if args.overrides:
            why = "--set " + " ".join(args.overrides) + ": the params file does not say what ran"
            return cls(None, why, why)
        # Not resolved: in a checkout the packaged file is a link to the repository's.
        if path.absolute() == PACKAGED.absolute():
            why = f"the packaged params file {PACKAGED} is read (no ./params.yaml, no --params)"
            return cls(None, why, why)
        return cls(path, None, not_what_dvc_tracks(cfg, args))

    def write(self, cfg: Config, key: str, before, after) -> None:
        from study.config import read_params
        from study.pipeline import overlay_keys

        dotted = params_key(cfg.profile, key)
        write_params_value(self.params, dotted, after)
        # The top level is every overlay's base: a profile that sets no value of its own
        # reads this one too (its pipeline's stages that read it are then out of date).
        overlays = read_params(self.params).get("profiles") or {} if cfg.profile == "default" \
            else {}
        also = sorted(name for name, overlay in overlays.items()
                      if not overlay_keys(key, overlay or {}))
        shared = f" (also read by profile {', '.join(also)}: it sets none of its own)" \
            if also else ""
        print(f"== {dotted}: {before} -> {after} in {self.params}{shared}", flush=True)

    def reload(self, cfg: Config) -> Config:
        """The config as the written params file now says."""
        return load_config(self.params, cfg.profile)


# ------------------------------------------------------------------ the pipeline
def _pipeline(cfg: Config) -> Path:
    from study.pipeline import write

    return write(cfg.profile)


def stale(pipeline: Path) -> list[str]:
    """The stages of one profile's pipeline file that `dvc status` finds out of date, in the
    file's order."""
    from study.cli import _dvc_env

    argv = ["dvc", "status", "--json", pipeline.as_posix()]
    proc = subprocess.run([sys.executable, "-m", *argv], env=_dvc_env(), capture_output=True,
                          text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no JSON printed"])[-1]
        raise StudyError(f"{' '.join(argv)} failed (exit {proc.returncode}): {why}")
    changed = {name.rpartition(":")[2] for name in json.loads(lines[-1])}
    return [name for name in yaml.safe_load(pipeline.read_text())["stages"] if name in changed]


def up_to_date_first(cfg: Config, command: str) -> Path:
    """The profile's pipeline file, refused unless `dvc status` finds it up to date."""
    pipeline = _pipeline(cfg)
    changed = stale(pipeline)
    if changed:
        run = "study run" + ("" if cfg.profile == "default" else f" --profile {cfg.profile}")
        raise StudyError(f"the {cfg.profile} pipeline is not up to date (dvc status "
                         f"{pipeline.as_posix()}: {', '.join(changed)}): `{run}` first, then "
                         f"{command} adds only what it adds")
    return pipeline


def follow(cfg: Config, record: Record, stages: tuple[str, ...]) -> None:
    """The stages after an add: through `dvc repro` of the profile's pipeline, else here
    (each that has run here before: what it never made is left to `study run`)."""
    if record.not_dvc is None:
        from study.cli import run_through_dvc

        run_through_dvc(_pipeline(cfg))
        return
    layout = Layout.of(cfg)
    made = {"best": layout.best.metrics, "seeds": layout.seed_runs,
            "report": layout.reports.report}
    never = [name for name in stages if not made[name].exists()]
    for name in stages:
        if name not in never:
            print(f"== study {name} ({cfg.profile})", flush=True)
            importlib.import_module(f"study.{name}").run(cfg)
    left = f"; not run here before, so not now: {', '.join(never)}" if never else ""
    print(f"== no dvc.lock updated ({record.not_dvc}){left}", flush=True)


# ------------------------------------------------------------------ seeds
def add_seeds(cfg: Config, args: argparse.Namespace) -> None:
    """`study seeds --add N`."""
    if args.add < 1:
        raise StudyError(f"--add takes a number of seeds >= 1, got {args.add}")
    record = Record.of(cfg, args)
    if record.not_dvc is None:
        up_to_date_first(cfg, "--add")
    from study import seeds as seeds_stage

    values = seeds_stage.added(cfg, args.add)
    if record.params is None:
        print(f"== seeds.values not written ({record.unrecorded}): a later `study seeds` "
              "leaves the added seeds out", flush=True)
        seeds_stage.run(cfg.replace(seeds={"values": values}))
        follow(cfg, record, ("report",))
        return
    record.write(cfg, "seeds.values", list(cfg.seeds.values), list(values))
    cfg = record.reload(cfg)
    if record.not_dvc is None:
        follow(cfg, record, ())  # dvc repro: seeds (the added seeds only), report
        return
    print(f"== study seeds ({cfg.profile})", flush=True)
    seeds_stage.run(cfg)
    follow(cfg, record, ("report",))


# ------------------------------------------------------------------ search
def _asked(cfg: Config) -> tuple[int, int]:
    """(configurations finished, slots asked) in the pipeline's study; (0, 0) before it
    exists (a missing SQLite file is not created here)."""
    import optuna

    from study import search as search_stage
    from study.storage import resolve_url, sqlite_path

    url = resolve_url(cfg.storage_url)
    db = sqlite_path(url)
    if db is not None and not db.exists():
        return 0, 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.search.study_name,
                                  storage=search_stage.make_storage(cfg, url))
    except KeyError:
        return 0, 0
    slots = search_stage.Slots(study.get_trials(deepcopy=False))
    return len(slots.finished), slots.next


def _another_study(cfg: Config, args: argparse.Namespace) -> bool:
    """Whether the session adds to a study other than the pipeline's: --storage or
    --study-name, or a --set of either."""
    if args.storage is not None or args.study_name is not None:
        return True
    if not args.overrides:
        return False
    own = load_config(args.params, args.profile)  # the params file's, without --set
    return (own.search.study_name, own.storage_url) != (cfg.search.study_name, cfg.storage_url)


def add_trials(cfg: Config, args: argparse.Namespace) -> None:
    """`study search --n-trials N`."""
    from study import search as search_stage

    search_stage.check_session(args.n_trials, args.timeout)
    if _another_study(cfg, args):
        search_stage.run(cfg, n_trials=args.n_trials, timeout=args.timeout,
                         storage=args.storage, study_name=args.study_name)
        return
    record = Record.of(cfg, args)
    if record.params is None:
        print(f"== search.n_trials not written ({record.unrecorded}): the pipeline's target "
              "stays as the params file says", flush=True)
        search_stage.run(cfg, n_trials=args.n_trials, timeout=args.timeout)
        return
    if record.not_dvc is None:
        up_to_date_first(cfg, "--n-trials")
    target = cfg.search.n_trials
    finished, asked = _asked(cfg)
    # The session trains what completes the raised target: any configuration interrupted
    # before, and N new ones.
    add = max(target, asked) + args.n_trials - finished
    try:
        search_stage.run(cfg, n_trials=add, timeout=args.timeout)
    except KeyboardInterrupt:
        _record_trials(cfg, record, target)
        raise
    _record_trials(cfg, record, target)
    follow(record.reload(cfg), record, ("best", "seeds", "report"))


def _record_trials(cfg: Config, record: Record, target: int) -> None:
    """search.n_trials = the configurations the study has asked (never fewer than before)."""
    now = max(target, _asked(cfg)[1])
    if now != target:
        record.write(cfg, "search.n_trials", target, now)
