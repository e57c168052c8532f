"""`study bench`: what the teacher-logit cache buys. Same student init, data and steps:
(a) plain fine-tuning, (b) distillation with the live teacher, (c) distillation with the
cache. Times go to reports/bench.json; target (c)/(a) <= 1.05.

`study bench --pruning`: what pruning buys. The same seeded search (same sampler seed, same
number of configurations, the authors' setting first) with no pruning and with the
configured pruner: trial-epochs trained, wall time, best `tune` F1 and its dev F1, into the
`pruning` section of reports/bench.json. Target: >= 40% fewer trial-epochs with the best
`tune` F1 within 1 point.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import optuna
import transformers
from transformers import DataCollatorWithPadding

from study import teacher as teacher_stage
from study.teacher_logits import build_or_load
from study.config import Config
from study.data import build_train_features
from study.files import read_json, write_json
from study.layout import Layout, SearchDir
from study.modeling import build_student
from study.tracking import Tracker, device_name, git_state, package_versions
from study.trainer import DistillationTrainer, QuestionAnsweringTrainer
from study.fit import apply_runtime, load_splits, training_arguments


def run(cfg: Config, steps: int | None = None) -> dict:
    apply_runtime(cfg)
    steps = steps or 30
    splits, _ = load_splits(cfg)
    teacher, _, teacher_dir = teacher_stage.load_trained(cfg)
    _, tokenizer = build_student(cfg.student, cfg.seed)
    feats = build_train_features(splits["train"], tokenizer, cfg.data.max_length, cfg.data.doc_stride)
    collator = DataCollatorWithPadding(tokenizer)
    spec = cfg.student.train.replace(max_steps=steps, evals_per_epoch=0)
    d = cfg.distill
    results: dict[str, float] = {}
    steps: dict[str, int] = {}  # what each variant trained: the times compare like with like
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(tmp) / "cache"
        t0 = time.perf_counter()
        args0 = training_arguments(cfg, spec, Path(tmp), len(feats), cfg.seed, False, True)
        cache = build_or_load(teacher, teacher_dir, tokenizer, feats, collator, root=cache_root,
                              max_length=cfg.data.max_length, doc_stride=cfg.data.doc_stride,
                              batch_size=cfg.eval.batch_size, device=args0.device,
                              dtype=d.cache_dtype)
        results["cache_build_seconds"] = time.perf_counter() - t0
        variants = {
            "plain": dict(cls=QuestionAnsweringTrainer, kw={}),
            "live_teacher": dict(cls=DistillationTrainer, kw=dict(teacher=teacher)),
            "cached_teacher": dict(cls=DistillationTrainer, kw=dict(teacher_logits=cache)),
        }
        for name, v in variants.items():
            model, _ = build_student(cfg.student, cfg.seed)
            distilling = v["cls"] is DistillationTrainer
            args = training_arguments(cfg, spec, Path(tmp) / name, len(feats), cfg.seed,
                                      has_eval=False, distilling=distilling)
            extra = dict(temperature=d.temperature, alpha_ce=d.alpha_ce,
                         alpha_squad=d.alpha_squad, **v["kw"]) if distilling else {}
            trainer = v["cls"](model=model, args=args, train_dataset=feats, data_collator=collator,
                               processing_class=tokenizer, **extra)
            transformers.set_seed(cfg.seed)
            t0 = time.perf_counter()
            trainer.train()
            results[f"{name}_seconds"] = time.perf_counter() - t0
            steps[name] = trainer.state.global_step
    doc = {
        "steps": steps, "batch_size": spec.batch_size, "profile": cfg.profile,
        "student": f"{cfg.student.init} layers {list(cfg.student.layers or [])}",
        "max_length": cfg.data.max_length, "cache_dtype": d.cache_dtype,
        **{k: round(v, 3) for k, v in results.items()}, "steps_trained": steps,
        "ratio_live_over_plain": round(results["live_teacher_seconds"] / results["plain_seconds"], 4),
        "ratio_cached_over_plain": round(results["cached_teacher_seconds"] / results["plain_seconds"], 4),
        "target_cached_over_plain": 1.05,
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }
    update_bench(cfg, doc)
    print(f"plain {doc['plain_seconds']}s, live teacher {doc['live_teacher_seconds']}s "
          f"(x{doc['ratio_live_over_plain']}), cached {doc['cached_teacher_seconds']}s "
          f"(x{doc['ratio_cached_over_plain']}); cache built in {doc['cache_build_seconds']}s")
    return doc


def update_bench(cfg: Config, section: dict) -> None:
    """Merge into reports/bench.json, keeping what the other benchmark wrote."""
    path = Layout.of(cfg).reports.bench
    doc = read_json(path, "benchmark file", "") if path.exists() else {}
    doc.update(section)
    write_json(path, doc)


def _search_once(cfg: Config, pruner: str, n_configs: int, out_root: Path) -> dict:
    from study import design, search

    pcfg = cfg.replace(search={"pruner": pruner, "keep_weights": False})
    study = optuna.create_study(
        study_name=f"bench-pruning-{pruner}", storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.TPESampler(seed=cfg.search.sampler_seed,
                                           n_startup_trials=cfg.search.n_startup_trials),
        pruner=search.make_pruner(pcfg), direction="maximize")
    design.initialise(study, pcfg)
    tracker = Tracker(pcfg)
    t0 = time.perf_counter()
    with tracker.run(study.study_name, "bench", params={"pruner": pruner,
                                                        "n_configs": n_configs}) as parent:
        objective = search.Objective(pcfg, tracker, parent.run_id, study.study_name,
                                     folder=SearchDir(out_root / pruner))
        study.optimize(objective, n_trials=n_configs, catch=(Exception,))
    wall = time.perf_counter() - t0
    rounds = search.evaluation_rounds(pcfg)
    per_epoch = rounds / pcfg.student.train.epochs
    trained = sum(t.last_step or 0 for t in study.trials)
    best = study.best_trial
    return {"pruner": pruner, "configurations": len(study.trials),
            "states": {s: sum(t.state.name == s for t in study.trials)
                       for s in ("COMPLETE", "PRUNED", "FAIL")},
            "trial_epochs": round(trained / per_epoch, 3), "wall_seconds": round(wall, 1),
            "best_trial": best.number, "best_tune_f1": best.value,
            "best_dev_f1": best.user_attrs.get("dev_f1")}


def pruning(cfg: Config, n_configs: int | None = None) -> dict:
    n_configs = n_configs or cfg.search.n_trials
    chosen = cfg.search.pruner if cfg.search.pruner != "none" else "median"
    with tempfile.TemporaryDirectory() as tmp:
        arms = {name: _search_once(cfg, name, n_configs, Path(tmp)) for name in ("none", chosen)}
    off, on = arms["none"], arms[chosen]
    saved = 1 - on["trial_epochs"] / off["trial_epochs"] if off["trial_epochs"] else None
    doc = {"pruning": {
        "profile": cfg.profile, "sampler_seed": cfg.search.sampler_seed, "configurations": n_configs,
        "no_pruning": off, "pruned": on,
        "trial_epochs_saved": None if saved is None else round(saved, 4),
        "best_tune_f1_change": round(on["best_tune_f1"] - off["best_tune_f1"], 4),
        "target": {"trial_epochs_saved_at_least": 0.40, "best_tune_f1_within": 1.0},
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }}
    update_bench(cfg, doc)
    p = doc["pruning"]
    print(f"pruning ({chosen}): {on['trial_epochs']} trial-epochs vs {off['trial_epochs']} "
          f"without ({p['trial_epochs_saved']:.0%} saved), best tune F1 {on['best_tune_f1']:.2f} "
          f"vs {off['best_tune_f1']:.2f}; wall {on['wall_seconds']} s vs {off['wall_seconds']} s")
    return doc


# --------------------------------------------------------------------------- fixed cost
PAPER_QUESTIONS = {"train": 74_459, "tune": 13_140, "dev": 10_570}  # SQuAD v1.1's 87,599 / 10,570


def _replicated(records: list[dict], n: int, tag: str) -> list[dict]:
    """n SQuAD-shaped questions made by repeating real ones under new ids."""
    return [{**records[i % len(records)], "id": f"{tag}{i}"} for i in range(n)]


def _bert_base_teacher(folder: Path) -> None:
    """A BERT-base-sized QA model (random weights; 440 MB of safetensors, as the paper's)."""
    from transformers import BertConfig, BertForQuestionAnswering

    from study.modeling import load_tokenizer, save_model
    save_model(BertForQuestionAnswering(BertConfig()), load_tokenizer("embedded"), folder)


def _per_trial_before(splits, student_tok, folder: Path, max_length: int, stride: int) -> dict:
    """What every trial did before the windows were kept: tokenise all three splits, load and
    hash the teacher, check tokenisation, hash every window for the cache key."""
    from study import data
    from study.modeling import load_qa_model, load_tokenizer
    from study.teacher_logits import _hash_files

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    feats = data.build_train_features(splits["train"], student_tok, max_length, stride)
    for name in ("tune", "dev"):
        data.build_eval_features(splits[name], student_tok, max_length, stride)
    t["windows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_qa_model(str(folder), require_head=True)
    teacher_tok = load_tokenizer(str(folder))
    t["teacher_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _hash_files(sorted(folder.glob("*.safetensors")))
    data.features_hash(feats)
    t["cache_key"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.check_same_tokenization(teacher_tok, student_tok, splits["train"], max_length, stride,
                                 "teacher", "student")
    t["tokenisation_check"] = time.perf_counter() - t0
    return t


def _per_trial_after(splits, hashes, student_tok, folder: Path, root: Path, max_length: int,
                     stride: int) -> float:
    """The same work as a trial does it now (study.fit.data_windows, teacher_logits'
    memoised hash, the tokenisation check); the teacher itself is loaded only on a cache miss."""
    from study import data
    from study.modeling import load_tokenizer
    from study.teacher_logits import cache_key, weights_hash
    from study.windows import load_windows

    t0 = time.perf_counter()
    w = load_windows(root, splits, hashes, student_tok, max_length, stride)
    teacher_tok = load_tokenizer(str(folder))
    cache_key(weights_hash(folder, None), student_tok, max_length, stride, None, w.key)
    data.check_same_tokenization(teacher_tok, student_tok, splits["train"], max_length, stride,
                                 "teacher", "student")
    return time.perf_counter() - t0


def fixed_cost(cfg: Config) -> dict:
    """Per-trial work that does not depend on the trial, at SQuAD's size (paper profile's
    windows), before (redone by every trial) and after (once per data version / process)."""
    from study import data, teacher_logits, windows
    from study.modeling import load_tokenizer

    apply_runtime(cfg)
    base = data.load_squad_file(data.EMBEDDED_DATA)
    splits = {k: _replicated(base, n, f"{k}-") for k, n in PAPER_QUESTIONS.items()}
    hashes = {k: data.split_hash(v) for k, v in splits.items()}
    student_tok = load_tokenizer("embedded", "distilbert")
    length, stride = 384, 128
    with tempfile.TemporaryDirectory() as tmp:
        folder, root = Path(tmp) / "teacher", Path(tmp) / "windows"
        _bert_base_teacher(folder)
        before = _per_trial_before(splits, student_tok, folder, length, stride)
        windows.forget()
        teacher_logits._WEIGHTS.clear()
        after = {"first_trial_of_the_data_version": _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)}
        after["later_trial_same_process"] = _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)
        windows.forget()  # a second worker, or the study resumed: windows and hash from disk
        teacher_logits._WEIGHTS.clear()
        after["first_trial_of_another_process"] = _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)
        teacher_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    doc = {"fixed_cost": {
        "questions": PAPER_QUESTIONS, "max_length": length, "doc_stride": stride,
        "teacher_safetensors_mb": round(teacher_mb, 1),
        "before_seconds_every_trial": {k: round(v, 2) for k, v in before.items()},
        "before_total_seconds": round(sum(before.values()), 2),
        "after_seconds": {k: round(v, 3) for k, v in after.items()},
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }}
    update_bench(cfg, doc)
    f = doc["fixed_cost"]
    print(f"fixed cost per trial at SQuAD size: before {f['before_total_seconds']} s every trial "
          f"({f['before_seconds_every_trial']}); after {f['after_seconds']}")
    return doc


# --------------------------------------------------------------------------- workers
class BackendPeak:
    """The most PostgreSQL client backends alive at once, sampled every `every` seconds
    from monitor connections of its own, which are not counted (nor are the server's
    background processes)."""

    NAME = "kdqa-backend-monitor"
    QUERY = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
             f"AND application_name IS DISTINCT FROM '{NAME}'")

    def __init__(self, url: str, every: float = 0.1):
        import threading

        import sqlalchemy

        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                               connect_args={"application_name": self.NAME})
        self.every, self.peak, self.samples = every, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def now(self, conn) -> int:
        import sqlalchemy

        return conn.execute(sqlalchemy.text(self.QUERY)).scalar_one()

    def _sample(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                self.peak = max(self.peak, self.now(conn))
                self.samples += 1
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                self.stop.wait(self.every)

    def __enter__(self) -> "BackendPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.engine.dispose()


def workers(cfg: Config, n: int, forward: list[str]) -> dict:
    """`n` `study search` workers on one new study in `search.storage` (PostgreSQL) and the
    tracking store in `tracking.uri`: the peak number of backends on the database server
    while they run, into the `workers` section of reports/bench.json, one entry per `n`.
    `forward` is the command line's --params/--profile/--set, given to every worker."""
    import subprocess
    import sys

    import sqlalchemy

    from study.errors import StudyError
    from study.storage import STORAGE_CONNECTIONS, redact, resolve_url

    url = resolve_url(cfg.storage_url)
    if not url.startswith("postgresql"):
        raise StudyError(f"bench --workers counts PostgreSQL backends; search.storage is "
                         f"{redact(url)}")
    name = f"bench-workers-{n}-{int(time.time())}"
    scratch = tempfile.mkdtemp(prefix="bench-workers-")  # the workers' trials.csv: not reports/
    cmd = [sys.executable, "-m", "study", "search", "--study-name", name, *forward,
           "--set", f"runtime.reports={scratch}"]
    with BackendPeak(url) as peak:
        with peak.engine.connect() as conn:
            idle = peak.now(conn)  # the tracking server's own pool, before any worker
            max_connections = int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(n)]
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
    failed = [e.strip().splitlines()[-1:] for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        raise StudyError(f"{len(failed)} of {n} workers failed: {failed[0]}")
    study = optuna.load_study(study_name=name, storage=url)
    entry = {"workers": n, "peak_backends": peak.peak, "idle_backends": idle,
             "per_worker": round((peak.peak - idle) / n, 2), "samples": peak.samples,
             "max_connections": max_connections,
             "budget_per_worker": {"optuna_storage": STORAGE_CONNECTIONS, "schema_lock": 1},
             "trials": {s: sum(t.state.name == s for t in study.trials)
                        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
             "wall_seconds": round(wall, 1)}
    path = Layout.of(cfg).reports.bench
    section = (read_json(path, "benchmark file", "") if path.exists() else {}).get("workers", {})
    section.update({
        "profile": cfg.profile, "trials_per_worker": cfg.search.n_trials,
        "tracking": "mlflow server" if cfg.tracking.uri.startswith("http") else "database",
        "target": {"peak_backends_below": 50, "at_workers": 8, "max_connections": 100},
        str(n): entry,
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    })
    update_bench(cfg, {"workers": section})
    print(f"{n} worker(s): peak {peak.peak} backends ({idle} before they started, "
          f"{entry['per_worker']} per worker), max_connections {max_connections}, "
          f"trials {entry['trials']}, {entry['wall_seconds']} s")
    return entry
