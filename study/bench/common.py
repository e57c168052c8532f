"""What every measurement shares: its section of reports/bench.json, written with the
environment it ran in (commit, package versions, device, the load average at the end)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from study.config import Config
from study.files import read_json, write_json
from study.layout import Layout
from study.tracking import device_name, git_state, package_versions


def environment() -> dict:
    """Where a figure comes from. The load average (1, 5, 15 min) is read as the measurement
    ends: a figure taken beside other work is a ratio at best, never a quiet machine's."""
    return {**git_state(), "versions": package_versions(), "device": device_name(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def read_bench(cfg: Config) -> dict:
    path = Layout.of(cfg).reports.bench
    return read_json(path, "benchmark file", "") if path.exists() else {}


def write_section(cfg: Config, name: str | None, section: dict) -> dict:
    """`section` and its environment as reports/bench.json's `name`, every other section kept.
    `name` None: merged into the top level, where the cache bench has always written."""
    section = {**section, "environment": environment()}
    doc = read_bench(cfg)
    if name is None:
        doc.update(section)
    else:
        doc[name] = section
    write_json(Layout.of(cfg).reports.bench, doc)
    return section


def random_cache(folder: Path, n: int, length: int, seed: int = 0):
    """A teacher-logit cache of the right shape and dtype (float16) with random logits: the
    work of a training step does not depend on the values."""
    import numpy as np

    from study.teacher_logits import TeacherLogitCache

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in ("start", "end"):
        a = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype="float16",
                                      shape=(n, length))
        a[:] = rng.standard_normal((n, length)).astype("float16")
        a.flush()
    (folder / "meta.json").write_text(json.dumps({"windows": n, "max_length": length}))
    return TeacherLogitCache(folder)
