"""Trainings side by side, with numbers that do not depend on which one finishes first.

`SideBySide(processes, threads)` calls a function of the project on each of a list of jobs,
in `processes` spawned processes with `threads` torch threads each, or, with one process,
here, one after the other. A training's numbers depend on its thread count, never on how
many trainings run at once or in which process (`study bench --determinism`), so both ways
give the same results; the callers use them in an order of their own (the search tells its
trials in trial-number order, `seeds` keys each training by arm and seed), never in the
order they finished.

On two cores, two one-thread processes train about a third more than one two-thread process
(threads scale 1.5x there; `study bench --cpu`).

A child process
- ignores SIGINT: a Ctrl-C reaches the parent, which asks its children to stop through an
  event that their trainings read at every step (`stop_requested`), so each stops where it
  can stop cleanly and says so;
- dies with its parent: a watchdog thread ends it once the parent is gone (SIGKILL, a crash),
  so no training outlives the command that started it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from transformers import TrainerCallback

from study.config import Config

J = TypeVar("J")
R = TypeVar("R")
POLL_S = 0.2  # how often the parent looks for a Ctrl-C while its children train
WATCH_S = 0.5  # how often a child looks for its parent

_STOP = None  # in a child: the parent's stop event


def trainee(cfg: Config) -> Config:
    """The config of a training run side by side with others: `runtime.process_threads`
    torch threads, recorded as its runtime.threads (what its run's config.json shows)."""
    return cfg.replace(runtime={"threads": cfg.runtime.process_threads})


def stop_requested() -> bool:
    """Whether this process is a child whose parent asked it to stop."""
    return _STOP is not None and _STOP.is_set()


class StopWhenAsked(TrainerCallback):
    """Stops a training in a child at its next step once the parent asks (a Ctrl-C there),
    as a Ctrl-C would stop it in the parent: KeyboardInterrupt, so its run ends KILLED."""

    def check(self, *args, **kwargs) -> None:
        if stop_requested():
            raise KeyboardInterrupt

    on_step_end = on_substep_end = on_prediction_step = on_evaluate = check


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(1)  # the parent is gone: nothing here can be recorded any more


def _child(stop, threads: int, parent: int) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()


class SideBySide:
    """A context manager: `with SideBySide(2, 1) as pool: pool.map(fn, jobs, interrupted)`."""

    def __init__(self, processes: int, threads: int):
        self.processes, self.threads = processes, threads
        self.pool: cf.ProcessPoolExecutor | None = None
        self.stop = None

    def __enter__(self) -> SideBySide:
        if self.processes > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads
            self.stop = ctx.Event()
            self.pool = cf.ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_child,
                                               initargs=(self.stop, self.threads, os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            if exc[0] is not None:
                self.stop.set()  # what still trains stops at its next step
            self.pool.shutdown(wait=True, cancel_futures=True)

    def completed(self, fn: Callable[[J], R], jobs: Sequence[J],
                  interrupted: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, R]]:
        """(index of the job, fn(job)) as each finishes. Here (one process), in the jobs'
        order, each job checking for a Ctrl-C itself; in children, a Ctrl-C that
        `interrupted` reports is passed on to them (`stop_requested`), and every job still
        ends, stopped or not."""
        if self.pool is None:
            import torch

            before = torch.get_num_threads()
            try:
                for i, job in enumerate(jobs):
                    torch.set_num_threads(self.threads)
                    yield i, fn(job)
            finally:
                torch.set_num_threads(before)
            return
        futures = {self.pool.submit(fn, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
            if interrupted():
                self.stop.set()
            for future in sorted(done, key=futures.__getitem__):
                yield futures[future], future.result()

    def map(self, fn: Callable[[J], R], jobs: Sequence[J],
            interrupted: Callable[[], bool] = lambda: False) -> list[R]:
        """fn(job) for every job, in the jobs' order, once all have finished."""
        results: dict[int, Any] = dict(self.completed(fn, jobs, interrupted))
        return [results[i] for i in range(len(jobs))]
