"""`study bench --pruning`: what pruning buys, and whether it keeps the best configuration.

The same seeded search (same sampler seed, same number of configurations, the authors' setting
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

import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from scipy import stats

from study.bench.common import environment, read_bench, write_section
from study.config import Config
from study.errors import StudyError


def arm_config(cfg: Config, pruner: str, **search: object) -> Config:
    """The config a pruning arm searches with: the pipeline's, with `pruner` (hyperband prunes
    within brackets it reads from the storage, so it runs in batches of one: config rule)."""
    batch = {"batch": 1} if pruner == "hyperband" else {}
    return cfg.replace(search={"pruner": pruner, **batch, **search})


def _search_once(cfg: Config, pruner: str, n_configs: int, out_root: Path) -> dict:
    """One seeded search of `n_configs` configurations under `pruner`, run by the pipeline's
    own search (study.search: batches, slot-seeded sampler) in a scratch study and report
    folder: each trial's curve (tune F1 per evaluation round), final value and steps."""
    from study import search

    name = f"bench-pruning-{pruner}"
    pcfg = arm_config(cfg, pruner, keep_weights=False, n_trials=n_configs, study_name=name,
                      storage=f"sqlite:///{out_root / pruner / 'optuna.db'}")
    pcfg = pcfg.replace(runtime={"reports": str(out_root / pruner / "reports")})
    t0 = time.perf_counter()
    search.run(pcfg)
    study = optuna.load_study(study_name=name, storage=search.make_storage(pcfg))
    return _arm(pruner, pcfg, _configurations(study, n_configs), time.perf_counter() - t0,
                "bench")


def _configurations(study: optuna.Study, n: int) -> list:
    """The finished trial of each of the study's first `n` slots, in slot order (a slot re-run
    after an interruption counts once)."""
    from study import search

    by_slot = {search.slot_of(t): t for t in study.get_trials(deepcopy=False)
               if search.finished(t) and search.slot_of(t) is not None}
    return [by_slot[s] for s in range(n) if s in by_slot]


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
            "environment": environment()}


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
    trials = _configurations(study, n_configs)
    if len(trials) < n_configs:
        raise StudyError(f"study {study.study_name!r} has fewer than {n_configs} finished "
                         "configurations")
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


def run(cfg: Config, n_configs: int | None = None, pruners: list[str] | None = None,
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
           "batch": cfg.search.batch,
           "fixed_settings": design.fixed_settings(cfg),
           "evaluation_rounds": search.evaluation_rounds(cfg)}
    old = read_bench(cfg).get("pruning", {})
    arms = dict(old.get("arms", {})) if _same_bench(old, key) else {}
    label = f"{cfg.search.pruner}@{cfg.search.pruner_warmup_rounds}"
    if from_study:
        arms[label] = _arm_from_study(cfg, n_configs)
        pruners = []
    section = _pruning_section(cfg, key, arms)
    write_section(cfg, "pruning", section)
    with tempfile.TemporaryDirectory() as tmp:
        for name in pruners:
            label = name if name == "none" else f"{name}@{cfg.search.pruner_warmup_rounds}"
            arms[label] = _search_once(cfg, name, n_configs, Path(tmp))
            section = _pruning_section(cfg, key, arms)
            write_section(cfg, "pruning", section)  # each arm is kept as soon as it ends
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
           steps_per_round: int, batch: int = 1) -> dict:
    """`pruner` run over complete curves already measured (the unpruned arm's), in their order:
    which configurations it stops, at which round, and the steps it would have trained.
    Training is deterministic, so a pruned trial's rounds are the unpruned ones up to its stop:
    this is the pruned search on the same configurations, without the sampler's reaction to
    pruned trials (which makes a real pruned search sample other configurations). As in the
    search, a trial is pruned against the trials of earlier batches of `batch` only."""
    from study import search
    from study.design import BATCH_ATTR

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nine replays: no "study created" lines
    try:
        study = optuna.create_study(study_name=study_name, pruner=search.BatchPruner(pruner),
                                    direction="maximize", storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(level)
    steps, kept, stopped = 0, [], []
    for i, t in enumerate(trials):
        trial = study.ask()
        trial.set_user_attr(BATCH_ATTR, i // batch)
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
            acfg = arm_config(cfg, name, pruner_warmup_rounds=w)
            r = replay(done, search.make_pruner(acfg), f"bench-pruning-{name}", per_round,
                       acfg.search.batch)
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

