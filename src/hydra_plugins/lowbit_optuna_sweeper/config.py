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

    # Any SQLAlchemy URL. None -> sqlite:///<hydra.sweep.dir>/optuna.db
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


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="lowbit_optuna",
    node=LowbitOptunaSweeperConf,
    provider="lowbit_optuna_sweeper",
)
