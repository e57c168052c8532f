"""`study bench --workers N`: N `study search` workers on one new study in PostgreSQL, and the
peak number of database backends while they run; into reports/bench.json `workers`, one entry
per N."""

from __future__ import annotations

import tempfile
import time

import optuna

from study.bench.common import read_bench, write_section
from study.config import Config


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


def run(cfg: Config, n: int, forward: list[str]) -> dict:
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
    section = read_bench(cfg).get("workers", {})
    section.update({
        "profile": cfg.profile, "trials_per_worker": cfg.search.n_trials,
        "tracking": "mlflow server" if cfg.tracking.uri.startswith("http") else "database",
        "target": {"peak_backends_below": 50, "at_workers": 8, "max_connections": 100},
        str(n): entry,
    })
    write_section(cfg, "workers", section)
    print(f"{n} worker(s): peak {peak.peak} backends ({idle} before they started, "
          f"{entry['per_worker']} per worker), max_connections {max_connections}, "
          f"trials {entry['trials']}, {entry['wall_seconds']} s")
    return entry
