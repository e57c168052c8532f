"""`study bench`: measurements of the study's own machinery, one module each, named for what
it measures. Each module's `run(cfg, ...)` measures and writes its section of
reports/bench.json with the environment it ran in (`study.bench.common`). No DVC stage runs
them, and no stage imports them: nothing here changes a number of the study.

    study bench                    # cache: plain vs live-teacher vs cached-teacher training
    study bench --cpu              # cpu: GEMM rate, bare vs project step, a trial's time split
    study bench --floor            # floor: the main job's FLOPs at the GEMM peak (a floor)
    study bench --pruning          # pruning: the seeded search with and without its pruner
    study bench --intervals        # intervals: each interval method on simulated studies
    study bench --determinism      # determinism: what moves a training's numbers, and what not

`MEASUREMENTS` declares them once: study/cli.py builds `study bench`'s mutually exclusive
flags and its dispatch from it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    module: str  # study.bench.<module>, whose run(cfg, **kwargs) measures
    flag: str | None  # the command line's flag; None: what `study bench` alone measures
    help: str
    # run()'s keyword arguments from the parsed command line.
    kwargs: Callable[[argparse.Namespace], dict[str, Any]] = field(default=lambda args: {})
    number: str | None = None  # the flag takes a number (its metavar), e.g. --workers N

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_") if self.flag else self.module

    def run(self, cfg, args: argparse.Namespace):
        return importlib.import_module(f"{__name__}.{self.module}").run(cfg, **self.kwargs(args))


def forwarded(args: argparse.Namespace) -> list[str]:
    """The command line's --params/--profile/--set, for a `study` subprocess."""
    argv = [] if args.params is None else ["--params", args.params]
    argv += [] if args.profile is None else ["--profile", args.profile]
    return argv + [a for kv in args.overrides for a in ("--set", kv)]


MEASUREMENTS = (
    Measurement("cache", None, "time plain fine-tuning vs live-teacher vs cached-teacher "
                "distillation (the default measurement)",
                kwargs=lambda a: {"steps": a.steps}),
    Measurement("cpu", "--cpu", "instead: this CPU's fp32 GEMM rate, a bare PyTorch training "
                "step of the student vs the project's step (1 and 2 threads), two 1-thread "
                "processes vs one 2-thread process, and one search trial's time split",
                kwargs=lambda a: {"steps": a.steps,
                                  "parts": tuple(a.parts.split(",")) if a.parts else None}),
    Measurement("floor", "--floor", "instead: the least time the main job can take here: its "
                "trainings' and evaluations' FLOPs at the GEMM peak of `--cpu`"),
    Measurement("pruning", "--pruning", "instead: the same seeded search with and without the "
                "pruner",
                kwargs=lambda a: {"n_configs": a.n_configs, "from_study": a.from_study,
                                  "pruners": a.pruners.split(",") if a.pruners else None}),
    Measurement("fixed_cost", "--fixed-cost", "instead: per-trial fixed work (windows, teacher, "
                "cache key) at SQuAD's size, before and after it was done once per data version"),
    Measurement("input_pipeline", "--input-pipeline", "instead: the training dataloader, "
                "collation and cached-logit lookup at 32 x 384 with no model (batches/s)"),
    Measurement("gpu", "--gpu", "instead (on a CUDA GPU): bare training loop vs the project's "
                "step, the teacher pass rate and the GPU-busy share",
                kwargs=lambda a: {"steps": a.steps}),
    Measurement("workers", "--workers", "instead: N `study search` workers on one new study in "
                "search.storage (PostgreSQL): the peak number of database backends",
                kwargs=lambda a: {"n": a.workers, "forward": forwarded(a)}, number="N"),
    Measurement("intervals", "--intervals", "instead: each interval method on simulated "
                "studies (false positives and power at 3 and 5 seeds)"),
    Measurement("determinism", "--determinism", "instead: train the smoke profile (--profile: "
                "another) under each variation (torch threads, a new process, a CPU hog, a "
                "search's batches side by side, dvc repro, another transformers line with "
                "--python) and say whether every number is identical",
                kwargs=lambda a: {"parts": tuple(a.parts.split(",")) if a.parts else None,
                                  "profile": a.profile, "params": a.params,
                                  "overrides": a.overrides, "python": a.python,
                                  "write_fixture": a.write_fixture}),
)


def chosen(args: argparse.Namespace) -> Measurement:
    """The measurement the command line asks for (its flag given), else the default."""
    for m in MEASUREMENTS:
        if m.flag is not None and getattr(args, m.dest) not in (None, False):
            return m
    return next(m for m in MEASUREMENTS if m.flag is None)
