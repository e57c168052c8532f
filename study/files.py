"""Output helpers: stage outputs appear whole or not at all; scratch folders are owned by one
live process and found again by the next run."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from study.errors import StudyError


def ensure_writable(directory: Path) -> None:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"output directory {directory} is not writable: {exc.strerror}") from None


@contextmanager
def owned_dir(path: Path) -> Iterator[Path]:
    """Create `path` (or find what an earlier run left there) and hold it for this process
    while the block runs: a second live process is refused, a dead one's folder is taken over.

    The hold is an flock on the folder itself, so the kernel releases it when its holder
    dies (SIGKILL included) and no lock file is left beside the folder. A folder renamed or
    removed by its holder while we waited is not ours: the lock is checked to be on what
    `path` still names."""
    path = Path(path)
    ensure_writable(path.parent)
    for _ in range(3):
        path.mkdir(exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # removed between mkdir and open: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyError(f"{path} is in use by another live study process; wait for it "
                             "to finish (or stop it) and run again") from None
        try:
            same = os.fstat(fd).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder moved it away as we locked it
    else:
        raise StudyError(f"{path} keeps being replaced by another process")
    try:
        yield path
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def staged_dir(final: Path, keep: bool = False) -> Iterator[Path]:
    """Yield the scratch folder beside `final` (`.<name>.tmp`, owned as in `owned_dir`); on
    success it replaces `final`, so an earlier good output survives a failed or killed run.

    The scratch has a fixed name, so the next run finds what a killed or failed one left:
    with `keep` (a training that checkpoints there, study.fit.Checkpoints) it is kept on an
    error and reused to resume; else it is emptied first and dropped on an error."""
    final = Path(final)
    ensure_writable(final.parent)
    with owned_dir(final.with_name(f".{final.name}.tmp")) as tmp:
        old = final.with_name(f".{final.name}.old")
        # What a killed run of this stage can leave: its swap's old copy, and (before the
        # scratch had a fixed name) `.<name>.tmp-<random>` / `.old-<random>` folders.
        for leftover in (old, *final.parent.glob(f".{final.name}.tmp-*"),
                         *final.parent.glob(f".{final.name}.old-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        if not keep:
            _empty(tmp)
        try:
            yield tmp
        except BaseException:
            if not keep:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            final.rename(old)
        tmp.rename(final)  # the held folder becomes `final`; the flock goes with it
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """A persistent scratch folder (owned as in `owned_dir`) for one piece of work that can
    resume there after a kill or an error: kept when the block fails, removed when it
    succeeds (its results have been recorded elsewhere by then)."""
    with owned_dir(path) as folder:
        yield folder
        shutil.rmtree(folder, ignore_errors=True)


def _empty(folder: Path) -> None:
    for item in folder.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Whole or not at all: a reader (or a killed writer) never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True,
                                  default=str) + "\n")


def read_json(path: Path, what: str, hint: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{what} not found at {path}: {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{what} at {path} is not valid JSON ({exc.msg})") from None
