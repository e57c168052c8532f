"""Output helpers: stage outputs appear whole or not at all."""

from __future__ import annotations

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
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a sibling scratch folder; on success it replaces `final`, on error it is dropped,
    so an earlier good output survives a failed or interrupted run."""
    final = Path(final)
    ensure_writable(final.parent)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


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
