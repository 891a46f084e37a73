"""Structured config for the ``lowbit_optuna`` sweeper (group ``hydra/sweeper``)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


def _default_sampler() -> dict[str, Any]:
    return {"_target_": "optuna.samplers.TPESampler", "seed": 123}


@dataclass
class LowbitOptunaSweeperConf:
    _target_: str = "hydra_plugins.lowbit_optuna_sweeper.sweeper.LowbitOptunaSweeper"

    # Optuna sampler, instantiated from a ``_target_`` config. Any sampler whose
    # constructor needs nothing but keyword arguments works (TPESampler,
    # RandomSampler, NSGAIISampler, CmaEsSampler, ...). Note that dicts are
    # *merged* into this default, so ``seed`` is kept unless you set/delete it.
    sampler: Any = field(default_factory=_default_sampler)

    # "minimize" | "maximize", or a list of them for multi-objective studies.
    direction: Any = "minimize"

    study_name: str = "lowbit"

    # None -> sqlite:///<hydra.sweep.dir>/optuna.db. Any SQLAlchemy URL (postgresql://user@host/db needs
    # `pip install 'lowbit[postgres]'`), journal:///path/to/study.log (Optuna journal file, no database),
    # or env:VAR to read the URL from $VAR. Passwords: use ${oc.env:LOWBIT_OPTUNA_STORAGE} or
    # env:LOWBIT_OPTUNA_STORAGE, so the URL is never written to .hydra/ or multirun.yaml.
    storage: str | None = None

    # Total number of COMPLETE trials wanted in the study (across resumes).
    n_trials: int = 20

    # Trials asked and launched per batch (parallelism is up to the launcher).
    n_jobs: int = 1

    # Abort after this many failed trials in one invocation. None -> n_trials.
    max_failures: int | None = None

    # Search space: {config.key: "interval(0,1)" | "choice(a,b)" | ... | fixed}
    params: dict[str, Any] | None = None

    # Dotted path to ``fn(cfg: DictConfig, trial: optuna.Trial) -> None`` that
    # suggests extra (e.g. conditional) parameters.
    custom_search_space: str | None = None

    # Several workers (sweeper processes) may run one study: each RUNNING trial records a heartbeat every
    # heartbeat_interval seconds; a trial without one for grace_period seconds (its worker was killed) is
    # marked FAIL and its params re-queued up to max_retry times. null heartbeat_interval = single-worker
    # mode: RUNNING trials found at start are treated as interrupted at once.
    heartbeat_interval: int | None = 10
    grace_period: int | None = 60
    max_retry: int = 1

    # Refuse to run a study that was created for another task config (the composed config minus the
    # search space, hydra.*, paths.*, logger.*, callbacks.* and other keys that do not change results).
    check_config: bool = True
    # More config keys (prefixes) to leave out of that comparison, e.g. [trainer.devices].
    fingerprint_exclude: list[str] = field(default_factory=list)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="lowbit_optuna",
    node=LowbitOptunaSweeperConf,
    provider="lowbit_optuna_sweeper",
)
