"""A process tree that cannot outlive its parent: `study ui`'s MLflow server.

    python -m study.guard READ_FD PARENT_PID -- command ...

runs `command` in this process's group (the parent starts the guard in a new session, so the
guard leads it) and takes the whole group down, descendants that left it included, when:

- the pipe whose read end is READ_FD reaches end of file: the parent holds the only write
  end, and the kernel closes it however the parent ends (exit, Ctrl-C, SIGTERM, SIGKILL, a
  crash), so no signal handler of the parent is needed;
- the parent dies (Linux: PR_SET_PDEATHSIG, a second path that needs no pipe), or the guard
  gets SIGTERM, SIGINT or SIGHUP;
- the command exits (its own children are not left behind).

The command gets PR_SET_PDEATHSIG(SIGKILL) too, so a guard killed outright takes it along.
The guard is a child subreaper: a descendant whose parent exits stays below it, where it is
found and ended. Standard library only, single-threaded: it starts in a fraction of a second
and never waits on another thread.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_WAIT_S = 5.0  # SIGTERM first (uvicorn closes its socket), then SIGKILL
PARENT_WAIT_S = 3 * STOP_WAIT_S  # the parent's wait for the guard before it SIGKILLs the group


def _prctl(option: int, value: int) -> bool:
    """Linux prctl(2); False where there is none (the pipe still guards)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """For a child's preexec_fn: `sig` reaches this process when its parent dies."""
    _prctl(PR_SET_PDEATHSIG, sig)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (empty where there is no /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _signal_all(sig: int) -> None:
    me = os.getpid()
    try:
        os.killpg(os.getpgrp(), sig)  # the group, the guard included (it ignores it by now)
    except OSError:
        pass
    for pid in descendants(me):  # those that started a session of their own
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _reap() -> None:
    """Collect exited children (and orphans re-parented to the guard)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def take_down(wait_s: float = STOP_WAIT_S) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _signal_all(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap()
        if not descendants(os.getpid()):
            return
        time.sleep(0.05)
    _signal_all(signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap()
        if not descendants(os.getpid()):
            return
        time.sleep(0.05)


# ----------------------------------------------------------------- the parent's side
def start_guarded(command: list[str]) -> tuple[subprocess.Popen, int]:
    """`command` under study.guard, in a new session (Ctrl-C reaches `study ui` alone); the
    guard ends it when the returned pipe end closes. Returns the guard and that end."""
    read_end, write_end = os.pipe()
    try:
        guard = subprocess.Popen(
            [sys.executable, "-m", "study.guard", str(read_end), str(os.getpid()), "--",
             *command], pass_fds=(read_end,), start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return guard, write_end


def stop_guarded(guard: subprocess.Popen, write_end: int) -> None:
    """Close the pipe (the guard takes its group down), then wait; SIGKILL the group if the
    guard does not end in time."""
    try:
        os.close(write_end)
    except OSError:
        pass
    try:
        guard.wait(timeout=PARENT_WAIT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(guard.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        guard.wait()


# ----------------------------------------------------------------- the guard
_stopping = False


def _stop(signum, frame):
    # A flag, not an exception: SIGTERM from PR_SET_PDEATHSIG comes with the pipe's end of
    # file, and an exception raised inside take_down() would cut it short.
    global _stopping
    _stopping = True


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m study.guard READ_FD PARENT_PID -- command ...", file=sys.stderr)
        return 2
    fd, parent = int(argv[0]), int(argv[1])
    command = argv[3:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    code = 0
    try:
        if os.getppid() != parent:  # the parent died before the line above: do not start
            return 1
        # preexec_fn is safe here: the guard runs no other thread.
        child = subprocess.Popen(command, preexec_fn=die_with_parent)  # noqa: PLW1509
        while not _stopping:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready and not os.read(fd, 64):
                break  # end of file: the parent is gone or stopped us
            if child.poll() is not None:  # a signal's death reads as the shell shows it
                code = child.returncode if child.returncode >= 0 else 128 - child.returncode
                break
    finally:
        take_down()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
