"""Where every stage reads and writes: one frozen Layout, built from `runtime.artifacts` and
`runtime.reports`. No other module spells a file or folder name of the pipeline.

    artifacts/<profile>/
        data/            train.json tune.json dev.json, split.json (the manifest)
        teacher/ baseline/ distill/ best/
                         model/ (weights + tokenizer), metrics.json, predictions_<split>.json
        search/trials/<number>/   a trial's folder, laid out like a stage folder
        seeds/runs.json  every seed training of `study seeds`, scored per dev question
        teacher_cache/   teacher logits, keyed by what they depend on
        windows/         tokenised windows, cached per data version
    reports/             metrics.json trials.csv curves.csv importances.json seeds.json
                         bench.json report.md figures/ plots/history.csv metrics/<row>.json

A folder's names hold wherever it lies: a stage writes into a staging folder
(files.staged_dir) that becomes its folder, so `StageDir(out)` names the same files there.
`Layout.dvc_stages()` says which of these paths each DVC stage reads and writes; dvc.yaml is
checked against it (tests/test_layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from study.config import Config


@dataclass(frozen=True)
class StageDir:
    """A folder one training writes: a stage's output, a search trial's, a seed run's."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def predictions(self, split: str) -> Path:
        return self.root / f"predictions_{split}.json"


@dataclass(frozen=True)
class SearchDir(StageDir):
    """The search stage's folder: one StageDir per trial that kept its weights."""

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial(self, number: int) -> StageDir:
        return StageDir(self.trials / str(number))


@dataclass(frozen=True)
class DataDir:
    """The prepared splits (SQuAD v1.1 JSON) and the manifest that records them."""

    root: Path

    def split(self, name: str) -> Path:
        return self.root / f"{name}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "split.json"


@dataclass(frozen=True)
class ReportFiles:
    """reports/: the result files (inputs of `study report`) and what the report writes."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def trials(self) -> Path:
        return self.root / "trials.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.csv"

    @property
    def importances(self) -> Path:
        return self.root / "importances.json"

    @property
    def seeds(self) -> Path:
        return self.root / "seeds.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def history(self) -> Path:
        return self.plots / "history.csv"

    @property
    def metrics_dir(self) -> Path:
        """`dvc metrics show` rows: small numbers-only files (study.dvc_metrics)."""
        return self.root / "metrics"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def metric(self, row: str) -> Path:
        return self.metrics_dir / f"{row}.json"


class StageIO(NamedTuple):
    """The artifact folders and report files a DVC stage reads (deps) and writes (outs)."""

    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]


@dataclass(frozen=True)
class Layout:
    artifacts: Path
    reports: ReportFiles

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        return cls(Path(cfg.artifacts), ReportFiles(Path(cfg.reports)))

    @property
    def data(self) -> DataDir:
        return DataDir(self.artifacts / "data")

    @property
    def teacher(self) -> StageDir:
        return StageDir(self.artifacts / "teacher")

    @property
    def baseline(self) -> StageDir:
        return StageDir(self.artifacts / "baseline")

    @property
    def distill(self) -> StageDir:
        return StageDir(self.artifacts / "distill")

    @property
    def search(self) -> SearchDir:
        return SearchDir(self.artifacts / "search")

    @property
    def best(self) -> StageDir:
        return StageDir(self.artifacts / "best")

    @property
    def seed_runs(self) -> Path:
        """Every training of `study seeds`, scored per dev question (`--add` pools with it)."""
        return self.artifacts / "seeds" / "runs.json"

    @property
    def teacher_cache(self) -> Path:
        return self.artifacts / "teacher_cache"

    @property
    def windows(self) -> Path:
        return self.artifacts / "windows"

    def dvc_stages(self) -> dict[str, StageIO]:
        """Per DVC stage, in pipeline order, the paths it reads and writes (its numbers-only
        metrics files are study.dvc_metrics' rows, declared apart)."""
        r = self.reports
        return {
            "prepare": StageIO((), (self.data.root,)),
            "teacher": StageIO((self.data.root,), (self.teacher.root,)),
            "baseline": StageIO((self.data.root,), (self.baseline.root,)),
            "distill": StageIO((self.data.root, self.teacher.root), (self.distill.root,)),
            "search": StageIO((self.data.root, self.teacher.root),
                              (self.search.root, self.teacher_cache, r.trials)),
            "best": StageIO((self.data.root, self.search.root, self.teacher.root,
                             self.baseline.root),
                            (self.best.root, r.metrics, r.curves, r.importances)),
            "seeds": StageIO((self.data.root, self.search.root, self.teacher.root),
                             (self.seed_runs.parent, r.seeds)),
            "report": StageIO((r.metrics, r.trials, r.curves, r.importances, r.seeds),
                              (r.report, r.figures, r.history)),
        }
