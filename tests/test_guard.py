"""study.guard: a process tree that ends with its parent, however the parent ends.

The tree stands in for MLflow's server: a child, its grandchild, and a grandchild that
started a session of its own (as MLflow's huey consumers do), each a `sleep`. The parent is
a Python process that starts the guard as `study ui` does (study.guard.start_guarded) and
prints the guard's pid; the tests then end the parent in each way and look for survivors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from study.guard import descendants

STOP_S = 10  # the guard's SIGTERM wait (5 s) and a margin; the tree ends well before

TREE = textwrap.dedent("""
    import subprocess, sys, time
    a = subprocess.Popen(["sleep", "600"])                          # a grandchild
    b = subprocess.Popen(["sleep", "600"], start_new_session=True)  # in a session of its own
    print(a.pid, b.pid, flush=True)
    time.sleep(600)
""")

PARENT = textwrap.dedent("""
    import sys, time
    from study.guard import start_guarded, stop_guarded
    guard, write_end = start_guarded([sys.executable, "-c", sys.argv[1]])
    print(guard.pid, flush=True)
    if sys.argv[2] == "exit":      # the parent's own clean stop
        time.sleep(float(sys.argv[3]))
        stop_guarded(guard, write_end)
    else:
        time.sleep(600)
""")


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its reaper has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_parent(mode: str = "wait", exit_after: float = 0) -> tuple[subprocess.Popen, int, set[int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, TREE, mode, str(exit_after)],
                              stdout=subprocess.PIPE, text=True, env=env)
    guard = int(parent.stdout.readline())
    sleeps = {int(pid) for pid in parent.stdout.readline().split()}
    tree = descendants(guard)  # the guard's child and its two sleeps
    assert sleeps < tree and len(tree) == 3, f"the tree did not start: {tree}"
    return parent, guard, tree


def survivors(pids: set[int], within_s: float = STOP_S) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def cleanup(pids):
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["sigkill", "sigterm", "sigint"])
def test_the_tree_ends_with_its_parent(sig):
    parent, guard, tree = start_parent()
    everyone = {guard, *tree}
    try:
        # The orphan-prone grandchild is in no group of the guard's: found as a descendant.
        assert any(os.getsid(p) == p for p in tree)
        t0 = time.monotonic()
        parent.send_signal(sig)
        parent.wait(timeout=30)
        assert survivors(everyone) == [], "processes outlived their parent"
        assert time.monotonic() - t0 < STOP_S
    finally:
        cleanup(everyone | {parent.pid})


def test_a_clean_stop_closes_the_pipe_and_the_tree_ends():
    parent, guard, tree = start_parent("exit", exit_after=0.5)
    try:
        assert parent.wait(timeout=30) == 0
        assert survivors({guard, *tree}) == []
    finally:
        cleanup({guard, *tree})


def test_the_tree_ends_when_the_guards_child_exits():
    """A server that exits (or crashes) leaves none of its children behind."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    read_end, write_end = os.pipe()
    crash = TREE.replace("time.sleep(600)", "sys.exit(3)")
    guard = subprocess.Popen([sys.executable, "-m", "study.guard", str(read_end), str(os.getpid()),
                              "--", sys.executable, "-c", crash], pass_fds=(read_end,),
                             start_new_session=True, env=env, stdout=subprocess.PIPE, text=True)
    os.close(read_end)
    sleeps = {int(pid) for pid in guard.stdout.readline().split()}
    try:
        assert len(sleeps) == 2
        assert guard.wait(timeout=60) == 3  # the child's exit code
        assert survivors(sleeps, within_s=0) == []  # ended before the guard returned
    finally:
        os.close(write_end)
        cleanup(sleeps)
