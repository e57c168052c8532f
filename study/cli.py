"""`study`: one subcommand per pipeline stage; DVC runs these same commands.

    study run                      # prepare .. search, best, seeds, report (default profile,
                                   # through `dvc repro`, so dvc.lock records it)
    study run --profile smoke      # the same in seconds, on a few questions (through
                                   # `dvc repro pipelines/smoke/dvc.yaml`)
    study distill --temperature 4 --alpha-ce 0.7 --alpha-squad 0.3
    study search                   # complete the Optuna study to search.n_trials configurations
    study search --n-trials 20     # add 20 configurations to it (search.n_trials += 20 in
                                   # params.yaml; best, seeds, report follow)
    study seeds --add 2            # 2 more seeds (seeds.values in params.yaml; report follows)
    study predict --model artifacts/default/best/model --data questions.jsonl
    study ui                       # MLflow UI on the project's store, 127.0.0.1 only
    study rerun trial 0            # re-train a recorded run, compare every number it recorded
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from study.bench import MEASUREMENTS
from study.errors import StudyError

# The main job: the whole study. The standalone `distill` stage is left out: the search's
# first trial is the same configuration (the authors' setting).
RUN_CHAIN = ("prepare", "teacher", "baseline", "search", "best", "seeds", "report")
# What `dvc repro` prints as it starts or skips a stage (read to time each stage); a stage of
# another profile's pipeline is named `pipelines/<profile>/dvc.yaml:<stage>`.
DVC_STAGE = re.compile(r"^(?:Running stage '(?:[^']*:)?([^':]+)'"
                       r"|Stage '(?:[^']*:)?([^':]+)' didn't change)")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--params", default=None, help="params file (default: ./params.yaml, else the packaged one)")
    p.add_argument("--profile", default=None, help="named profile in params.yaml: smoke, default, paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one params key, e.g. --set student.train.epochs=2 (repeatable)")
    return p


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, as every other refusal (`study <cmd>: error: ...`, exit 2);
    `--help` still shows the usage. Subcommand parsers are of this class too (argparse makes
    them so), and an argument no subcommand knows is refused by that subcommand's parser,
    not the top level's (`study: error: unrecognized arguments`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self.commands.get(getattr(parsed, "command", None), self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _number(kind, low=None, high=None, low_open=False):
    """An argparse type: a number in range, refused while parsing (in well under a second,
    before any stage imports torch) rather than by the stage."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    return parse


COUNT = _number(int, 1)           # trials, seeds, steps, configurations, workers
PORT = _number(int, 1, 65535)
SECONDS = _number(float, 0, low_open=True)
TEMPERATURE = _number(float, 0, low_open=True)
WEIGHT = _number(float, 0, 1)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="study", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    add("prepare", "load, validate and split the data by article (train/tune/dev)")
    add("teacher", "fine-tune the teacher on train, score it on tune and dev")
    add("baseline", "fine-tune the student with no teacher (task-agnostic baseline)")
    d = add("distill", "fine-tune the student with the teacher (DistilBERT's SQuAD loss)")
    d.add_argument("--temperature", type=TEMPERATURE, help="softmax temperature T (> 0)")
    d.add_argument("--alpha-ce", type=WEIGHT, help="weight of the T^2-scaled KL term, in [0, 1]")
    d.add_argument("--alpha-squad", type=WEIGHT, help="weight of the gold-span CE term, in [0, 1]")
    d.add_argument("--teacher-logits", choices=["cache", "live"],
                   help="cached teacher logits (default) or a live teacher forward each step")
    s = add("search", "Optuna study over temperature and loss weights, tracked in MLflow: "
                      "completes the study to search.n_trials configurations")
    s.add_argument("--n-trials", type=COUNT, help="instead: add this many configurations; on "
                   "the pipeline's study, search.n_trials in the params file is raised by what "
                   "was added and best, seeds and report follow (through `dvc repro` where "
                   "`study run` would use it)")
    s.add_argument("--timeout", type=SECONDS, help="stop starting batches after this many "
                   "seconds (interactive: a cut search says so in its summary and report)")
    s.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., "
                   "journal:PATH), or env:VAR / file:PATH holding one (keeps a password out of logs)")
    s.add_argument("--study-name", help="Optuna study name")
    add("best", "export the best trial's student and register it in MLflow")
    p = add("predict", "answer questions with an exported or registered student (EM/F1 if answered)")
    p.add_argument("--model", required=True,
                   help="model folder (safetensors + tokenizer) or MLflow URI, e.g. "
                        "models:/kd-qa-student-default@champion")
    p.add_argument("--data", help="SQuAD v1.1 JSON or JSON Lines of {id, question, context[, answers]}")
    p.add_argument("--out", help="predictions file, id -> answer (default: predictions.json)")
    p.add_argument("--question", help="one question (with --context): print its answer")
    p.add_argument("--context", help="the passage for --question")
    sd = add("seeds", "re-train the baseline, the authors' setting and the searched best with "
                      "several seeds; CIs over seeds and questions")
    sd.add_argument("--add", type=COUNT, default=None, metavar="N",
                    help="train N more seeds and pool them with the recorded ones: added to "
                         "seeds.values in the params file, the report follows (through `dvc "
                         "repro` where `study run` would use it)")
    add("report", "regenerate reports/ (tables, figures) from the exported results")
    b = add("bench", "measure the study's machinery, one measurement a call, into "
                     "reports/bench.json (default: the teacher-logit cache)")
    b.add_argument("--steps", type=COUNT, default=None,
                   help="training steps per variant (the cache, --cpu and --gpu measurements)")
    mode = b.add_mutually_exclusive_group()  # one measurement a call
    for m in MEASUREMENTS:  # declared once, in study.bench
        if m.flag is not None:
            mode.add_argument(m.flag, help=m.help, **(
                {"type": COUNT, "default": None, "metavar": m.number} if m.number
                else {"action": "store_true"}))
    b.add_argument("--n-configs", type=COUNT, default=None,
                   help="configurations per search with --pruning (default: search.n_trials)")
    b.add_argument("--pruners", default=None,
                   help="with --pruning: comma-separated arms to run (default: none and "
                        "search.pruner); arms already in reports/bench.json are kept")
    b.add_argument("--parts", default=None,
                   help="with --cpu: comma-separated parts (default gemm,step,processes,trial; "
                        "compile measures torch.compile, minutes); with --determinism: "
                        "variations (default threads,process,hog,processes,dvc,transformers)")
    b.add_argument("--python", default=None, metavar="PATH",
                   help="with --determinism: the Python of another environment (e.g. the "
                        "transformers 4.x venv of .ci/run) to train the fixture training in")
    b.add_argument("--write-fixture", action="store_true",
                   help="with --determinism: write this line's fixture training to "
                        "tests/data/determinism_transformers<major>.json")
    b.add_argument("--from-study", action="store_true",
                   help="with --pruning: the configured pruner's arm is the search stage's own "
                        "study (its first --n-configs trials), not run again")
    rr = add("rerun", "re-train one recorded run from what it recorded and compare every number "
                      "(exit 0: identical, 1: some differ, 2: cannot be re-run)")
    rr.add_argument("run", nargs="+", metavar="RUN",
                    help="an MLflow run id, `trial N` (a trial of the search) or `seeds ARM SEED`")
    rr.add_argument("--any-commit", action="store_true",
                    help="compare even when this checkout's commit is not the run's")
    rr.add_argument("--threads", type=COUNT, default=None,
                    help="train with this many torch threads, not the run's recorded count")
    rr.add_argument("--study-name", help="the study of `trial N` (default: search.study_name)")
    u = add("ui", "start the MLflow UI on the project's tracking store (127.0.0.1)")
    u.add_argument("--port", type=PORT, default=5000)
    u.add_argument("--request-log", action="store_true",
                   help="print the server's log line for every HTTP request (off by default)")
    r = add("run", "the main job: " + ", ".join(RUN_CHAIN) + "; on the default profile "
            "through `dvc repro`, which also runs the standalone distill stage")
    r.add_argument("--skip", action="append", default=[], choices=RUN_CHAIN,
                   help="leave out a stage (repeatable)")
    r.add_argument("--dry", action="store_true",
                   help="run nothing: write the profile's DVC pipeline file and print what "
                        "`dvc status` says of it (its stages out of date)")
    parser.commands = sub.choices
    return parser


def _stage(name: str):
    return importlib.import_module(f"study.{name}")


def dispatch(args: argparse.Namespace) -> int | None:
    from study.config import load_config

    cfg = load_config(args.params, args.profile, args.overrides)
    cmd = args.command
    if cmd == "distill":
        from study.distill import run, with_overrides
        run(with_overrides(cfg, args.temperature, args.alpha_ce, args.alpha_squad, args.teacher_logits))
    elif cmd == "search" and args.n_trials is not None:  # recorded in params.yaml, in step
        _stage("adding").add_trials(cfg, args)
    elif cmd == "search":
        _stage("search").run(cfg, timeout=args.timeout, storage=args.storage,
                             study_name=args.study_name)
    elif cmd == "bench":
        from study.bench import chosen
        chosen(args).run(cfg, args)
    elif cmd == "predict":
        _stage("predict").run(cfg, args.model, data=args.data, out=args.out,
                              question=args.question, context=args.context)
    elif cmd == "seeds" and args.add is not None:  # recorded in params.yaml, in step
        _stage("adding").add_seeds(cfg, args)
    elif cmd == "ui":
        _stage("ui").run(cfg, port=args.port, request_log=args.request_log)
    elif cmd == "rerun":  # its exit status is its verdict
        return _stage("rerun").run(cfg, args.run, any_commit=args.any_commit,
                                   threads=args.threads, study_name=args.study_name)
    elif cmd == "run":
        run_main_job(cfg, args)
    else:
        _stage(cmd).run(cfg)


def not_what_dvc_tracks(cfg, args: argparse.Namespace) -> str | None:
    """Why this run is not one a DVC pipeline describes (None when it is): DVC runs the stage
    commands with no option but the profile (dvc.yaml: the default; study.pipeline: the
    others), on ./params.yaml, from the repo root."""
    here = Path.cwd()
    if args.overrides:
        return "--set " + " ".join(args.overrides)
    if getattr(args, "skip", None):
        return "--skip " + " ".join(args.skip)
    if not ((here / "dvc.yaml").is_file() and (here / ".dvc").is_dir()):
        return "not at the root of a DVC repository"
    if args.params and Path(args.params).resolve() != (here / "params.yaml").resolve():
        return f"params file {args.params}, not ./params.yaml"
    if not (here / "params.yaml").is_file():
        return "no ./params.yaml"
    if importlib.util.find_spec("dvc") is None:
        return "DVC is not installed"
    from study.pipeline import clash

    return clash(cfg.profile)


def print_wall_times(timings: dict[str, str], started: float) -> None:
    print("== stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
          + f"; total {round(time.time() - started, 1)}", flush=True)


def run_main_job(cfg, args: argparse.Namespace) -> None:
    """The main job. On what a DVC pipeline tracks, `dvc repro` runs the profile's pipeline
    (the same stage commands), so its dvc.lock records every stage and `dvc status` is clean
    afterwards; else in-process."""
    reason = not_what_dvc_tracks(cfg, args)
    if reason is None:
        from study.pipeline import write

        pipeline = write(cfg.profile)
        if args.dry:  # not `dvc repro --dry`: it stops at the first stage whose inputs are missing
            dvc_status(pipeline)
        else:
            run_through_dvc(pipeline)
        return
    started, timings = time.time(), {}
    skip = set(args.skip)
    if "best" in skip:
        skip.add("report")  # the report is built from what `best` exports
    for name in RUN_CHAIN:
        if name in skip:
            continue
        if args.dry:
            print(f"== would run: study {name} ({cfg.profile})", flush=True)
            continue
        print(f"== study {name} ({cfg.profile})", flush=True)
        t0 = time.time()
        _stage(name).run(cfg)
        timings[name] = str(round(time.time() - t0, 1))
    if args.dry:
        print(f"== not through DVC ({reason})", flush=True)
        return
    print_wall_times(timings, started)
    print(f"== no dvc.lock updated ({reason}): `study run` goes through `dvc repro` only on "
          "./params.yaml with no --set or --skip, from the repository root", flush=True)


def _dvc_env() -> dict[str, str]:
    # The stage commands run `study`: this environment's, whichever `study` is first on PATH.
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep
            + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1"}


def dvc_status(pipeline: Path) -> None:
    """`dvc status` of one profile's pipeline file, printed as DVC prints it."""
    argv = ["dvc", "status", pipeline.as_posix()]
    print(f"== study run --dry: {' '.join(argv)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", *argv], env=_dvc_env(), check=False)
    if proc.returncode != 0:
        raise StudyError(f"dvc status failed (exit {proc.returncode}): see above")


def run_through_dvc(pipeline: Path = Path("dvc.yaml")) -> None:
    """`dvc repro` of one profile's pipeline file (./dvc.yaml: the default's; else the one
    study.pipeline wrote): every stage, the standalone `distill` included (a stage left out
    of the lock is one `dvc status` lists as changed). Stages already up to date are skipped.
    Each stage is timed from DVC's own "Running stage" lines."""
    started = time.time()
    lock = pipeline.with_name("dvc.lock").as_posix()
    # ./dvc.yaml is what a plain `dvc repro` runs: the same command, not a target.
    target = [] if pipeline == Path("dvc.yaml") else [pipeline.as_posix()]
    dvc = ["dvc", "repro", *target]
    print(f"== study run: {' '.join(dvc)} ({lock} records every stage)", flush=True)
    timings: dict[str, str] = {}
    current, t0 = None, time.time()
    proc = subprocess.Popen([sys.executable, "-m", *dvc], env=_dvc_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            found = DVC_STAGE.match(line)
            if found:
                if current:
                    timings[current] = str(round(time.time() - t0, 1))
                current, t0 = found[1], time.time()
                if found[2]:
                    timings[found[2]] = "unchanged"
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # DVC got the same Ctrl-C: it stops the stage and keeps dvc.lock whole
        raise
    finally:
        if proc.poll() is None:  # stopped by anything else: DVC stops with us
            proc.terminate()
            proc.wait()
    if current:
        timings[current] = str(round(time.time() - t0, 1))
    if code != 0:
        raise StudyError(f"dvc repro failed (exit {code}) at stage {current}: see above")
    from study.pipeline import keep_local

    keep_local(pipeline)
    print_wall_times(timings, started)


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    # Optuna logs a traceback for a trial stopped by Ctrl-C. The trial is recorded as
    # interrupted and main() says so in one line, so the traceback is noise.
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    optimize_log = logging.getLogger("optuna.study._optimize")
    if _not_an_interrupt not in optimize_log.filters:
        optimize_log.addFilter(_not_an_interrupt)
    args = build_parser().parse_args(argv)
    try:
        code = dispatch(args)
    except StudyError as exc:
        print(f"study {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"study {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
