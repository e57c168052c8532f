"""Every profile's DVC pipeline, instantiated from the one declaration: ./dvc.yaml.

dvc.yaml declares the stages once, on the default profile (the top level of params.yaml), and
is committed with its dvc.lock. Another profile's pipeline is the same stages instantiated for
it (`instantiate`), which `study run --profile NAME` writes to pipelines/NAME/dvc.yaml
(`dvc_file`) before it runs `dvc repro` on that file:
- each command gets `--profile NAME`;
- each path under the default's artifacts or reports folder moves to the profile's
  (`moved`); code and packaged data stay;
- each params key `k` keeps `k` (the top level the overlay is merged on) and adds
  `profiles.NAME.k` where the overlay sets it (or the key above it that the overlay sets
  whole), so a stage re-runs when either value changes, and only then;
- `wdir` is the repository root, where the commands run and params.yaml lies.

Why generated files and not DVC's `foreach` in ./dvc.yaml: a plain `dvc repro` runs every stage
of ./dvc.yaml (and, of other files, only stages upstream of those), so a `foreach` over
profiles there would start the paper's stages offline (`frozen` would not help: a frozen
stage does not run, it fails on its missing outputs), and it renames the default's stages
(`prepare@default`), changing dvc.lock.
`dvc status` lists the stages of every dvc.yaml in the repository that git does not ignore
(DVC refuses a git-ignored dvc.yaml or dvc.lock), so a committed file per profile would leave
it never clean after the default's run. A profile's file exists once `study run` ran that
profile (or showed its plan, `--dry`); from then on `dvc status` covers it, truthfully. It is
written again at every `study run`, so it follows dvc.yaml and params.yaml.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from study.config import load_config, read_params
from study.errors import StudyError
from study.layout import Layout

DECLARATION = Path("dvc.yaml")
PARAMS = Path("params.yaml")
PIPELINES = Path("pipelines")
HEADER = ("# Written by `study run --profile {profile}`: the stages of ./dvc.yaml (the one "
          "declaration)\n# for the profile `{profile}` (study/pipeline.py). Edit dvc.yaml, "
          "not this file:\n# `study run` writes it again each time.\n")
PATH_FIELDS = ("deps", "outs", "metrics")


# These two name paths, which is study.layout's concern; they live here because every stage
# of dvc.yaml depends on study/layout.py, so an edit there outdates the whole committed
# dvc.lock (move them there with the next `dvc repro` of the default profile).
def dvc_file(profile: str) -> Path:
    """A profile's DVC pipeline: ./dvc.yaml for the default (committed, with its dvc.lock), one
    folder a profile for the others (DVC keeps one dvc.yaml, and its dvc.lock, a folder)."""
    return DECLARATION if profile == "default" else PIPELINES / profile / "dvc.yaml"


def moved(path: Path | str, src: Layout, dst: Layout) -> Path:
    """One of `src`'s paths where `dst` keeps it (the same names under `dst`'s artifacts or
    reports folder); a path under neither root (code, packaged data) stays."""
    path = Path(path)
    roots = sorted([(src.artifacts, dst.artifacts), (src.reports.root, dst.reports.root)],
                   key=lambda pair: len(pair[0].parts), reverse=True)  # nested: the nearer
    for mine, theirs in roots:
        if path == mine or mine in path.parents:
            return theirs / path.relative_to(mine)
    return path


def overlay_keys(key: str, overlay: dict) -> list[str]:
    """The overlay's keys that set `key`'s value: `key` itself (a value or a section), or the
    key above it that the overlay sets whole (a value, not a mapping, replaces all below it);
    none when the overlay leaves it to the top level."""
    node: Any = overlay
    parts = key.split(".")
    for depth, part in enumerate(parts, start=1):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
        if depth < len(parts) and not isinstance(node, dict):
            return [".".join(parts[:depth])]
    return [key]


def _moved(entries: list, move) -> list:
    """deps/outs/metrics entries (a path, or {path: flags}) with each path moved."""
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            out.append({move(path): copy.deepcopy(flags) for path, flags in entry.items()})
        else:
            out.append(move(entry))
    return out


def instantiate(declared: dict, params_path: Path | str, profile: str) -> dict:
    """The stages of `declared` (./dvc.yaml's document) for `profile`, as a dvc.yaml document
    to lie at `dvc_file(profile)`. The default profile's is `declared` itself."""
    if profile == "default":
        return copy.deepcopy(declared)
    unknown = set(declared) - {"stages", "plots"}
    if unknown:  # e.g. top-level metrics or vars: their paths would need moving too
        raise StudyError(f"dvc.yaml: no per-profile form for {', '.join(sorted(unknown))} "
                         "(study/pipeline.py)")
    default = Layout.of(load_config(params_path, "default"))
    layout = Layout.of(load_config(params_path, profile))
    overlay = (read_params(Path(params_path)).get("profiles") or {}).get(profile) or {}
    wdir = Path(os.path.relpath(".", dvc_file(profile).parent)).as_posix()

    def move(path: str) -> str:
        return moved(path, default, layout).as_posix()

    stages = {}
    for name, stage in declared["stages"].items():
        mine: dict[str, Any] = {"wdir": wdir}
        for field, value in stage.items():
            if field == "cmd":
                value = f"{value} --profile {profile}"
            elif field in PATH_FIELDS:
                value = _moved(value, move)
            elif field == "params":
                if not all(isinstance(key, str) for key in value):
                    raise StudyError(f"dvc.yaml: stage {name} lists params of another file; "
                                     "a profile's pipeline reads params.yaml only")
                value = [k for key in value for k in
                         (key, *(f"profiles.{profile}.{o}" for o in overlay_keys(key, overlay)))]
            mine[field] = copy.deepcopy(value)
        stages[name] = mine
    doc: dict[str, Any] = {"stages": stages}
    if "plots" in declared:
        # Top-level plots are read from the pipeline file's folder, not from a stage's wdir.
        doc["plots"] = _moved(declared["plots"], lambda p: f"{wdir}/{move(p)}")
    return doc


def outputs(doc: dict, profile: str = "default") -> set[Path]:
    """Every output path of `profile`'s pipeline document, from the repository root."""
    here = dvc_file(profile).parent
    found = set()
    for stage in doc["stages"].values():
        for field in ("outs", "metrics"):
            for entry in stage.get(field, []):
                for path in (entry if isinstance(entry, dict) else [entry]):
                    found.add(Path(os.path.normpath(here / stage.get("wdir", ".") / path)))
    return found


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def clash(profile: str, params_path: Path | str = PARAMS,
          declaration: Path | str = DECLARATION) -> str | None:
    """Why `profile`'s pipeline cannot lie beside the others (None when it can): it writes an
    output that another profile's writes too, or one inside it. DVC refuses overlapping
    outputs anywhere in the repository, in every command, so such a file is never written."""
    declared = yaml.safe_load(Path(declaration).read_text())
    names = ["default", *(read_params(Path(params_path)).get("profiles") or {})]
    mine = outputs(instantiate(declared, params_path, profile), profile)
    for other in names:
        if other == profile:
            continue
        theirs = outputs(instantiate(declared, params_path, other), other)
        for a in sorted(mine):
            for b in theirs:
                if _overlap(a, b):
                    return (f"profile {profile} writes {a.as_posix()}, where profile {other} "
                            f"writes {b.as_posix()} (set profiles.{profile}.runtime.artifacts "
                            "or .reports)")
    return None


def write(profile: str, params_path: Path | str = PARAMS,
          declaration: Path | str = DECLARATION) -> Path:
    """Write `profile`'s pipeline file (unless it holds the same already) and return its path;
    the default profile's is the committed ./dvc.yaml itself, never written."""
    target = dvc_file(profile)
    if profile == "default":
        return target
    reason = clash(profile, params_path, declaration)
    if reason:
        raise StudyError(reason)
    doc = instantiate(yaml.safe_load(Path(declaration).read_text()), params_path, profile)
    text = HEADER.format(profile=profile) + yaml.safe_dump(doc, sort_keys=False,
                                                          default_flow_style=None, width=100)
    if not (target.is_file() and target.read_text() == text):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return target


def keep_local(pipeline: Path) -> None:
    """Unstage the lock DVC staged in git after running `pipeline` (this repository sets
    `core.autostage`) when git does not track the pipeline file itself: a profile's pipeline
    and lock stay out of commits unless someone adds the pair (the paper's, kept beside
    reports/paper/). Nothing to do outside a git work tree."""
    if pipeline == DECLARATION:
        return
    lock = pipeline.with_name("dvc.lock").as_posix()

    def git(*args: str) -> int:
        try:
            return subprocess.run(["git", *args], capture_output=True, timeout=60,
                                  check=False).returncode
        except OSError:  # no git: nothing staged
            return 128

    if git("ls-files", "--error-unmatch", pipeline.as_posix()) != 0 \
            and git("ls-files", "--error-unmatch", lock) == 0:
        git("reset", "-q", "--", lock)
