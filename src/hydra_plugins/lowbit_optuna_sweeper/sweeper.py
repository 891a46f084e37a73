"""Hydra ``Sweeper`` entry point; the implementation lives in ``_impl.py``.

``_impl`` (and therefore optuna) is imported lazily so that Hydra's plugin
scan, which imports this module on every start-up, stays cheap.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LowbitOptunaSweeper(Sweeper):
    """Optuna (>= 4) sweeper: resumable storage (SQLite, PostgreSQL, journal file), several workers per study."""

    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        study_name: str = "lowbit",
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failures: int | None = None,
        params: DictConfig | None = None,
        custom_search_space: str | None = None,
        heartbeat_interval: int | None = 10,
        grace_period: int | None = 60,
        max_retry: int = 1,
        check_config: bool = True,
        fingerprint_exclude: Any = None,
    ) -> None:
        from ._impl import LowbitOptunaSweeperImpl

        self.sweeper = LowbitOptunaSweeperImpl(
            sampler=sampler,
            direction=direction,
            study_name=study_name,
            storage=storage,
            n_trials=n_trials,
            n_jobs=n_jobs,
            max_failures=max_failures,
            params=params,
            custom_search_space=custom_search_space,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
            check_config=check_config,
            fingerprint_exclude=fingerprint_exclude,
        )

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
