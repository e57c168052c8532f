"""`study bench`: what the teacher-logit cache buys. Same student init, data and steps:
(a) plain fine-tuning, (b) distillation with the live teacher, (c) distillation with the
cache. Times go to reports/bench.json; target (c)/(a) <= 1.05.

`study bench --pruning`: what pruning buys, and whether it keeps the best configuration. The
same seeded search (same sampler seed, same number of configurations, the authors' setting
first) with no pruning and with each pruner asked for: training steps, wall time, each trial's
curve, best `tune` F1 and its dev F1, into the `pruning` section of reports/bench.json. Over
the unpruned arm's complete trials, the rank correlation between each evaluation round's
`tune` F1 and the final one says where a pruner can decide. Target: >= 30% fewer training
steps with the best `tune` F1 within 1 point of the unpruned search's. A pruned search also
samples other configurations once the sampler sees pruned trials, so besides the arms run, each
configurable pruner and first rung is replayed on the unpruned arm's own configurations and
curves (`same_configurations`): the pruner's effect alone.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import transformers
from scipy import stats
from transformers import DataCollatorWithPadding

from study import teacher as teacher_stage
from study.teacher_logits import build_or_load
from study.config import Config
from study.errors import StudyError
from study.data import build_train_features
from study.files import read_json, write_json
from study.layout import Layout, SearchDir
from study.modeling import build_student
from study.tracking import Tracker, device_name, git_state, package_versions
from study.trainer import DistillationTrainer, QuestionAnsweringTrainer
from study.fit import apply_runtime, load_splits, train_columns, training_arguments
from study.windows import PadToLongest, padded_rows


def run(cfg: Config, steps: int | None = None) -> dict:
    apply_runtime(cfg)
    steps = steps or 30
    splits, _ = load_splits(cfg)
    teacher, _, teacher_dir = teacher_stage.load_trained(cfg)
    _, tokenizer = build_student(cfg.student, cfg.seed)
    feats = build_train_features(splits["train"], tokenizer, cfg.data.max_length, cfg.data.doc_stride)
    spec = cfg.student.train.replace(max_steps=steps, evals_per_epoch=0)
    d = cfg.distill
    results: dict[str, float] = {}
    steps: dict[str, int] = {}  # what each variant trained: the times compare like with like
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(tmp) / "cache"
        t0 = time.perf_counter()
        args0 = training_arguments(cfg, spec, Path(tmp), len(feats), cfg.seed, False, True)
        cache = build_or_load(teacher, teacher_dir, tokenizer, feats, root=cache_root,
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
            columns = train_columns(feats, model, distilling)
            trainer = v["cls"](model=model, args=args,
                               train_dataset=padded_rows(feats, tokenizer, columns),
                               data_collator=PadToLongest(tokenizer), processing_class=tokenizer,
                               **extra)
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
    """One seeded search of `n_configs` configurations under `pruner`: each trial's curve
    (tune F1 per evaluation round), final value and training steps."""
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
    return _arm(pruner, cfg, study.trials, time.perf_counter() - t0, "bench")


def _arm(pruner: str, cfg: Config, trials: list, wall: float, source: str) -> dict:
    from study.search import STEPS_ATTR

    done = [t for t in trials if t.value is not None]
    best = max(done, key=lambda t: t.value)
    return {"pruner": pruner, "pruner_warmup_rounds": cfg.search.pruner_warmup_rounds,
            "source": source, "configurations": len(trials),
            "states": {s: sum(t.state.name == s for t in trials)
                       for s in ("COMPLETE", "PRUNED", "FAIL")},
            "training_steps": sum(t.user_attrs.get(STEPS_ATTR, 0) for t in trials),
            "wall_seconds": round(wall, 1),
            "best_trial": best.number, "best_tune_f1": best.value,
            "best_dev_f1": best.user_attrs.get("dev_f1"),
            "trials": [{"number": t.number, "state": t.state.name, "params": t.params,
                        "tune_f1": t.value, "steps": t.user_attrs.get(STEPS_ATTR),
                        "rounds": [t.intermediate_values[k]
                                   for k in sorted(t.intermediate_values)]}
                       for t in trials],
            "environment": {**git_state(), "versions": package_versions(),
                            "device": device_name()}}


def _arm_from_study(cfg: Config, n_configs: int) -> dict:
    """The configured pruner's arm read from the search stage's own study instead of run
    again: its first `n_configs` trials are exactly what an `n_configs` search with the same
    seeded sampler and pruner trains (trial k's configuration depends only on trials < k, and
    training is deterministic), so the main job's search measures its own pruner."""
    from study import design, search

    try:  # read only: no study is created where there is none
        study = optuna.load_study(study_name=cfg.search.study_name,
                                  storage=search.make_storage(cfg))
    except KeyError:
        raise StudyError(f"no study {cfg.search.study_name!r} in search.storage: run "
                         f"`study search` first, or the arm without --from-study") from None
    design.check_fixed_settings(study, cfg)
    recorded = study.user_attrs.get(design.SEARCH_ATTR)
    if recorded != design.search_settings(cfg):
        raise StudyError(f"study {study.study_name!r} was searched with {recorded}, not "
                         f"{design.search_settings(cfg)}: run the arm instead (without --from-study)")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[:n_configs]
    if len(trials) < n_configs or any(not t.state.is_finished() for t in trials):
        raise StudyError(f"study {study.study_name!r} has fewer than {n_configs} finished trials")
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return _arm(cfg.search.pruner, cfg, trials, wall, f"study {study.study_name}")


def rank_correlations(trials: list[dict]) -> list[dict]:
    """Over complete trials: Spearman's rank correlation between each evaluation round's tune
    F1 and the final tune F1, and where the eventual best trial stands at that round. A pruner
    that decides at round r keeps the best configuration only if round r ranks like the end."""
    done = [t for t in trials if t["state"] == "COMPLETE"]
    if len(done) < 3:
        return []
    final = np.array([t["tune_f1"] for t in done])
    best = int(np.argmax(final))
    out = []
    for r in range(min(len(t["rounds"]) for t in done)):
        at = np.array([t["rounds"][r] for t in done])
        rho = stats.spearmanr(at, final).statistic
        out.append({"round": r + 1, "spearman": round(float(rho), 4), "trials": len(done),
                    "best_rank": int((at > at[best]).sum()) + 1})
    return out


def _same_bench(section: dict, key: dict) -> bool:
    return all(section.get(k) == v for k, v in key.items())


def pruning(cfg: Config, n_configs: int | None = None, pruners: list[str] | None = None,
            from_study: bool = False) -> dict:
    """Run the seeded search once per pruner in `pruners` (default: none and the configured
    one) and compare each pruned arm with the unpruned arm. Arms already in reports/bench.json
    for the same settings are kept, so an arm can be added without re-running the others.
    `from_study`: the configured pruner's arm is the search stage's own study (its first
    `n_configs` trials), not run again."""
    from study import design, search

    n_configs = n_configs or cfg.search.n_trials
    chosen = cfg.search.pruner if cfg.search.pruner != "none" else "median"
    pruners = pruners or ["none", chosen]
    key = {"profile": cfg.profile, "sampler_seed": cfg.search.sampler_seed,
           "n_startup_trials": cfg.search.n_startup_trials, "configurations": n_configs,
           "fixed_settings": design.fixed_settings(cfg),
           "evaluation_rounds": search.evaluation_rounds(cfg)}
    path = Layout.of(cfg).reports.bench
    old = (read_json(path, "benchmark file", "") if path.exists() else {}).get("pruning", {})
    arms = dict(old.get("arms", {})) if _same_bench(old, key) else {}
    label = f"{cfg.search.pruner}@{cfg.search.pruner_warmup_rounds}"
    if from_study:
        arms[label] = _arm_from_study(cfg, n_configs)
        pruners = []
    section = _pruning_section(cfg, key, arms)
    update_bench(cfg, {"pruning": section})
    with tempfile.TemporaryDirectory() as tmp:
        for name in pruners:
            label = name if name == "none" else f"{name}@{cfg.search.pruner_warmup_rounds}"
            arms[label] = _search_once(cfg, name, n_configs, Path(tmp))
            section = _pruning_section(cfg, key, arms)
            update_bench(cfg, {"pruning": section})  # each arm is kept as soon as it ends
    for c in section["comparisons"]:
        print(f"pruning ({c['arm']}): {c['training_steps']} training steps vs "
              f"{c['unpruned_training_steps']} without ({c['training_steps_saved']:.0%} saved), "
              f"best tune F1 {c['best_tune_f1']:.2f} vs {c['unpruned_best_tune_f1']:.2f}"
              f" (target met: {c['target_met']})")
    for c in section["same_configurations"]:
        print(f"on the unpruned arm's configurations, {c['arm']}: {c['training_steps_saved']:.0%}"
              f" fewer steps, best tune F1 {c['best_tune_f1']:.2f} (target met: {c['target_met']})")
    for rc in section["rank_correlation"]:
        print(f"round {rc['round']}: Spearman {rc['spearman']:+.2f} with the final tune F1, "
              f"eventual best ranked {rc['best_rank']} of {rc['trials']}")
    return section


PRUNING_TARGET = {"training_steps_saved_at_least": 0.30, "best_tune_f1_within": 1.0}


def replay(trials: list[dict], pruner: optuna.pruners.BasePruner, study_name: str,
           steps_per_round: int) -> dict:
    """`pruner` run over complete curves already measured (the unpruned arm's), in their order:
    which configurations it stops, at which round, and the steps it would have trained.
    Training is deterministic, so a pruned trial's rounds are the unpruned ones up to its stop:
    this is the pruned search on the same configurations, without the sampler's reaction to
    pruned trials (which makes a real pruned search sample other configurations)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nine replays: no "study created" lines
    try:
        study = optuna.create_study(study_name=study_name, pruner=pruner, direction="maximize",
                                    storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(level)
    steps, kept, stopped = 0, [], []
    for t in trials:
        trial = study.ask()
        for r, value in enumerate(t["rounds"], start=1):
            trial.report(value, step=r)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                steps += min(r * steps_per_round, t["steps"])
                stopped.append({"number": t["number"], "round": r})
                break
        else:
            study.tell(trial, t["tune_f1"])
            steps += t["steps"]
            kept.append(t)
    best = max(kept, key=lambda t: t["tune_f1"])
    return {"training_steps": steps, "best_trial": best["number"],
            "best_tune_f1": best["tune_f1"], "stopped": stopped}


def same_configurations(cfg: Config, off: dict, warmups: range = range(1, 4)) -> list[dict]:
    """Every configurable pruner and first rung replayed on the unpruned arm's configurations
    (`replay`), against the pruning target: the pruner's own effect, sampler path left out."""
    from study import search

    spec = cfg.student.train
    done = [t for t in off["trials"] if t["state"] == "COMPLETE"]
    if not done:  # every unpruned trial failed: no curve to replay
        return []
    per_round = round(done[0]["steps"] / spec.epochs) // max(1, spec.evals_per_epoch)
    rows = []
    for name in [p for p in search.PRUNERS if p != "none"]:
        for w in warmups:
            pruner = search.make_pruner(cfg.replace(search={"pruner": name,
                                                            "pruner_warmup_rounds": w}))
            r = replay(done, pruner, f"bench-pruning-{name}", per_round)
            rows.append({"arm": f"{name}@{w}", **_against_target(r, off)})
    return rows


def _against_target(on: dict, off: dict) -> dict:
    saved = 1 - on["training_steps"] / off["training_steps"]
    change = on["best_tune_f1"] - off["best_tune_f1"]
    return {**on, "unpruned_training_steps": off["training_steps"],
            "training_steps_saved": round(saved, 4),
            "unpruned_best_tune_f1": off["best_tune_f1"],
            "best_tune_f1_change": round(change, 4),
            "target_met": bool(saved >= PRUNING_TARGET["training_steps_saved_at_least"]
                               and change >= -PRUNING_TARGET["best_tune_f1_within"])}


def _pruning_section(cfg: Config, key: dict, arms: dict) -> dict:
    off = arms.get("none")
    comparisons = [
        {"arm": label, **_against_target({k: on[k] for k in ("training_steps", "best_trial",
                                                            "best_tune_f1")}, off)}
        for label, on in arms.items() if label != "none" and off is not None]
    return {**key, "arms": arms, "target": PRUNING_TARGET, "comparisons": comparisons,
            "rank_correlation": rank_correlations(off["trials"]) if off else [],
            "same_configurations": same_configurations(cfg, off) if off else []}


# --------------------------------------------------------------------------- intervals
INTERVAL_SCENARIOS = {
    # The scenario: seed SD 2 F1 and 334 questions, per-question differences spread
    # like the study's own (question SD 15, residual SD 25).
    "questions_matter": dict(sd_seed=2.0, sd_question=15.0, sd_residual=25.0),
    # Seed variance dominant, where a resampling of few seeds is too narrow.
    "seeds_dominate": dict(sd_seed=4.0, sd_question=5.0, sd_residual=10.0),
}


def intervals_bench(cfg: Config, studies: int = 500) -> dict:
    """Each interval method on simulated studies (known components, known effect): how often
    it excludes 0 with no true difference (target <= 7%) and with a true difference of twice
    the seed SD, at 3 and 5 seeds and 334 questions, into reports/bench.json `intervals`."""
    from study import intervals

    rows = []
    for scenario, sd in INTERVAL_SCENARIOS.items():
        for seeds in (3, 5):
            for method in intervals.METHODS:
                for effect in (0.0, 2 * sd["sd_seed"]):
                    r = intervals.simulate(method, studies=studies, seeds=seeds, effect=effect,
                                           questions=334, rng_seed=seeds, bootstrap_samples=200,
                                           **sd)
                    rows.append({"scenario": scenario, **r})
                    print(f"{scenario} {seeds} seeds {method} effect {effect}: excludes 0 in "
                          f"{r['excludes_zero']:.1%}, covers in {r['coverage']:.1%}", flush=True)
    doc = {"intervals": {"studies": studies, "level": intervals.LEVEL,
                         "reported_method": "crossed_t", "target_excludes_zero_null_at_most": 0.07,
                         "results": rows,
                         "environment": {**git_state(), "versions": package_versions()}}}
    update_bench(cfg, doc)
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


# --------------------------------------------------------------------------- input pipeline
def _random_cache(folder: Path, n: int, length: int, seed: int = 0):
    """A teacher-logit cache of the right shape and dtype (float16) with random logits: the
    pipeline's work does not depend on the values."""
    import json

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


def input_pipeline(cfg: Config, batches: int = 600, batch_size: int = 32, length: int = 384) -> dict:
    """The training input pipeline with the model removed: the Trainer's own train dataloader
    (sampler, collation, device placement) over the embedded questions' windows at `length`,
    and the cached teacher logits looked up for every batch, as DistillationTrainer does; for
    the project's padded windows and, beside them, the former Arrow rows + DataCollatorWithPadding."""
    from study import data
    from study.modeling import load_tokenizer
    from study.windows import PadToLongest, Windows, padded_windows

    apply_runtime(cfg)
    tokenizer = load_tokenizer("embedded", "distilbert")
    feats = data.build_train_features(data.load_squad_file(data.EMBEDDED_DATA), tokenizer,
                                      length, length // 3)
    spec = cfg.student.train.replace(batch_size=batch_size, evals_per_epoch=0, max_steps=batches)
    paths = {"padded_windows": (lambda: padded_windows(Windows(key=f"bench-{length}", train=feats),
                                                       tokenizer), PadToLongest(tokenizer)),
             "arrow_rows": (lambda: feats, DataCollatorWithPadding(tokenizer))}
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = _random_cache(Path(tmp) / "cache", len(feats), length)
        args = training_arguments(cfg, spec, Path(tmp), len(feats), cfg.seed, has_eval=False,
                                  distilling=True)
        cache.place(args.device)
        for name, (dataset, collator) in paths.items():
            t0 = time.perf_counter()
            trainer = DistillationTrainer(model=_no_model(), args=args, train_dataset=dataset(),
                                          data_collator=collator, processing_class=tokenizer,
                                          teacher_logits=cache)
            shapes, seconds = _drain(trainer, batches, args.device)
            rates[name] = {"seconds": round(seconds, 3),
                           "setup_seconds": round(time.perf_counter() - t0 - seconds, 3),
                           "batches_per_second": round(batches / seconds, 1)}
    rate = rates["padded_windows"]["batches_per_second"]
    doc = {"input_pipeline": {
        "what": "the Trainer's train dataloader + the training collator + cached-logit lookup, "
                "no model", "windows": len(feats), "batch_size": batch_size, "max_length": length,
        "mean_padded_length": round(sum(shapes) / len(shapes), 1),
        "full_length_batches": sum(s == length for s in shapes), "batches": batches,
        "batches_per_second": rate, "paths": rates, "target_batches_per_second": 480,
        "target_met": rate >= 480, "dataloader_num_workers": args.dataloader_num_workers,
        # Other work on the machine slows both paths: the load it ran under, read at the end.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }}
    update_bench(cfg, doc)
    print(f"input pipeline: {rate:.0f} batches/s of {batch_size} x <= {length} "
          f"(mean length {doc['input_pipeline']['mean_padded_length']}; Arrow rows + "
          f"DataCollatorWithPadding: {rates['arrow_rows']['batches_per_second']:.0f}); target 480")
    return doc


def _drain(trainer, batches: int, device) -> tuple[list[int], float]:
    """`batches` training batches with their teacher logits, as the distiller reads them, from
    one train dataloader iterated epoch after epoch as the Trainer does: their padded lengths
    and the seconds they took."""
    import torch

    loader = trainer.get_train_dataloader()
    shapes, epoch = [], 0
    t0 = time.perf_counter()
    while len(shapes) < batches:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            ids = batch["input_ids"]
            trainer.teacher_logits.lookup(batch["feature_index"], ids.shape[1], ids.device)
            shapes.append(ids.shape[1])
            if len(shapes) == batches:
                break
        epoch += 1
    if torch.cuda.is_available() and device.type == "cuda":
        torch.cuda.synchronize()
    return shapes, time.perf_counter() - t0


def _no_model():
    """The smallest module the Trainer accepts: the input pipeline is timed without a model."""
    import torch

    return torch.nn.Linear(1, 1)


# --------------------------------------------------------------------------- GPU
def _paper_student():
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering
    return DistilBertForQuestionAnswering(DistilBertConfig())  # distilbert-base's shape


def _paper_teacher():
    from transformers import BertConfig, BertForQuestionAnswering
    return BertForQuestionAnswering(BertConfig())  # bert-base's shape


def _bare_step_ms(batch_size: int, length: int, warm: int, steps: int, dtype) -> float:
    """The hardware reference: forward, backward and AdamW of the student in a plain loop on
    random tokens already on the GPU, under autocast; no Trainer, no data loading."""
    import torch

    torch.manual_seed(0)
    model = _paper_student().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    ids = torch.randint(1000, 30000, (batch_size, length), device="cuda")
    mask = torch.ones_like(ids)
    sp, ep = (torch.randint(0, length, (batch_size,), device="cuda") for _ in range(2))

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = model(input_ids=ids, attention_mask=mask, start_positions=sp, end_positions=ep).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


class _GpuBusy:
    """The share of samples (every 100 ms) in which the GPU ran a kernel (NVML utilisation)."""

    def __init__(self):
        import threading

        import torch
        self.samples: list[float] = []
        self._stop = threading.Event()
        try:
            torch.cuda.utilization()
            self.available = True
        except Exception:  # noqa: BLE001 - pynvml missing: the share is not measured
            self.available = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import torch
        while not self._stop.wait(0.1):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def _project_step_ms(cfg: Config, batch_size: int, length: int, warm: int, steps: int,
                     tmp: Path) -> tuple[float, float | None]:
    """The project's distillation step (DistillationTrainer, the project's TrainingArguments,
    its collator and a cached-logit lookup) on in-memory random windows; ms per step after
    `warm` steps, and the GPU-busy share over the timed steps."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from study.modeling import load_tokenizer

    n = batch_size * (warm + steps)
    rng = np.random.default_rng(0)
    feats = Dataset.from_dict({
        "input_ids": rng.integers(1000, 30000, (n, length)).tolist(),
        "attention_mask": np.ones((n, length), dtype=int).tolist(),
        "start_positions": rng.integers(0, length, n).tolist(),
        "end_positions": rng.integers(0, length, n).tolist(),
        "feature_index": list(range(n))})
    cache = _random_cache(tmp / "gpu-cache", n, length)
    spec = cfg.student.train.replace(batch_size=batch_size, evals_per_epoch=0,
                                     max_steps=warm + steps)
    args = training_arguments(cfg, spec, tmp, n, cfg.seed, has_eval=False, distilling=True)
    cache.place(args.device)
    busy = _GpuBusy()
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (warm, warm + steps):
                torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()
                if state.global_step == warm:
                    busy.__enter__()

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded", "distilbert")
    trainer = DistillationTrainer(model=_paper_student(), args=args,
                                  train_dataset=padded_rows(feats, tokenizer),
                                  data_collator=PadToLongest(tokenizer),
                                  processing_class=tokenizer, teacher_logits=cache,
                                  callbacks=[Clock()])
    trainer.train()
    busy.__exit__()
    return (marks[warm + steps] - marks[warm]) / steps * 1000, busy.share()


def _teacher_windows_per_second(cfg: Config, length: int, batches: int, tmp: Path) -> float:
    """The teacher-logit pass as the project runs it (compute_logits, the run's precision) of
    a bert-base-shaped teacher over random windows at the eval batch size."""
    import numpy as np
    import torch
    from datasets import Dataset

    from study.modeling import load_tokenizer
    from study.teacher_logits import compute_logits

    bs = cfg.eval.batch_size
    n = bs * batches
    rng = np.random.default_rng(1)
    feats = Dataset.from_dict({"input_ids": rng.integers(1000, 30000, (n, length)).tolist(),
                               "attention_mask": np.ones((n, length), dtype=int).tolist(),
                               "token_type_ids": np.zeros((n, length), dtype=int).tolist()})
    tokenizer = load_tokenizer("embedded")
    teacher = _paper_teacher()
    out = tmp / "teacher-pass"
    out.mkdir()
    warm = feats.select(range(bs * 2))
    compute_logits(teacher, warm, tokenizer, bs, "cuda", length, "float16", out,
                   cfg.runtime.mixed_precision)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    compute_logits(teacher, feats, tokenizer, bs, "cuda", length, "float16", out,
                   cfg.runtime.mixed_precision)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def gpu(cfg: Config, steps: int | None = None, batch_size: int = 32, length: int = 384) -> dict:
    """`study bench --gpu`: at the paper's shapes (DistilBERT-base student, BERT-base teacher,
    32 x 384), the bare training loop against the project's step, the teacher pass and the
    GPU-busy share, into the `gpu` section of reports/bench.json. Needs a CUDA GPU."""
    import torch

    from study.errors import StudyError
    from study.modeling import precision

    if not torch.cuda.is_available():
        raise StudyError("--gpu needs a CUDA GPU, and this machine has none "
                         "(`study bench --input-pipeline` runs on the CPU)")
    apply_runtime(cfg)
    steps = steps or 120
    mode = precision(cfg.runtime.mixed_precision, "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
    bare = _bare_step_ms(batch_size, length, 10, steps, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        project, busy = _project_step_ms(cfg, batch_size, length, 20, steps, Path(tmp))
        teacher_rate = _teacher_windows_per_second(cfg, length, 40, Path(tmp))
    doc = {"gpu": {
        "shapes": {"batch_size": batch_size, "max_length": length, "student": "distilbert-base",
                   "teacher": "bert-base", "precision": mode, "steps_timed": steps},
        "bare_step_ms": round(bare, 2), "project_step_ms": round(project, 2),
        "project_over_bare": round(project / bare, 3), "target_project_over_bare": 1.3,
        "gpu_busy_share_training": busy, "target_gpu_busy_share": 0.8,
        "teacher_windows_per_second": round(teacher_rate, 1),
        "target_teacher_windows_per_second": 3500,
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }}
    update_bench(cfg, doc)
    g = doc["gpu"]
    print(f"gpu: bare step {g['bare_step_ms']} ms, project step {g['project_step_ms']} ms "
          f"(x{g['project_over_bare']}), GPU busy {busy}, teacher {g['teacher_windows_per_second']} "
          "windows/s")
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
