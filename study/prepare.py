"""Stage `prepare`: load the source, validate it, split it by article, record the split."""

from __future__ import annotations

from study.config import Config
from study.data import build_splits, manifest, write_splits
from study.files import staged_dir, write_json
from study.fit import data_dir


def run(cfg: Config) -> dict:
    splits, source = build_splits(cfg.data)
    doc = manifest(splits, source)
    doc["split_seed"] = cfg.data.split_seed
    with staged_dir(data_dir(cfg)) as out:
        write_splits(splits, out)
        write_json(out / "split.json", doc)
    for name, part in doc["splits"].items():
        print(f"{name:>5}: {part['questions']:5d} questions, {part['articles']:3d} articles, "
              f"sha256 {part['sha256'][:12]}")
    return doc
