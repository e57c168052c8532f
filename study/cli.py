"""`study`: one subcommand per pipeline stage; DVC runs these same commands.

    study run                      # prepare .. search, best, seeds, report (default profile)
    study run --profile smoke      # the same in seconds, on a few questions
    study distill --temperature 4 --alpha-ce 0.7 --alpha-squad 0.3
    study search --n-trials 20     # add trials to the Optuna study
    study predict --model artifacts/default/best/model --data questions.jsonl
    study ui                       # MLflow UI on the project's store, 127.0.0.1 only
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

from study.errors import StudyError

# The main job: the whole study. The standalone `distill` stage is left out: the search's
# first trial is the same configuration (the authors' setting).
RUN_CHAIN = ("prepare", "teacher", "baseline", "search", "best", "seeds", "report")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--params", default=None, help="params file (default: ./params.yaml, else the packaged one)")
    p.add_argument("--profile", default=None, help="named profile in params.yaml: smoke, default, paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one params key, e.g. --set student.train.epochs=2 (repeatable)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    add("prepare", "load, validate and split the data by article (train/tune/dev)")
    add("teacher", "fine-tune the teacher on train, score it on tune and dev")
    add("baseline", "fine-tune the student with no teacher (task-agnostic baseline)")
    d = add("distill", "fine-tune the student with the teacher (DistilBERT's SQuAD loss)")
    d.add_argument("--temperature", type=float, help="softmax temperature T (> 0)")
    d.add_argument("--alpha-ce", type=float, help="weight of the T^2-scaled KL term, in [0, 1]")
    d.add_argument("--alpha-squad", type=float, help="weight of the gold-span CE term, in [0, 1]")
    d.add_argument("--teacher-logits", choices=["cache", "live"],
                   help="cached teacher logits (default) or a live teacher forward each step")
    s = add("search", "Optuna study over temperature and loss weights, tracked in MLflow")
    s.add_argument("--n-trials", type=int, help="trials to add in this session")
    s.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
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
    add("seeds", "re-train baseline and best distilled config with several seeds; CIs")
    add("report", "regenerate reports/ (tables, figures) from the exported results")
    b = add("bench", "time plain fine-tuning vs live-teacher vs cached-teacher distillation")
    b.add_argument("--steps", type=int, default=None, help="training steps per variant")
    b.add_argument("--pruning", action="store_true",
                   help="instead: the same seeded search with and without the pruner")
    b.add_argument("--fixed-cost", action="store_true",
                   help="instead: per-trial fixed work (windows, teacher, cache key) at SQuAD's "
                        "size, before and after it was done once per data version")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="instead: N `study search` workers on one new study in search.storage "
                        "(PostgreSQL): the peak number of database backends")
    b.add_argument("--n-configs", type=int, default=None,
                   help="configurations per search with --pruning (default: search.n_trials)")
    u = add("ui", "start the MLflow UI on the project's tracking store (127.0.0.1)")
    u.add_argument("--port", type=int, default=5000)
    r = add("run", "the main job: " + ", ".join(RUN_CHAIN))
    r.add_argument("--skip", action="append", default=[], choices=RUN_CHAIN,
                   help="leave out a stage (repeatable)")
    return parser


def _common_argv(args: argparse.Namespace) -> list[str]:
    """The command line's --params/--profile/--set, for a `study` subprocess."""
    argv = [] if args.params is None else ["--params", args.params]
    argv += [] if args.profile is None else ["--profile", args.profile]
    return argv + [a for kv in args.overrides for a in ("--set", kv)]


def _stage(name: str):
    return importlib.import_module(f"study.{name}")


def dispatch(args: argparse.Namespace) -> None:
    from study.config import load_config

    cfg = load_config(args.params, args.profile, args.overrides)
    cmd = args.command
    if cmd == "distill":
        from study.distill import run, with_overrides
        run(with_overrides(cfg, args.temperature, args.alpha_ce, args.alpha_squad, args.teacher_logits))
    elif cmd == "search":
        _stage("search").run(cfg, n_trials=args.n_trials, timeout=args.timeout,
                             storage=args.storage, study_name=args.study_name)
    elif cmd == "bench":
        bench = _stage("bench")
        if args.pruning:
            bench.pruning(cfg, n_configs=args.n_configs)
        elif args.fixed_cost:
            bench.fixed_cost(cfg)
        elif args.workers:
            bench.workers(cfg, args.workers, _common_argv(args))
        else:
            bench.run(cfg, steps=args.steps)
    elif cmd == "predict":
        _stage("predict").run(cfg, args.model, data=args.data, out=args.out,
                              question=args.question, context=args.context)
    elif cmd == "ui":
        _stage("ui").run(cfg, port=args.port)
    elif cmd == "run":
        total = time.time()
        timings = {}
        skip = set(args.skip)
        if "best" in skip:
            skip.add("report")  # the report is built from what `best` exports
        for name in RUN_CHAIN:
            if name in skip:
                continue
            print(f"== study {name} ({cfg.profile})", flush=True)
            t0 = time.time()
            _stage(name).run(cfg)
            timings[name] = round(time.time() - t0, 1)
        print("== stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
              + f"; total {round(time.time() - total, 1)}")
    else:
        _stage(cmd).run(cfg)


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
        dispatch(args)
    except StudyError as exc:
        print(f"study {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"study {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
