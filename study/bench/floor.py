"""`study bench --floor`: the least time the main job (`study run`) can take on this machine.
It counts the FLOPs of the job's trainings and evaluations on the profile's windows (real
tokens, no padding; 6 a non-embedding parameter and token to train, 2 to answer, plus
attention: study.bench.cpu.step_flops) and divides them by this CPU's fp32 GEMM peak
(reports/bench.json `cpu.gemm`, from `study bench --cpu`): the search's and the seeds'
trainings at `runtime.processes` times the peak of `runtime.process_threads` threads, every
other training at the peak of `runtime.threads` threads. Everything else a run does (padding,
the optimizer, the embedding table, Python, tracking, saving, the best stage's latencies)
adds time: no implementation of the recipe runs the job faster on this machine. Into
reports/bench.json `floor`, in minutes by stage.

The search's trainings are counted as the profile's search study recorded them (each trial's
steps and tune evaluations, pruning included) when the study is there, complete, and made
with the profile's settings and code, and the seeds stage with the arms its best trial gives
(two when it is the authors' setting); else every trial as unpruned and three arms, an
estimate rather than a floor (the section says which): `--set student.train.epochs=4` gives
another recipe's."""

from __future__ import annotations

import math

import numpy as np

from study.bench.common import read_bench, write_section
from study.bench.cpu import model_shape, step_flops
from study.config import Config
from study.errors import StudyError
from study.layout import Layout

TERA = 1e12


# The stages whose trainings run side by side (`runtime.processes`, `runtime.process_threads`).
SIDE_BY_SIDE = ("search", "seeds")


def window_flops(shape: dict, lengths) -> tuple[float, float]:
    """(one epoch of training, one answering pass) over windows of these lengths, unpadded."""
    train = float(step_flops(shape, 1, np.asarray(lengths, dtype=np.float64)).sum())
    return train, train / 3


def split_lengths(windows) -> dict[str, list[int]]:
    return {name: [len(ids) for ids in getattr(windows, name)["input_ids"]]
            for name in ("train", "tune", "dev")}


def recorded_search(cfg: Config, full_steps: int, tune_passes: int
                    ) -> tuple[str, list[dict], int]:
    """Each search trial's (steps, tune evaluations, scored on dev), and the arms the seeds
    stage trains: as the profile's study recorded them when it has every configuration, else
    every trial unpruned and three arms."""
    import optuna

    from study import design, seeds
    from study.search import STEPS_ATTR
    from study.storage import sqlite_path

    full = [{"steps": full_steps, "tune": tune_passes, "dev": 1}] * cfg.search.n_trials
    url = cfg.storage_url
    if (db := sqlite_path(url)) is not None and not db.exists():
        return "no search study: every trial unpruned", full, 3
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.search.study_name, storage=url)
    except KeyError:  # the database holds no such study
        return "no search study: every trial unpruned", full, 3
    differ = design.differences(study, cfg) if design.FIXED_ATTR in study.user_attrs \
        else ["not made by `study search`"]
    if differ:  # another recipe's trials say nothing of this one's
        return f"the search study differs ({differ[0]}): every trial unpruned", full, 3
    done = [t for t in study.trials if t.state.is_finished() and STEPS_ATTR in t.user_attrs]
    if len(done) < cfg.search.n_trials:
        return (f"{len(done)} of {cfg.search.n_trials} trials recorded: every trial unpruned",
                full, 3)
    # The seeds stage's rule (seeds.train_seeds): when the best is the authors' setting, its
    # distilled arm is the authors' arm, trained once.
    settings = seeds.arms(cfg, study.best_trial)
    arms = 2 if settings["distilled"] == settings["authors"] else 3
    return "the search study's recorded trials", [
        {"steps": int(t.user_attrs[STEPS_ATTR]), "tune": len(t.intermediate_values),
         "dev": int(t.state == optuna.trial.TrialState.COMPLETE)} for t in done], arms


def bare_step_minutes(cpu: dict, flops: dict, rates: dict, threads: dict) -> float | None:
    """Total minutes at the share of the GEMM peak that `study bench --cpu` measured a bare
    PyTorch step of the student reaching with each stage's threads (None without that part):
    nearer what a run costs."""
    shares = {int(t): r["bare_share_of_gemm_peak"]
              for t, r in cpu.get("step", {}).get("threads", {}).items()}
    if not set(threads.values()) <= set(shares):
        return None
    return round(sum(v / (rates[k] * shares[threads[k]]) for k, v in flops.items()) / 60, 1)


def run(cfg: Config) -> dict:
    from study.fit import data_windows
    from study.modeling import build_student
    from study.teacher import initial
    from study.trainer import eval_steps

    cpu = read_bench(cfg).get("cpu", {})
    gemm = cpu.get("gemm")
    if not gemm:
        raise StudyError(f"{Layout.of(cfg).reports.bench} has no `cpu.gemm`: run `study bench "
                         "--cpu --parts gemm` first (the floor divides by this machine's GEMM "
                         "peak)")
    peak = {int(t): g["peak_gflops"] * 1e9 for t, g in gemm.items()}
    rt = cfg.runtime

    def rate(threads: int) -> float:
        if threads not in peak:
            raise StudyError(f"{Layout.of(cfg).reports.bench} `cpu.gemm` has no "
                             f"{threads}-thread peak")
        return peak[threads]

    student, tokenizer = build_student(cfg.student, cfg.seed)
    teacher, teacher_tokenizer = initial(cfg)
    s_shape, t_shape = model_shape(student), model_shape(teacher)
    s_len = split_lengths(data_windows(cfg, tokenizer)[2])
    t_len = split_lengths(data_windows(cfg, teacher_tokenizer)[2])
    s_epoch, _ = window_flops(s_shape, s_len["train"])
    s_tune, s_dev = window_flops(s_shape, s_len["tune"])[1], window_flops(s_shape, s_len["dev"])[1]
    t_epoch, t_train_pass = window_flops(t_shape, t_len["train"])
    t_tune, t_dev = window_flops(t_shape, t_len["tune"])[1], window_flops(t_shape, t_len["dev"])[1]

    spec = cfg.student.train
    per_epoch = math.ceil(len(s_len["train"]) / spec.batch_size)
    full_steps = math.ceil(spec.epochs * per_epoch)
    # Tune passes of a full training: one at each evaluation step, and the final model's
    # (answered at the last step, or by the scoring after it when that is no evaluation step).
    every = eval_steps(len(s_len["train"]), spec.batch_size, spec.evals_per_epoch)
    tune_passes = math.ceil(full_steps / every) if spec.evals_per_epoch else 1
    live = cfg.distill.teacher_logits == "live"

    def training(steps: int, tune: int, dev: int, distilled: bool) -> float:
        epochs = steps / per_epoch
        teacher_passes = epochs * t_train_pass if distilled and live else 0.0
        return epochs * s_epoch + teacher_passes + tune * s_tune + dev * s_dev

    source, trials, arms = recorded_search(cfg, full_steps, tune_passes)
    teacher_epochs = 0 if cfg.teacher.checkpoint else cfg.teacher.train.epochs
    flops = {
        "teacher": teacher_epochs * t_epoch + (t_train_pass if not live else 0.0)
        + t_tune + t_dev,
        "baseline": training(full_steps, tune_passes, 1, False),
        "distill": training(full_steps, tune_passes, 1, True),
        "search": sum(training(t["steps"], t["tune"], t["dev"], True) for t in trials),
        # Each seeds training is scored on tune and dev once, at its end.
        "seeds": len(cfg.seeds.values) * sum(training(full_steps, 1, 1, d)
                                              for d in (False, True, True)[:arms]),
    }
    # Each stage's threads a process, and its processes side by side.
    side = rt.processes > 1
    threads = {k: rt.process_threads if side and k in SIDE_BY_SIDE else rt.threads for k in flops}
    rates = {k: (rt.processes if side and k in SIDE_BY_SIDE else 1) * rate(threads[k])
             for k in flops}
    minutes = {k: round(v / rates[k] / 60, 2) for k, v in flops.items()}
    minutes["total"] = round(sum(minutes.values()), 1)
    at_bare = bare_step_minutes(cpu, flops, rates, threads)
    steps = {"search": sum(t["steps"] for t in trials),
             "seeds": arms * len(cfg.seeds.values) * full_steps,
             "baseline_and_distill": 2 * full_steps}
    section = {
        "profile": cfg.profile, "search_counted_from": source, "seeds_arms": arms,
        "student_steps": {**steps, "total": sum(steps.values())},
        "student_step_gflop_mean": round(s_epoch / per_epoch / 1e9, 1),
        "tflop": {k: round(v / TERA, 3) for k, v in flops.items()},
        "gflops_used": {k: round(v / 1e9, 1) for k, v in rates.items()},
        "gemm_peak_from": cpu.get("environment", {}).get("git_commit"),
        "minutes": minutes,
        # The same FLOPs at the share of the peak a bare PyTorch step reaches (`cpu.step`).
        "minutes_at_bare_step_rate": at_bare,
        "what": "FLOPs of the main job's trainings and evaluations on real tokens, at this "
                "CPU's fp32 GEMM peak: a floor, not an estimate",
    }
    section = write_section(cfg, "floor", section)
    print(f"floor: {section['student_steps']['total']} student steps "
          f"({section['student_step_gflop_mean']} GFLOP each), "
          f"{sum(section['tflop'].values()):.1f} TFLOP: at least {minutes['total']} min "
          f"at the GEMM peak ({source})"
          + (f"; {at_bare} min at a bare PyTorch step's share of it" if at_bare else ""))
    for k in flops:
        print(f"floor: {k}: {section['tflop'][k]} TFLOP at {section['gflops_used'][k]} GFLOP/s "
              f"= {minutes[k]} min")
    return section
