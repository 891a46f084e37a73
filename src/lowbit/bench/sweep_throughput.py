"""Sweep throughput: trials per minute of an Optuna sweep on the tiny model, 1 vs 2 workers, SQLite vs PostgreSQL.

Each setting runs ``python train.py -m +experiment=demo_sst2 +hparams_search=bits_lr model=tiny ...`` (the
trial settings of ``tests/test_sweep.py``) in 1 or 2 sweeper processes on one fresh study of ``--n-trials``
trials, each worker with ``--threads`` torch/OpenMP threads (default 1: N workers on N cores; more threads
only oversubscribe the cores). Three rates: ``trials_per_min`` is the steady state, the sum over workers of
(its trials after the first) / (end of its first trial -> end of its last): no process start-up, no
first-trial warm-up (tokenizer, data cache), no idle wait at the end -- what a long sweep sees;
``trials_per_min_span`` counts all trials from the first start to the last end, ``trials_per_min_wall``
from launching the workers to the last exit.
PostgreSQL runs in a throwaway server (:class:`TempPostgres`, also used by ``tests/test_sweep_postgres.py``).
Goal: 2 workers / 1 worker >= 1.6 trials/min (needs >= 2 free cores).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- #
# a throwaway PostgreSQL server
# --------------------------------------------------------------------------- #
class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why)."""


def find_pg_bin(name: str) -> str | None:
    """``name`` (initdb, pg_ctl, ...) on $PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: [
        int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """initdb in a fresh directory, a server on 127.0.0.1:<free port> (and a unix socket in that directory),
    a database owned by a password-protected user; :meth:`stop` shuts it down and deletes everything.

    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (else ``nobody``)
    via ``runuser``/``su``, in a directory under the system temp dir (pytest's are private to root).
    """

    def __init__(self, user: str = "lowbit", database: str = "lowbit", password: str | None = None) -> None:
        self.user, self.database = user, database
        self.password = password or "pw" + secrets.token_hex(10)
        self.dir: Path | None = None
        self.port = 0
        self._as: str | None = None
        self._pg_ctl: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        args = list(cmd)
        if self._as:
            runuser = shutil.which("runuser")
            if runuser:
                args = [runuser, "-u", self._as, "--", *args]
            else:
                args = [shutil.which("su") or "su", "-s", "/bin/sh", self._as, "-c", " ".join(f"'{a}'" for a in args)]
        proc = subprocess.run(args, cwd=self.dir, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{Path(cmd[0]).name} failed (rc={proc.returncode}): "
                                      + " ".join((proc.stderr or proc.stdout).split())[-400:])

    def start(self) -> TempPostgres:
        initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise PostgresUnavailable("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in "
                                      "/usr/lib/postgresql/*/bin); `make test-deps` installs it with apt-get as root")
        if not (importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2")):
            raise PostgresUnavailable("no PostgreSQL driver: pip install 'lowbit[postgres]' (psycopg)")
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self._as = name
                    break
                except KeyError:
                    continue
            if self._as is None or not (shutil.which("runuser") or shutil.which("su")):
                raise PostgresUnavailable("running as root, PostgreSQL refuses to run as root, and there is no "
                                          "postgres/nobody user with runuser/su to run it as")
        self.dir = Path(tempfile.mkdtemp(prefix="lowbit-pg-"))
        if self._as:
            entry = pwd.getpwnam(self._as)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._pg_ctl = pg_ctl
        self.port = _free_port()
        data = self.dir / "data"
        try:
            self._run(initdb, "-D", str(data), "-U", "admin", "--auth-local=trust", "--auth-host=scram-sha-256",
                      "-E", "UTF8", "--no-instructions")
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            self._run(pg_ctl, "-D", str(data), "-l", str(self.dir / "server.log"), "-o", opts, "-w", "-t", "60",
                      "start")
            try:
                import psycopg as driver
            except ImportError:
                import psycopg2 as driver
            con = driver.connect(host=str(self.dir), port=self.port, user="admin", dbname="postgres")
            con.autocommit = True
            with con.cursor() as cur:
                quoted = self.password.replace("'", "''")  # DDL takes no bound parameters
                cur.execute(f"CREATE ROLE {self.user} LOGIN PASSWORD '{quoted}'")
                cur.execute(f"CREATE DATABASE {self.database} OWNER {self.user}")
            con.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if self._pg_ctl and (data / "postmaster.pid").exists():
            try:
                self._run(self._pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- #
# the benchmark
# --------------------------------------------------------------------------- #
def sweep_cmd(log_dir: Path, study: str, n_trials: int, max_steps: int = 2, *extra: str) -> list[str]:
    """The tiny-model sweep of tests/test_sweep.py (a trial takes a few seconds on a CPU core)."""
    return [sys.executable, str(ROOT / "train.py"), "-m", "+experiment=demo_sst2", "+hparams_search=bits_lr",
            "model=tiny", "logger=none", "callbacks=none", f"trainer.max_steps={max_steps}",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.max_train_samples=32",
            "data.max_eval_samples=32", "data.batch_size=8", f"paths.log_dir={log_dir}",
            f"paths.cache_dir={log_dir.parent / 'cache'}", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.study_name={study}", *extra]


def steady_rate(trials: list) -> float:
    """Trials/min summed over workers: trials after each worker's first, over the time from the end of its
    first trial to the end of its last (0 when no worker ran two trials)."""
    rate = 0.0
    for w in {t.user_attrs.get("lowbit_worker") for t in trials}:
        mine = sorted((t for t in trials if t.user_attrs.get("lowbit_worker") == w), key=lambda t: t.datetime_start)
        if len(mine) >= 2:
            window = (mine[-1].datetime_complete - mine[0].datetime_complete).total_seconds()
            rate += (len(mine) - 1) / window * 60 if window > 0 else 0.0
    return rate


def run_setting(storage: str, workers: int, n_trials: int, max_steps: int, pg: TempPostgres | None,
                threads: int = 1) -> dict:
    import optuna

    study = f"bench_{storage}_{workers}w_{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-sweep-") as d:
        log_dir = Path(d) / "logs"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        extra = []
        if storage == "postgresql":
            assert pg is not None
            env["LOWBIT_OPTUNA_STORAGE"] = pg.url
            extra.append("hydra.sweeper.storage=env:LOWBIT_OPTUNA_STORAGE")
            url = pg.url
        else:
            url = f"sqlite:///{log_dir / 'sweeps' / study / 'optuna.db'}"
        cmd = sweep_cmd(log_dir, study, n_trials, max_steps, *extra)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(workers)]
        outs = [p.communicate(timeout=1800)[0] for p in procs]
        wall = time.perf_counter() - t0
        for p, out in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"{storage}/{workers} worker(s): a worker failed (rc={p.returncode}):\n{out[-3000:]}")
        trials = optuna.load_study(study_name=study, storage=url).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    start = min(t.datetime_start for t in complete)
    end = max(t.datetime_complete for t in complete)
    span = (end - start).total_seconds()
    return {"storage": storage, "workers": workers, "n_trials": n_trials, "complete": len(complete),
            "other_trials": len(trials) - len(complete),
            "trials_per_worker": sorted({w: sum(t.user_attrs.get("lowbit_worker") == w for t in complete)
                                         for w in {t.user_attrs.get("lowbit_worker") for t in complete}}.values()),
            "span_s": round(span, 2), "wall_s": round(wall, 2),
            "trials_per_min": round(steady_rate(complete), 2),
            "trials_per_min_span": round(len(complete) / span * 60, 2),
            "trials_per_min_wall": round(len(complete) / wall * 60, 2)}


def run(n_trials: int = 16, max_steps: int = 2, storages: tuple[str, ...] = ("sqlite", "postgresql"),
        threads: int = 1) -> dict:
    settings = []
    skipped = {}
    pg = None
    if "postgresql" in storages:
        try:
            pg = TempPostgres().start()
        except PostgresUnavailable as e:
            skipped["postgresql"] = str(e)
    load_before = os.getloadavg()
    try:
        for storage in storages:
            if storage in skipped:
                continue
            for workers in (1, 2):
                settings.append(run_setting(storage, workers, n_trials, max_steps, pg, threads))
                print(json.dumps(settings[-1]), flush=True)
    finally:
        if pg is not None:
            pg.stop()
    ratios = {}
    for storage in storages:
        by = {s["workers"]: s for s in settings if s["storage"] == storage}
        if 1 in by and 2 in by:
            ratios[storage] = {f"ratio_2w_1w{k[len('trials_per_min'):]}": round(by[2][k] / by[1][k], 3)
                               for k in ("trials_per_min", "trials_per_min_span", "trials_per_min_wall")}
    return {"benchmark": "sweep_throughput", "model": "tiny (random init, 2 layers, hidden 32)",
            "trial": f"+experiment=demo_sst2 +hparams_search=bits_lr model=tiny, trainer.max_steps={max_steps}, "
                     f"32 train / 32 eval samples, batch 8, CPU, {threads or 'default'} thread(s) per worker",
            "settings": settings, "ratios": ratios, "goal_ratio": 1.6, "skipped": skipped,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]}}


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench sweep_throughput``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results/sweep_throughput.json")
    p.add_argument("--n-trials", type=int, default=16, help="COMPLETE trials per setting")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per worker (0: library default)")
    p.add_argument("--max-steps", type=int, default=2, help="training steps per trial")
    p.add_argument("--storage", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    result = run(a.n_trials, a.max_steps, tuple(a.storage), a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result
