"""`study bench --cpu`: where a CPU training of the student spends its time, against what this
machine can do; into reports/bench.json `cpu`, each part with the load average it ran under.

- `gemm`: fp32 torch.mm at the student's shapes (tokens x hidden by hidden, by the FFN width,
  and back) and a square 2048 product, with 1 and 2 threads: the fastest is the practical peak.
- `step`: a bare PyTorch step of the student (forward with its own span loss, backward, AdamW;
  no Trainer) against the project's step (study.fit.make_trainer: DistillationTrainer, the
  project's TrainingArguments, the distillation loss, cached teacher logits) on the same
  batches, 1 and 2 threads, the two interleaved and repeated (medians): ms a step, the bare
  step's FLOP rate (6 * N_non-embedding * tokens + attention) and its share of the GEMM peak.
- `threads`: whether a training repeated with the same thread count gives the same losses,
  and whether 1 and 2 threads do (they need not: a reduction split over threads adds in
  another order).
- `processes`: two 1-thread processes training side by side against one 2-thread process
  (steps a second, both made by the project's step).
- `trial`: one search trial (study.search.Objective on the profile's recipe) timed by part:
  training steps, tune evaluations, final scoring, fixed work, tracking (MLflow), saving;
  after `once_per_process_seconds` (the student's build, the windows, the teacher cache),
  which a search pays before its first trial only.
- `compile` (asked for by name, `--parts ...,compile`: minutes): torch.compile (inductor) on
  the student against eager, its compile time against the steps it saves in one training,
  and whether two compiled runs train the same losses.

It runs in a scratch copy of the profile (its data prepared there, MLflow there): nothing of
the checkout is written but reports/bench.json. The profile's trained teacher (and its
logits, when cached) is used when there is one, else an untrained stand-in of the same shape
(the same work, other logits; the section says which).
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch
import transformers
from transformers import TrainerCallback

from study.bench.common import write_section
from study.config import Config
from study.errors import StudyError
from study.layout import Layout

THREADS = (1, 2)
GEMM_SQUARE = 2048


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- workspace
@contextmanager
def workspace(cfg: Config) -> Iterator[tuple[Config, str]]:
    """The profile in a scratch folder, prepared, with a teacher: (its config, which teacher)."""
    from study import prepare
    from study.modeling import load_qa_model, load_tokenizer, save_model

    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        root = Path(tmp)
        (root / "mlruns").mkdir()
        scratch = cfg.replace(
            runtime={"artifacts": str(root / "artifacts"), "reports": str(root / "reports")},
            tracking={"uri": f"sqlite:///{root}/mlruns/mlflow.db",
                      "artifact_location": str(root / "mlruns" / "artifacts")})
        prepare.run(scratch)
        trained, folder = Layout.of(cfg).teacher.model, Layout.of(scratch).teacher.model
        folder.parent.mkdir(parents=True)
        if trained.exists():
            folder.symlink_to(trained.resolve(), target_is_directory=True)
            teacher = f"trained: {trained}"
        else:
            ref = cfg.teacher.checkpoint or cfg.teacher.init
            transformers.set_seed(cfg.seed)  # its head's init: the same stand-in every time
            save_model(load_qa_model(ref), load_tokenizer(ref), folder)
            teacher = (f"stand-in: {ref} untrained, as no trained teacher is at {trained} "
                       "(the same work, other logits: timings only)")
        cache = Layout.of(cfg).teacher_cache
        if cache.is_dir():  # the profile's teacher logits (small): not computed again here
            shutil.copytree(cache, Layout.of(scratch).teacher_cache)
        yield scratch, teacher


# --------------------------------------------------------------------------- GEMM
def _mm_gflops(m: int, k: int, n: int, seconds: float) -> float:
    """The best of three timed runs of (m x k) @ (k x n), each at least seconds / 3."""
    a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(3):
        reps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 3 or reps < 2:
            torch.mm(a, b, out=c)
            reps += 1
        best = max(best, 2 * m * k * n * reps / elapsed / 1e9)
    return round(best, 1)


def gemm(shape: dict, threads=THREADS, seconds: float = 0.6) -> dict:
    tokens, d, ffn = shape["tokens"], shape["hidden"], shape["ffn"]
    sizes = {f"{tokens}x{d}x{d}": (tokens, d, d), f"{tokens}x{d}x{ffn}": (tokens, d, ffn),
             f"{tokens}x{ffn}x{d}": (tokens, ffn, d),
             f"{GEMM_SQUARE}x{GEMM_SQUARE}x{GEMM_SQUARE}": (GEMM_SQUARE,) * 3}
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        rates = {name: _mm_gflops(*s, seconds) for name, s in sizes.items()}
        out[str(t)] = {"gflops": rates, "peak_gflops": max(rates.values()), "load_average": load()}
    return out


# --------------------------------------------------------------------------- the model's work
def model_shape(model) -> dict:
    c = model.config
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
           for p in m.parameters()}
    return {"layers": getattr(c, "n_layers", None) or c.num_hidden_layers,
            "hidden": getattr(c, "dim", None) or c.hidden_size,
            "ffn": getattr(c, "hidden_dim", None) or c.intermediate_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "non_embedding_parameters": sum(p.numel() for p in model.parameters()
                                            if id(p) not in emb)}


def step_flops(shape: dict, batch: int, length: int) -> float:
    """A training step's FLOPs: 6 per non-embedding parameter and token (forward 2, backward
    4), plus attention's two L x L products, 12 * layers * hidden * L per token."""
    tokens = batch * length
    return (6 * shape["non_embedding_parameters"] * tokens
            + 12 * shape["layers"] * shape["hidden"] * length * tokens)


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the two steps
def warm(cfg: Config) -> dict:
    """What a search does once per process and data version before its first trial trains
    (seconds): the student's build, the windows, the teacher-logit cache (built, or found).
    Done first, so the parts after it time what every later trial does."""
    from study import teacher as teacher_stage
    from study.fit import data_windows, make_trainer
    from study.modeling import build_student

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tokenizer = build_student(cfg.student, cfg.seed)
    seconds["model_build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits, _, windows = data_windows(cfg, tokenizer)
    seconds["windows"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-cpu-warm-") as out:
        _, seconds["teacher_cache"] = make_trainer(
            cfg, model=model, tokenizer=tokenizer, spec=cfg.student.train, splits=splits,
            windows=windows, out_dir=Path(out), seed=cfg.seed, distill=cfg.distill,
            teacher=lambda: teacher_stage.load_trained(cfg)[0],
            teacher_dir=teacher_stage.trained_folder(cfg))
    return {k: round(v, 2) for k, v in seconds.items()}


class StepClock(TrainerCallback):
    """The time between consecutive step ends: everything a step costs the Trainer (batch,
    forward, loss, backward, clipping, optimizer, scheduler, callbacks). The first step (its
    optimizer state is made then) has no previous end, so it is not counted."""

    def __init__(self, barrier=None):
        self.ends: list[float] = []
        self.barrier = barrier

    def on_train_begin(self, args, state, control, **kwargs):
        if self.barrier is not None:  # processes side by side start training together
            self.barrier.wait(timeout=900)

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def project_block(cfg: Config, steps: int, record: bool = False, barrier=None) -> dict:
    """`steps` + 1 steps of the project's training as a search trial builds it
    (study.fit.make_trainer, the distillation settings of `cfg`), evaluation off: seconds per
    step, the losses, a digest of the weights and (`record`) the batches."""
    from study import teacher as teacher_stage
    from study.fit import data_windows, make_trainer
    from study.modeling import build_student

    model, tokenizer = build_student(cfg.student, cfg.seed)
    splits, _, windows = data_windows(cfg, tokenizer)
    spec = cfg.student.train.replace(max_steps=steps + 1, evals_per_epoch=0)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-step-") as out:
        trainer, _ = make_trainer(
            cfg, model=model, tokenizer=tokenizer, spec=spec, splits=splits, windows=windows,
            out_dir=Path(out), seed=cfg.seed, distill=cfg.distill,
            teacher=lambda: teacher_stage.load_trained(cfg)[0],
            teacher_dir=teacher_stage.trained_folder(cfg))
        clock = StepClock(barrier)
        trainer.add_callback(clock)
        losses, batches = [], []
        compute_loss = trainer.compute_loss

        def recorded_loss(*args, **kwargs):
            out = compute_loss(*args, **kwargs)
            losses.append((out[0] if isinstance(out, tuple) else out).detach())
            return out

        trainer.compute_loss = recorded_loss
        if record:
            collate = trainer.data_collator

            def recorded_batch(features):
                batch = collate(features)
                batches.append({k: v.clone() for k, v in batch.items()})
                return batch

            trainer.data_collator = recorded_batch
        trainer.train()
    # The dataloader fetches a batch ahead: the last one recorded was never trained on.
    return {"seconds": clock.seconds(), "losses": [float(x) for x in losses],
            "digest": digest(model), "batches": batches[:steps + 1]}


def bare_block(cfg: Config, batches: list[dict], fused: bool = True) -> dict:
    """The same batches through the student in a plain PyTorch loop: forward with the
    model's own span loss, backward, torch's fused AdamW (its fastest on the CPU, and the
    Trainer's default) at the recipe's rate and decay; no Trainer, no scheduler, no clipping.
    Seconds per step after the first, as StepClock. `fused` False: torch's default AdamW
    (on the CPU its for-loop implementation), the Trainer's default in older transformers."""
    from study.modeling import build_student

    model, _ = build_student(cfg.student, cfg.seed)
    spec = cfg.student.train
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate,
                            weight_decay=spec.weight_decay, fused=fused or None)
    transformers.set_seed(cfg.seed)
    model.train()
    ends = []
    for b in batches:
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     start_positions=b["start_positions"], end_positions=b["end_positions"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return {"seconds": [b - a for a, b in zip(ends, ends[1:])]}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def steps_bench(cfg: Config, steps: int, repeats: int, peaks: dict, shape: dict,
                threads=THREADS) -> tuple[dict, dict, list[dict]]:
    """The project's step and the bare one on the same batches, per thread count: project,
    bare, project, bare... (`repeats` of each), so both see the same load. Returns the `step`
    and `threads` parts and the batches."""
    batches: list[dict] | None = None
    rows, runs = {}, defaultdict(list)
    for t in threads:
        torch.set_num_threads(t)
        project, bare, unfused, loads = [], [], [], []
        for _ in range(repeats):
            p = project_block(cfg, steps, record=batches is None)
            if batches is None:
                batches = p["batches"]
            project.append(_mean(p["seconds"]))
            bare.append(_mean(bare_block(cfg, batches)["seconds"]))
            unfused.append(_mean(bare_block(cfg, batches, fused=False)["seconds"]))
            runs[t].append(p)
            loads.append(load())
        flops = _mean([step_flops(shape, *x["input_ids"].shape) for x in batches[1:]])
        p_s, b_s = statistics.median(project), statistics.median(bare)
        gflops = flops / b_s / 1e9
        rows[str(t)] = {
            "project_step_ms": round(p_s * 1000, 1), "bare_step_ms": round(b_s * 1000, 1),
            "project_over_bare": round(p_s / b_s, 3),
            "project_step_ms_runs": [round(x * 1000, 1) for x in project],
            "bare_step_ms_runs": [round(x * 1000, 1) for x in bare],
            "bare_default_adamw_over_fused": round(statistics.median(unfused) / b_s, 3),
            "bare_gflops": round(gflops, 1), "project_gflops": round(flops / p_s / 1e9, 1),
            "bare_share_of_gemm_peak": round(gflops / peaks[str(t)]["peak_gflops"], 3),
            "load_average": loads}
    lengths = [x["input_ids"].shape[1] for x in batches[1:]]
    step = {"batch_size": batches[0]["input_ids"].shape[0], "lengths": lengths,
            "steps_timed": len(lengths), "repeats": repeats,
            "flops_per_step": round(_mean([step_flops(shape, *x["input_ids"].shape)
                                           for x in batches[1:]]) / 1e9, 2),
            "flops_unit": "GFLOP", "target_project_over_bare": 1.2,
            "how": "ms a step: the mean over a block's timed steps, the median over blocks",
            "bare": "plain PyTorch loop: forward with the model's span loss, backward, "
                    "torch.optim.AdamW(fused=True), zero_grad",
            "project": "study.fit.make_trainer: DistillationTrainer, the project's "
                       "TrainingArguments, distillation loss, cached teacher logits",
            "threads": rows}
    return step, _threads_part(runs), batches


def _threads_part(runs: dict[int, list[dict]]) -> dict:
    same = {str(t): all(r["losses"] == rs[0]["losses"] and r["digest"] == rs[0]["digest"]
                        for r in rs) for t, rs in runs.items()}
    out = {"same_threads_run_to_run_identical": same}
    if len(runs) >= 2:
        (a, ra), (b, rb) = list(runs.items())[:2]
        la, lb = ra[0]["losses"], rb[0]["losses"]
        differ = [i for i, (x, y) in enumerate(zip(la, lb)) if x != y]
        out.update({
            f"{a}_vs_{b}_threads_identical": not differ and ra[0]["digest"] == rb[0]["digest"],
            "first_differing_step": differ[0] + 1 if differ else None,
            "max_abs_loss_difference": max((abs(x - y) for x, y in zip(la, lb)), default=0.0),
            f"losses_{a}_threads": la, f"losses_{b}_threads": lb})
    return out


# --------------------------------------------------------------------------- processes
def _child(cfg: Config, threads: int, steps: int, barrier, queue) -> None:
    torch.set_num_threads(threads)
    queue.put(_mean(project_block(cfg, steps, barrier=barrier)["seconds"]))


def _side_by_side(cfg: Config, threads: list[int], steps: int) -> list[float]:
    """One spawned process per entry of `threads`, each training `steps` project steps from
    the same moment (a barrier after setup): each one's seconds a step."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(len(threads)), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(cfg, t, steps, barrier, queue), daemon=True)
             for t in threads]
    for p in procs:
        p.start()
    try:
        out = [queue.get(timeout=1800) for _ in procs]
    except Exception:  # noqa: BLE001 - a child died: say which, not "queue empty"
        codes = [p.exitcode for p in procs]
        raise StudyError(f"bench --cpu: a training process failed (exit codes {codes})") from None
    finally:
        for p in procs:
            p.join(timeout=60)
    return out


def processes(cfg: Config, steps: int, repeats: int) -> dict:
    """Steps a second of one 2-thread process against two 1-thread processes side by side,
    alternated `repeats` times."""
    one, two, loads = [], [], []
    for _ in range(repeats):
        one.append(1 / _side_by_side(cfg, [2], steps)[0])
        two.append(sum(1 / s for s in _side_by_side(cfg, [1, 1], steps)))
        loads.append(load())
    return {"steps_timed": steps, "repeats": repeats,
            "one_2thread_process_steps_per_second": [round(x, 3) for x in one],
            "two_1thread_processes_steps_per_second": [round(x, 3) for x in two],
            "two_over_one": round(statistics.median(b / a for a, b in zip(one, two)), 3),
            "load_average": loads}


# --------------------------------------------------------------------------- torch.compile
def _compiled_child(cfg: Config, batches: list[dict], compiled: bool, queue) -> None:
    from study.modeling import build_student

    torch.set_num_threads(1)
    model, _ = build_student(cfg.student, cfg.seed)
    spec = cfg.student.train
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate,
                            weight_decay=spec.weight_decay, fused=True)
    forward = torch.compile(model) if compiled else model
    transformers.set_seed(cfg.seed)
    model.train()
    seconds, losses = [], []
    for b in batches:
        t0 = time.perf_counter()
        loss = forward(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss))
    queue.put({"seconds": seconds, "losses": losses})


def _compiled_run(cfg: Config, batches: list[dict], compiled: bool, cache_dir: Path) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    # Inductor reads its cache folder from the environment as the child starts.
    with mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}):
        proc = ctx.Process(target=_compiled_child, args=(cfg, batches, compiled, queue),
                           daemon=True)
        proc.start()
    try:
        return queue.get(timeout=3600)
    except Exception:  # noqa: BLE001
        raise StudyError(f"bench --cpu: the compile run failed (exit {proc.exitcode})") from None
    finally:
        proc.join(timeout=60)


def compile_part(cfg: Config, batches: list[dict], recipe_steps: int) -> dict:
    """torch.compile (inductor) on the student against eager, 1 thread, each a new process on
    the project's batches (their lengths vary: the second length makes inductor compile a
    dynamic-shape graph that later lengths reuse). Compiled first with an empty inductor cache
    (a machine's first training pays that), then again with the cache it left. Kept only if
    its compile time is paid back within one training of the recipe and two compiled runs
    train the same losses."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-inductor-") as cache:
        eager = _compiled_run(cfg, batches, False, Path(cache))
        cold = _compiled_run(cfg, batches, True, Path(cache))
        warm = _compiled_run(cfg, batches, True, Path(cache))
    e_step = statistics.median(eager["seconds"][2:])
    c_step = statistics.median(cold["seconds"][2:] + warm["seconds"][2:])
    extra = sum(cold["seconds"][:2]) - 2 * e_step
    saving = e_step - c_step
    payback = extra / saving if saving > 0 else None
    return {
        "threads": 1, "steps": len(batches), "recipe_steps": recipe_steps,
        "eager_step_ms": round(e_step * 1000, 1), "compiled_step_ms": round(c_step * 1000, 1),
        "first_two_steps_seconds": {"eager": [round(x, 1) for x in eager["seconds"][:2]],
                                    "compiled_empty_cache": [round(x, 1) for x in cold["seconds"][:2]],
                                    "compiled_warm_cache": [round(x, 1) for x in warm["seconds"][:2]]},
        "compile_seconds_empty_cache": round(extra, 1),
        "payback_steps": round(payback, 1) if payback is not None else None,
        "pays_back_within_one_training": payback is not None and payback <= recipe_steps,
        "compiled_runs_identical": cold["losses"] == warm["losses"],
        "compiled_equals_eager": cold["losses"] == eager["losses"],
        "load_average": load()}


# --------------------------------------------------------------------------- one trial
class Parts:
    """Wall time by part: each wrapped call's time less that of wrapped calls inside it."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._inner: list[float] = []
        self._patches = ExitStack()

    def time(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self._inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self.seconds[part] += elapsed - self._inner.pop()
                self.calls[part] += 1
                if self._inner:
                    self._inner[-1] += elapsed

        self._patches.enter_context(mock.patch.object(owner, name, timed))

    def __enter__(self) -> Parts:
        return self

    def __exit__(self, *exc) -> None:
        self._patches.close()


def _timed_parts(parts: Parts) -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from study import distill, fit
    from study import teacher as teacher_stage
    from study.tracking import RunHandle, Tracker
    from study.trainer import QuestionAnsweringTrainer

    for owner, name, part in [
        (transformers.Trainer, "train", "training_steps"),
        (QuestionAnsweringTrainer, "evaluate", "tune_evaluations"),
        (fit, "score", "final_scoring"),
        (fit, "data_windows", "fixed_windows"), (distill, "load_splits", "fixed_windows"),
        (distill, "build_student", "fixed_model_build"),
        (teacher_stage, "load_trained", "fixed_teacher"),
        (distill, "check_same_tokenization", "fixed_teacher"),
        (fit, "make_trainer", "fixed_trainer_and_cache"),
        (fit, "_record", "saving"),
        *[(RunHandle, m, "tracking") for m in ("log_metrics", "log_params", "set_tags",
                                               "log_artifact", "log_dict")],
        (Tracker, "_start", "tracking"), (Tracker, "_end", "tracking"),
        (SystemMetricsMonitor, "start", "tracking"), (SystemMetricsMonitor, "finish", "tracking"),
    ]:
        parts.time(owner, name, part)


def trial(cfg: Config, threads: int) -> dict:
    """One search trial (the authors' setting, the study's first) as `study search` runs it,
    after the search's once-per-process work (`warm`, and the MLflow store's tables here),
    timed by part."""
    import optuna

    from study import design, search
    from study.search import STEPS_ATTR
    from study.tracking import Tracker

    torch.set_num_threads(threads)
    tracker = Tracker(cfg)  # a new store's tables: made once, not by a trial
    study = optuna.create_study(
        study_name="bench-cpu", storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.TPESampler(seed=cfg.search.sampler_seed),
        pruner=search.make_pruner(cfg), direction="maximize")
    design.initialise(study, cfg)
    with tracker.run("bench-cpu", "bench") as parent:
        objective = search.Objective(cfg, tracker, parent.run_id, study.study_name)
        with Parts() as parts:
            _timed_parts(parts)
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=1)
            wall = time.perf_counter() - t0
    t = study.trials[0]
    seconds = {k: round(v, 2) for k, v in sorted(parts.seconds.items())}
    seconds["other"] = round(wall - sum(parts.seconds.values()), 2)
    steps = t.user_attrs.get(STEPS_ATTR, 0)
    return {"threads": threads, "state": t.state.name, "steps": steps,
            "tune_evaluations": parts.calls.get("tune_evaluations", 0),
            "wall_seconds": round(wall, 2), "seconds": seconds,
            "shares": {k: round(v / wall, 3) for k, v in seconds.items()},
            "training_step_ms": round(parts.seconds["training_steps"] / max(1, steps) * 1000, 1),
            "load_average": load()}


# --------------------------------------------------------------------------- the command
PARTS = ("gemm", "step", "processes", "trial")  # and "compile", asked for by name


def run(cfg: Config, steps: int | None = None, repeats: int = 2, trial_threads: int | None = None,
        parts: tuple[str, ...] | None = None) -> dict:
    """`parts` (default PARTS) into reports/bench.json `cpu`, `steps` timed steps a block
    (default 10). Each part is written as soon as it ends."""
    import math

    from study.modeling import build_student

    steps = steps or 10
    parts = tuple(parts or PARTS)
    unknown = sorted(set(parts) - {*PARTS, "compile"})
    if unknown:
        raise StudyError(f"no --cpu part {', '.join(unknown)}: choose from "
                         f"{', '.join((*PARTS, 'compile'))}")
    if steps < 2:
        raise StudyError(f"--steps must be at least 2 for --cpu (got {steps})")
    default_threads = torch.get_num_threads()
    trial_threads = trial_threads or cfg.runtime.threads or default_threads
    shape = model_shape(build_student(cfg.student, cfg.seed)[0])
    spec = cfg.student.train
    shape.update(tokens=spec.batch_size * cfg.data.max_length)
    section: dict = {"profile": cfg.profile, "student": {
        "init": cfg.student.init, "layers": list(cfg.student.layers or []), **shape},
        "batch_size": spec.batch_size, "max_length": cfg.data.max_length,
        "cores": os.cpu_count(), "parts": list(parts), "load_average_start": load()}
    try:
        with workspace(cfg) as (scratch, teacher):
            section["teacher"] = teacher
            section["once_per_process_seconds"] = warm(scratch)
            if "gemm" in parts:
                section["gemm"] = gemm(shape)
                write_section(cfg, "cpu", section)
            if {"step", "compile"} & set(parts):
                peaks = section.get("gemm") or gemm(shape, seconds=0.3)
                step, threads, batches = steps_bench(scratch, steps, repeats, peaks, shape)
                if "step" in parts:
                    section.update(step=step, threads=threads)
                    write_section(cfg, "cpu", section)
            if "processes" in parts:
                section["processes"] = processes(scratch, steps, repeats)
                write_section(cfg, "cpu", section)
            if "trial" in parts:
                section["trial"] = trial(scratch, trial_threads)
                write_section(cfg, "cpu", section)
            if "compile" in parts:
                n = math.ceil(spec.epochs * math.ceil(_train_windows(scratch) / spec.batch_size))
                section["compile"] = compile_part(scratch, batches, n)
    finally:
        torch.set_num_threads(default_threads)
    section = write_section(cfg, "cpu", section)
    _print(section)
    return section


def _train_windows(cfg: Config) -> int:
    from study.fit import data_windows, n_train_windows
    from study.modeling import build_student

    return n_train_windows(data_windows(cfg, build_student(cfg.student, cfg.seed)[1])[2])


def _print(s: dict) -> None:
    for t, g in s.get("gemm", {}).items():
        print(f"cpu: GEMM peak {g['peak_gflops']} GFLOP/s with {t} thread(s) (load {g['load_average']})")
    for t, r in s.get("step", {}).get("threads", {}).items():
        print(f"cpu: {t} thread(s): project step {r['project_step_ms']} ms, bare "
              f"{r['bare_step_ms']} ms (x{r['project_over_bare']}); bare {r['bare_gflops']} "
              f"GFLOP/s = {r['bare_share_of_gemm_peak']:.0%} of the GEMM peak "
              f"(load {r['load_average']})")
    if "threads" in s:
        print(f"cpu: same threads run to run identical: "
              f"{s['threads']['same_threads_run_to_run_identical']}; 1 vs 2 threads identical: "
              f"{s['threads'].get('1_vs_2_threads_identical')}")
    if "processes" in s:
        p = s["processes"]
        print(f"cpu: two 1-thread processes make x{p['two_over_one']} the steps of one 2-thread "
              f"process (load {p['load_average']})")
    if "compile" in s:
        c = s["compile"]
        print(f"cpu: torch.compile: {c['compile_seconds_empty_cache']} s to compile, step "
              f"{c['compiled_step_ms']} ms vs {c['eager_step_ms']} ms eager; pays back within one "
              f"training: {c['pays_back_within_one_training']}; compiled runs identical: "
              f"{c['compiled_runs_identical']}")
    if "trial" in s:
        tr = s["trial"]
        print(f"cpu: one trial ({tr['steps']} steps, {tr['threads']} threads) "
              f"{tr['wall_seconds']} s: " + ", ".join(f"{k} {v:.0%}" for k, v in
                                                       tr["shares"].items()))
