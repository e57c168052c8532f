"""Stage `prepare`: load the source, validate it, split it by article, record the split."""

from __future__ import annotations

from study.config import Config
from study.data import build_splits, manifest, write_splits
from study.files import staged_dir, write_json
from study.layout import DataDir, Layout


def run(cfg: Config) -> dict:
    splits, source = build_splits(cfg.data)
    doc = manifest(splits, source)
    doc["split_seed"] = cfg.data.split_seed
    with staged_dir(Layout.of(cfg).data.root) as out:
        folder = DataDir(out)
        write_splits(splits, folder)
        write_json(folder.manifest, doc)
    for name, part in doc["splits"].items():
        print(f"{name:>5}: {part['questions']:5d} questions, {part['articles']:3d} articles, "
              f"sha256 {part['sha256'][:12]}")
    return doc
