"""Tests for the lowbit_optuna Hydra sweeper plugin (hydra_plugins.lowbit_optuna_sweeper).

End-to-end tests run tests/sweeper/toy_app.py in a subprocess (``-m``) with ``PYTHONPATH``
including ``src/`` so they work both from a checkout and with the package pip-installed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
TOY_APP = HERE / "toy_app.py"

try:
    from hydra_plugins.lowbit_optuna_sweeper import _impl
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, str(SRC))
    from hydra_plugins.lowbit_optuna_sweeper import _impl

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- #
# grammar
# --------------------------------------------------------------------------- #
def _parse(*lines: str):
    return _impl.create_params_from_overrides([("test", line) for line in lines])


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("interval(0, 1)", FloatDistribution(0.0, 1.0)),
        ("interval(0.5, 2.5)", FloatDistribution(0.5, 2.5)),
        ("int(interval(1, 10))", IntDistribution(1, 10)),
        ("tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("tag(log, int(interval(1, 1024)))", IntDistribution(1, 1024, log=True)),
        ("choice(a, b, c)", CategoricalDistribution(["a", "b", "c"])),
        ("choice(1, 2.5, true)", CategoricalDistribution([1, 2.5, True])),
        ("1,2,3", CategoricalDistribution([1, 2, 3])),
        # range follows Hydra/Python semantics: stop is excluded
        ("range(1, 4)", IntDistribution(1, 3)),
        ("range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("range(5)", IntDistribution(0, 4)),
        ("tag(log, range(1, 9))", IntDistribution(1, 8, log=True)),
        ("range(0.0, 1.0, 0.25)", CategoricalDistribution([0.0, 0.25, 0.5, 0.75])),
    ],
)
def test_grammar_distributions(expr, expected):
    dists, fixed = _parse(f"x={expr}")
    assert fixed == {}
    assert dists == {"x": expected}


def test_grammar_shuffled_range_is_categorical():
    dists, _ = _parse("x=shuffle(range(1, 4))")
    assert isinstance(dists["x"], CategoricalDistribution)
    assert sorted(dists["x"].choices) == [1, 2, 3]


def test_grammar_fixed_values_and_precedence():
    dists, fixed = _parse("x=interval(0, 1)", "y=5", "name=abc", "model.depth=choice(2, 4)", "x=0.25", "+extra=[1,2]")
    assert dists == {"model.depth": CategoricalDistribution([2, 4])}
    assert fixed == {"x": "0.25", "y": "5", "name": "abc", "+extra": "[1,2]"}
    # a later sweep wins over an earlier fixed value too
    dists, fixed = _parse("x=3", "x=interval(0, 1)")
    assert dists == {"x": FloatDistribution(0.0, 1.0)} and fixed == {}


@pytest.mark.parametrize("expr", ["interval(0,", "interval(2, 1)", "tag(log, interval(0, 1))", "choice()"])
def test_grammar_bad_expression_names_the_option(expr):
    with pytest.raises(_impl.SweeperConfigError, match=r"^hydra\.sweeper\.params\.x: "):
        _impl.create_params_from_overrides([("hydra.sweeper.params.x", f"x={expr}")])


def test_format_override_value_round_trips():
    assert _impl.format_override_value(True) == "true"
    assert _impl.format_override_value(None) == "null"
    assert _impl.format_override_value(1e-05) == "1e-05"
    assert _impl.format_override_value(3) == "3"


def test_return_value_validation():
    assert _impl._values_from_return(1.5, 1) == [1.5]
    assert _impl._values_from_return(OmegaConf.create([1, 2.0]), 2) == [1.0, 2.0]
    assert _impl._values_from_return((1, 2), 2) == [1.0, 2.0]
    for bad, n in [(None, 1), (math.nan, 1), ([1.0, math.inf], 2), ([1.0], 2), (1.0, 2), ("x", 1)]:
        with pytest.raises((ValueError, TypeError)):
            _impl._values_from_return(bad, n)
    with pytest.raises(ValueError, match="hydra.sweeper.direction"):
        _impl._values_from_return([1.0, 2.0, 3.0], 2)


def test_direction_validation():
    assert _impl._normalize_directions("Maximize") == ["maximize"]
    assert _impl._normalize_directions(["maximize", "minimize"]) == ["maximize", "minimize"]
    with pytest.raises(_impl.SweeperConfigError, match="hydra.sweeper.direction"):
        _impl._normalize_directions("up")


# --------------------------------------------------------------------------- #
# end-to-end via the toy app
# --------------------------------------------------------------------------- #
def run_toy(tmp_path: Path, *overrides: str, env: dict | None = None, check: bool = True):
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH", "")] if p)
    full_env["TOY_LOG"] = str(tmp_path / "calls.jsonl")
    full_env.pop("TOY_KILL_ON_CALL", None)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    cmd = [sys.executable, str(TOY_APP), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"toy app failed (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    return proc


def calls(tmp_path: Path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="lowbit", storage=url)


def states(study: optuna.Study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_single_objective_sweep_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'custom' / 'study.db'}"
    run_toy(tmp_path, f"hydra.sweeper.storage={url}")
    study = load(url)
    assert states(study) == [TrialState.COMPLETE] * 3
    for t in study.trials:
        assert set(t.params) == {"x", "y", "opt"}
        assert 0.0 <= t.params["x"] <= 1.0 and t.params["y"] in (1, 2, 3, 4)
        assert t.user_attrs["lowbit_overrides"] == [
            f"x={t.params['x']!r}",
            f"y={t.params['y']}",
            f"opt={t.params['opt']}",
        ]
    # hydra.job.num == trial number; the job saw exactly the sampled params
    for t, c in zip(study.trials, [c for c in calls(tmp_path) if c["event"] == "done"]):
        assert c["job_num"] == t.number
        assert (c["x"], c["y"], c["opt"]) == (t.params["x"], t.params["y"], t.params["opt"])
        assert c["value"] == pytest.approx(t.value)
    res = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert res.name == "optuna"
    assert res.best_value == pytest.approx(study.best_value)
    assert OmegaConf.to_container(res.best_params) == study.best_params
    assert not (tmp_path / "sweep" / "optuna.db").exists()  # explicit storage used


def test_multi_objective_sweep(tmp_path):
    run_toy(
        tmp_path,
        "mode=multi",
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler._target_=optuna.samplers.NSGAIISampler",
        "++hydra.sweeper.sampler.population_size=2",
    )
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")  # default storage location
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert all(len(t.values) == 2 for t in complete)
    res = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert res.name == "optuna"
    pareto = {t.number for t in study.best_trials}
    assert {s.trial for s in res.solutions} == pareto and len(pareto) >= 1
    for s in res.solutions:
        assert len(s["values"]) == 2 and set(s.params) == {"x", "y", "opt"}


@pytest.mark.parametrize("switch", ["fail_on_call", "nan_on_call"])
def test_failing_trial_is_fail_and_sweep_completes(tmp_path, switch):
    proc = run_toy(tmp_path, f"{switch}=2")
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    failed = study.trials[1]
    expected = "ValueError: toy failure on call 2" if switch == "fail_on_call" else "non-finite"
    assert expected in failed.user_attrs["lowbit_error"]
    assert "Trial 1 failed" in proc.stdout + proc.stderr
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()


def test_too_many_failures_aborts_with_direction_mismatch_message(tmp_path):
    # single-valued return but two directions -> every trial fails -> abort after max_failures
    proc = run_toy(
        tmp_path,
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.max_failures=2",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hydra.sweeper.max_failures=2" in out
    assert "hydra.sweeper.direction has 2 objective(s)" in out
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    assert states(study) == [TrialState.FAIL, TrialState.FAIL]


def test_interrupt_and_resume(tmp_path):
    # 1st run: the process SIGKILLs itself while running the 2nd trial
    proc = run_toy(tmp_path, env={"TOY_KILL_ON_CALL": "2"}, check=False)
    assert proc.returncode != 0
    first = calls(tmp_path)
    assert [c["event"] for c in first] == ["start", "done", "start"]
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert states(load(url)) == [TrialState.COMPLETE, TrialState.RUNNING]

    # 2nd run: same command, no kill switch. The killed trial has no heartbeat for grace_period (3 s in
    # toy.yaml): it is marked FAIL and its params re-queued; meanwhile the sweep runs a new trial.
    proc = run_toy(tmp_path)
    study = load(url)
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    interrupted = trials[1]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["lowbit_interrupted"] is True
    assert "params re-queued once" in proc.stdout + proc.stderr

    key = lambda c: (c["x"], c["y"], c["opt"])
    starts = [key(c) for c in calls(tmp_path) if c["event"] == "start"]
    done = [key(c) for c in calls(tmp_path) if c["event"] == "done"]
    completed_first, killed = key(first[1]), key(first[2])
    assert starts.count(completed_first) == 1  # the finished trial was not re-run
    assert starts.count(killed) == 2 and done.count(killed) == 1  # the interrupted one was, once
    assert len(starts) == 4 and len(done) == 3
    requeued = [t for t in trials if t.user_attrs.get("lowbit_requeued_from") == 1]
    assert len(requeued) == 1 and requeued[0].state == TrialState.COMPLETE
    assert requeued[0].params == interrupted.params
    assert requeued[0].system_attrs["failed_trial"] == 1  # optuna's retry marker

    # 3rd run: nothing left to do; no job is launched
    run_toy(tmp_path)
    assert len(calls(tmp_path)) == 7
    assert len(load(url).trials) == 4


def test_interrupt_and_resume_single_worker_mode(tmp_path):
    # heartbeat_interval=null: one worker per study, so a RUNNING trial found at start was interrupted
    # and is re-run at once (no grace period)
    off = "hydra.sweeper.heartbeat_interval=null"
    assert run_toy(tmp_path, off, env={"TOY_KILL_ON_CALL": "2"}, check=False).returncode != 0
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert states(load(url)) == [TrialState.COMPLETE, TrialState.RUNNING]
    proc = run_toy(tmp_path, off)
    assert "1 interrupted trial(s) re-enqueued" in proc.stdout + proc.stderr
    trials = load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["lowbit_interrupted"] is True
    assert trials[2].user_attrs["lowbit_requeued_from"] == 1 and trials[2].params == trials[1].params


def test_ctrl_c_fails_and_requeues_the_running_trial_at_once(tmp_path):
    # SIGINT (Ctrl-C) during a trial: the sweeper marks it FAIL + re-queues its params before exiting,
    # so a rerun re-runs it first, without waiting for any heartbeat grace period
    args = ("sleep=4", "hydra.sweeper.n_trials=2", "hydra.sweeper.grace_period=600", "hydra.sweeper.heartbeat_interval=300")
    proc = start_toy(tmp_path, *args)
    deadline = time.time() + 60
    while not calls(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    # the trial logged "start" and is now in its 4 s sleep: Ctrl-C lands inside the trial, not in the
    # logging or Hydra's job set-up around it (a race under CI load)
    time.sleep(1.0)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    trials = load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["lowbit_interrupted"] is True and trials[1].user_attrs["lowbit_requeued_from"] == 0
    t0 = time.time()
    run_toy(tmp_path, *args)
    assert time.time() - t0 < 60
    trials = load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params


def test_command_line_sweep_merged(tmp_path):
    run_toy(tmp_path, "x=choice(0.1,0.2)", "y=3", "hydra.sweeper.n_trials=2")
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    assert states(study) == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert set(t.params) == {"x", "opt"} and t.params["x"] in (0.1, 0.2)
        assert "y=3" in t.user_attrs["lowbit_overrides"]
    assert all(c["y"] == 3 for c in calls(tmp_path))


def test_grid_sampler_resumes_without_repeating(tmp_path):
    # GridSampler's seed shuffles its grid: it keeps one seed (no per-trial reseeding), also on resume
    grid = ["hydra.sweeper.params=null", "y=choice(1,2)", "opt=choice(sgd,adam)",
            "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
            "+hydra.sweeper.sampler.search_space={y:[1,2],opt:[sgd,adam]}"]
    run_toy(tmp_path, *grid, "hydra.sweeper.n_trials=2")
    proc = run_toy(tmp_path, *grid, "hydra.sweeper.n_trials=10")
    assert "search space is exhausted" in proc.stdout + proc.stderr
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    assert states(study) == [TrialState.COMPLETE] * 4
    assert sorted((t.params["y"], t.params["opt"]) for t in study.trials) == [
        (1, "adam"), (1, "sgd"), (2, "adam"), (2, "sgd")]


def test_custom_search_space(tmp_path):
    run_toy(tmp_path, "hydra.sweeper.custom_search_space=toy_app.extra_space", "hydra.sweeper.n_trials=4")
    study = load(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    done = [c for c in calls(tmp_path) if c["event"] == "done"]
    assert len(done) == 4
    for t, c in zip(study.trials, done):
        assert t.params["+z"] in (10, 11, 12) and c["z"] == t.params["+z"]
        assert ("+beta" in t.params) == (t.params["opt"] == "adam") == ("beta" in c)


@pytest.mark.parametrize(
    "override, option",
    [
        ("hydra.sweeper.direction=upward", "hydra.sweeper.direction"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials"),
        ("hydra.sweeper.params.x='interval(0,'", "hydra.sweeper.params.x"),
        ("hydra.sweeper.grace_period=1", "hydra.sweeper.grace_period"),
        ("hydra.sweeper.max_retry=-1", "hydra.sweeper.max_retry"),
        ("hydra.sweeper.storage=env:LOWBIT_TEST_UNSET_STORAGE", "hydra.sweeper.storage"),
        ("hydra.sweeper.storage=journal:///", "hydra.sweeper.storage"),
    ],
)
def test_bad_config_fails_fast(tmp_path, override, option):
    proc = run_toy(tmp_path, override, check=False, env={"LOWBIT_TEST_UNSET_STORAGE": ""})
    assert proc.returncode != 0
    first_line = proc.stderr.strip().splitlines()[0]
    assert first_line.startswith(f"{option}:"), proc.stderr
    assert calls(tmp_path) == []
    assert not (tmp_path / "sweep" / "optuna.db").exists()


# --------------------------------------------------------------------------- #
# storage URLs
# --------------------------------------------------------------------------- #
def test_storage_from_environment_variable(tmp_path):
    url = f"sqlite:///{tmp_path / 'env' / 'study.db'}"
    run_toy(tmp_path, "hydra.sweeper.storage=env:TOY_STORAGE", "hydra.sweeper.n_trials=2", env={"TOY_STORAGE": url})
    assert states(load(url)) == [TrialState.COMPLETE] * 2
    run_toy(tmp_path, "hydra.sweeper.storage='${oc.env:TOY_STORAGE}'", "hydra.sweeper.n_trials=3",
            env={"TOY_STORAGE": url})
    assert states(load(url)) == [TrialState.COMPLETE] * 3
    assert not (tmp_path / "sweep" / "optuna.db").exists()
    assert url not in (tmp_path / "sweep" / "multirun.yaml").read_text()  # the reference is kept, not the URL


def test_safe_url_and_password_helpers():
    url = "postgresql://lowbit:s3cr%40t@127.0.0.1:5432/db"
    assert _impl._url_password(url) == "s3cr@t"
    assert _impl._safe_url(url) == "postgresql://lowbit:***@127.0.0.1:5432/db"
    assert _impl._url_password("sqlite:////tmp/x.db") is None
    assert _impl._url_password("journal:///tmp/x.log") is None
    assert _impl.journal_path("journal:///tmp/a/b.log") == Path("/tmp/a/b.log")
    assert _impl.journal_path("journal://rel/b.log") == Path.cwd() / "rel" / "b.log"


# --------------------------------------------------------------------------- #
# config fingerprint
# --------------------------------------------------------------------------- #
def test_config_fingerprint_leaves_out_search_space_and_infrastructure():
    cfg = OmegaConf.create({
        "model": {"name": "tiny-bert", "config": {"hidden_size": 32}},
        "optim": {"lr": 1e-4, "optimizer": {"lr": "${..lr}"}},
        "bits": [2, 4],
        "paths": {"log_dir": "/a"}, "logger": {"wandb": {"project": "x"}}, "callbacks": {"cb": 1},
        "trainer": {"max_steps": 2, "enable_progress_bar": True, "accelerator": "cpu"},
        "hydra": {"sweeper": {"storage": "postgresql://u:pw@h/db"}},
    })
    fp = _impl.config_fingerprint(cfg, varied=["optim.lr", "+new_key", "bits.1"], fixed={"seed": "7"})
    assert fp == {"model.name": "tiny-bert", "model.config.hidden_size": 32, "optim.optimizer.lr": "${..lr}",
                  "bits.0": 2, "trainer.max_steps": 2, "seed": "7"}
    other = _impl.config_fingerprint(
        OmegaConf.merge(cfg, {"model": {"name": "mini"}, "paths": {"log_dir": "/b"}, "trainer": {"accelerator": "gpu"}}),
        varied=["optim.lr", "bits.1"], fixed={"seed": "7"})
    assert _impl.config_diff(fp, other) == ["model.name='tiny-bert' (stored) vs 'mini' (now)"]
    assert _impl.config_fingerprint(cfg, exclude=["model"]).keys().isdisjoint({"model.name"})


def test_rerun_with_another_config_is_refused(tmp_path):
    run_toy(tmp_path, "hydra.sweeper.n_trials=2")
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    assert load(url).user_attrs["lowbit_config"]["model_name"] == "tiny"
    proc = run_toy(tmp_path, "hydra.sweeper.n_trials=3", "model_name=other", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == (
        f"hydra.sweeper: study 'lowbit' in {url} was created for a different config: "
        "model_name='tiny' (stored) vs 'other' (now); use another hydra.sweeper.study_name or the same config"
    ), proc.stderr
    assert len(calls(tmp_path)) == 4  # 2 trials x (start, done): nothing ran
    # what the sweep varies, sweeper settings and infrastructure keys are not part of the config
    run_toy(tmp_path, "hydra.sweeper.n_trials=3", "x=interval(0.1,0.2)", "hydra.sweeper.sampler.seed=5",
            "hydra.sweeper.max_failures=4", "hydra.job.chdir=true")
    assert states(load(url)) == [TrialState.COMPLETE] * 3
    # escape hatches: leave a key out of the comparison, or switch the check off
    run_toy(tmp_path, "hydra.sweeper.n_trials=4", "model_name=other", "hydra.sweeper.fingerprint_exclude=[model_name]")
    run_toy(tmp_path, "hydra.sweeper.n_trials=5", "model_name=other", "hydra.sweeper.check_config=false")
    assert states(load(url)) == [TrialState.COMPLETE] * 5


# --------------------------------------------------------------------------- #
# several workers on one study
# --------------------------------------------------------------------------- #
def start_toy(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH", "")] if p)
    full_env["TOY_LOG"] = str(tmp_path / "calls.jsonl")
    full_env.pop("TOY_KILL_ON_CALL", None)
    full_env.update(env or {})
    cmd = [sys.executable, str(TOY_APP), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    # a shell starts background jobs with SIGINT ignored, and children inherit it (a CI run under `nohup ... &`):
    # restore the default so Python installs its KeyboardInterrupt handler and the Ctrl-C test means something
    return subprocess.Popen(cmd, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_all(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.communicate()[0]) for p in procs]


def test_two_workers_share_one_study_sqlite(tmp_path):
    # (two workers on a journal file: test_killed_worker_trial_is_retried_by_the_other_journal)
    url = f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    args = ["hydra.sweeper.n_trials=6", "sleep=0.7", f"hydra.sweeper.storage={url}"]
    results = wait_all([start_toy(tmp_path, *args) for _ in range(2)])
    for rc, out in results:
        assert rc == 0 and "Traceback" not in out, out
    study = load(url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    assert [t for t in study.trials if t.state != TrialState.COMPLETE and not t.user_attrs.get("lowbit_surplus")] == []
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6  # workers sample different params
    assert len({t.user_attrs["lowbit_worker"] for t in complete}) == 2  # both did work
    done = [c for c in calls(tmp_path) if c["event"] == "done"]
    assert len(done) == 6 and len({c["job_num"] for c in done}) == 6


def test_killed_worker_trial_is_retried_by_the_other_journal(tmp_path):
    # two workers on a journal file; whichever starts the 2nd call is SIGKILLed there. The survivor
    # fails the dead trial after grace_period (3 s), re-runs its params once and finishes the study.
    url = f"journal:///{tmp_path / 'study.log'}"
    args = ["hydra.sweeper.n_trials=4", "sleep=0.5", f"hydra.sweeper.storage={url}"]
    results = wait_all([start_toy(tmp_path, *args, env={"TOY_KILL_ON_CALL": "2"}) for _ in range(2)])
    assert sorted(rc != 0 for rc, _ in results) == [False, True], results
    survivor = next(out for rc, out in results if rc == 0)
    assert "Traceback" not in survivor, survivor
    study = load(_impl.LowbitOptunaSweeperImpl._make_storage(_bare_impl(), url))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    failed = [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("lowbit_surplus")]
    assert len(failed) == 1 and failed[0].user_attrs["lowbit_interrupted"] is True
    retries = [t for t in study.trials if t.user_attrs.get("lowbit_requeued_from") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == failed[0].params
    assert [t.state for t in study.trials].count(TrialState.RUNNING) == 0


def _bare_impl():
    return _impl.LowbitOptunaSweeperImpl(
        sampler=None, direction="minimize", study_name="lowbit", storage=None, n_trials=1, n_jobs=1,
        max_failures=None, params=None, custom_search_space=None, heartbeat_interval=None,
    )
