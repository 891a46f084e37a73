"""Implementation of the ``lowbit_optuna`` Hydra sweeper (Optuna >= 4).

Not scanned by Hydra's plugin loader (leading underscore), so importing optuna
here costs nothing for runs that do not sweep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import Trial, TrialState

log = logging.getLogger(__name__)

# Trial user attributes written by this sweeper.
OVERRIDES_ATTR = "lowbit_overrides"
INTERRUPTED_ATTR = "lowbit_interrupted"
REQUEUED_FROM_ATTR = "lowbit_requeued_from"
ERROR_ATTR = "lowbit_error"
OUTPUT_DIR_ATTR = "lowbit_output_dir"

RESULTS_FILE = "optimization_results.yaml"
_DIRECTIONS = ("minimize", "maximize")
_KNOWN_TAGS = {"log"}


class SweeperConfigError(CompactHydraException, ValueError):
    """Invalid ``hydra.sweeper`` option (Hydra prints only the message)."""


class SweepAbortedError(CompactHydraException, RuntimeError):
    """Too many failed trials in one invocation."""


# --------------------------------------------------------------------------- #
# params grammar -> optuna distributions
# --------------------------------------------------------------------------- #
def _choices(override: Override) -> list[Any]:
    choices: list[Any] = []
    for x in override.sweep_iterator(transformer=Transformer.encode):
        if not isinstance(x, (str, int, float, bool, type(None))):
            raise TypeError(f"choice values must be str/int/float/bool/null, got {type(x).__name__}")
        choices.append(x)
    if not choices:
        raise ValueError("empty choice/range")
    return choices


def distribution_from_override(override: Override) -> Any:
    """Return an optuna distribution for a sweep override, or the fixed value as a string.

    - ``choice(a,b,..)`` / ``a,b,..`` / ``shuffle(...)`` / ``glob(..)`` -> CategoricalDistribution
    - ``range(a,b[,s])`` of ints -> IntDistribution over exactly Hydra's range values
      (stop excluded, like Python/Hydra); float or shuffled range -> CategoricalDistribution
    - ``interval(a,b)`` -> FloatDistribution; ``int(interval(a,b))`` -> IntDistribution
    - ``tag(log, <interval or int range with step 1>)`` -> log=True
    - anything else -> fixed value (string, passed through as ``key=value``)
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()

    value = override.value()
    tags = set(getattr(value, "tags", None) or ())
    unknown = tags - _KNOWN_TAGS
    if unknown:
        log.warning(f"{override.get_key_element()}: ignoring unknown tag(s) {sorted(unknown)}")
    use_log = "log" in tags

    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        if use_log:
            log.warning(f"{override.get_key_element()}: 'log' tag is ignored for choice()")
        return CategoricalDistribution(_choices(override))

    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = _choices(override)
        all_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, value.step))
        if value.shuffle or not all_int:
            if use_log:
                log.warning(f"{override.get_key_element()}: 'log' tag is ignored for a float/shuffled range()")
            return CategoricalDistribution(values)
        step = abs(int(value.step))
        low, high = min(values), max(values)
        if use_log and step != 1:
            log.warning(f"{override.get_key_element()}: 'log' tag is ignored for range() with step != 1")
            use_log = False
        return IntDistribution(low=low, high=high, step=1 if use_log else step, log=use_log)

    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        start, end = value.start, value.end
        if start is None or end is None:
            raise ValueError("interval() needs both bounds")
        if start > end:
            raise ValueError(f"interval lower bound {start} > upper bound {end}")
        if isinstance(start, int) and isinstance(end, int):
            return IntDistribution(low=start, high=end, log=use_log)
        return FloatDistribution(low=float(start), high=float(end), log=use_log)

    raise ValueError(f"unsupported sweep type {type(value).__name__}")


def _config_value_to_str(value: Any) -> str:
    """Render a value from ``hydra.sweeper.params`` as the right-hand side of an override."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        return value
    return Override._get_value_element_as_str(value)


def create_params_from_overrides(
    arguments: Sequence[tuple[str, str]],
    config_loader: Any = None,
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Parse ``(origin, "key=value")`` pairs into (search space, fixed params).

    ``origin`` names where the override came from (used in error messages).
    Later entries win over earlier ones for the same key.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for origin, line in arguments:
        try:
            (override,) = parser.parse_overrides([line])
            key = override.get_key_element()
            value = distribution_from_override(override)
        except Exception as e:
            msg = " ".join(str(e).split())
            raise SweeperConfigError(f"{origin}: cannot use '{line}' as a search-space entry: {msg}") from e
        distributions.pop(key, None)
        fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            distributions[key] = value
        else:
            fixed[key] = value
    return distributions, fixed


def format_override_value(value: Any) -> str:
    """Render a sampled param value so that Hydra parses it back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    if len(msg) > 500:
        msg = msg[:497] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _normalize_directions(direction: Any) -> list[str]:
    if isinstance(direction, (ListConfig, list, tuple)):
        raw = list(direction)
    else:
        raw = [direction]
    if not raw:
        raise SweeperConfigError("hydra.sweeper.direction: must not be empty (use 'minimize' or 'maximize')")
    out = []
    for d in raw:
        name = getattr(d, "name", d)  # accept optuna.study.StudyDirection / enums
        if not isinstance(name, str) or name.lower() not in _DIRECTIONS:
            raise SweeperConfigError(
                f"hydra.sweeper.direction: unknown direction {d!r} (expected 'minimize' or 'maximize', "
                "or a list of them)"
            )
        out.append(name.lower())
    return out


def _values_from_return(value: Any, n_objectives: int) -> list[float]:
    """Convert a job's return value to a list of finite floats, or raise ValueError."""
    if value is None:
        raise ValueError("job returned None; the task function must return the objective value(s)")
    if isinstance(value, (str, bytes, Mapping)):
        raise TypeError(f"job returned a {type(value).__name__}; expected a float or a list of floats")
    if isinstance(value, (ListConfig, list, tuple)) or (
        hasattr(value, "__len__") and hasattr(value, "__iter__") and getattr(value, "ndim", 1) != 0
    ):
        items = list(value)
    else:
        items = [value]
    if len(items) != n_objectives:
        raise ValueError(
            f"job returned {len(items)} value(s) but hydra.sweeper.direction has {n_objectives} objective(s)"
        )
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError) as e:
        raise ValueError(f"job return value {value!r} is not float-castable ({e})") from e
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"job returned non-finite value(s) {values}")
    return values


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for logging
        return url


# --------------------------------------------------------------------------- #
# the sweeper
# --------------------------------------------------------------------------- #
class LowbitOptunaSweeperImpl:
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        max_failures: int | None,
        params: Any | None,
        custom_search_space: str | None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failures = max_failures
        self.params = params
        self.custom_search_space = custom_search_space
        self.custom_search_space_extender: Callable[[DictConfig, Trial], None] | None = None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.directions: list[str] = []
        self.job_idx = 0

    # -- validation --------------------------------------------------------- #
    def _validate(self) -> None:
        self.directions = _normalize_directions(self.direction)
        for name in ("n_trials", "n_jobs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SweeperConfigError(f"hydra.sweeper.{name}: must be an integer >= 1, got {v!r}")
        if self.max_failures is None:
            self.max_failures = self.n_trials
        elif isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 1:
            raise SweeperConfigError(
                f"hydra.sweeper.max_failures: must be an integer >= 1 or null, got {self.max_failures!r}"
            )
        if not self.study_name or not isinstance(self.study_name, str):
            raise SweeperConfigError(f"hydra.sweeper.study_name: must be a non-empty string, got {self.study_name!r}")
        if self.params is not None and not isinstance(self.params, (DictConfig, Mapping)):
            raise SweeperConfigError(
                f"hydra.sweeper.params: must be a mapping of config key -> expression, got {type(self.params).__name__}"
            )
        if self.custom_search_space:
            try:
                self.custom_search_space_extender = get_method(self.custom_search_space)
            except Exception as e:
                raise SweeperConfigError(
                    f"hydra.sweeper.custom_search_space: cannot import {self.custom_search_space!r}: {_one_line(e)}"
                ) from e
        if not (self.sampler is None or isinstance(self.sampler, (BaseSampler, DictConfig, Mapping))):
            raise SweeperConfigError(
                f"hydra.sweeper.sampler: expected a _target_ config for an optuna sampler, got "
                f"{type(self.sampler).__name__}"
            )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self._validate()
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- sampler ------------------------------------------------------------ #
    def _sampler_config(self) -> DictConfig | None:
        if isinstance(self.sampler, (DictConfig, Mapping)):
            return OmegaConf.create(dict(self.sampler)) if isinstance(self.sampler, Mapping) else self.sampler
        assert self.config is not None
        node = OmegaConf.select(self.config, "hydra.sweeper.sampler", default=None)
        return node if isinstance(node, DictConfig) else None

    def _build_sampler(self, n_existing_trials: int) -> BaseSampler:
        """Instantiate the sampler. When resuming a study with a seeded sampler, derive a new
        deterministic seed from the number of existing trials so the sampler does not replay
        the parameter sequence of the first invocation (which would duplicate finished trials)."""
        cfg = self._sampler_config()
        kwargs: dict[str, Any] = {}
        if cfg is not None and n_existing_trials > 0 and cfg.get("seed", None) is not None:
            kwargs["seed"] = (int(cfg.seed) + 7919 * n_existing_trials) % (2**32)
        if isinstance(self.sampler, BaseSampler) and not kwargs:
            return self.sampler
        if cfg is None or "_target_" not in cfg:
            if isinstance(self.sampler, BaseSampler):
                self.sampler.reseed_rng()
                return self.sampler
            if self.sampler is None:
                return optuna.samplers.TPESampler(seed=kwargs.get("seed", None))
            raise SweeperConfigError("hydra.sweeper.sampler: missing _target_ (e.g. optuna.samplers.TPESampler)")
        try:
            sampler = instantiate(cfg, **kwargs)
        except Exception as e:
            raise SweeperConfigError(
                f"hydra.sweeper.sampler: cannot instantiate {cfg.get('_target_')}: {_one_line(e)}"
            ) from e
        if not isinstance(sampler, BaseSampler):
            raise SweeperConfigError(
                f"hydra.sweeper.sampler: {cfg.get('_target_')} is not an optuna sampler (got {type(sampler).__name__})"
            )
        return sampler

    # -- storage / study ---------------------------------------------------- #
    def _storage_url(self) -> str:
        if self.storage:
            return str(self.storage)
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{sweep_dir / 'optuna.db'}"

    def _open_study(self, url: str) -> optuna.Study:
        if url.startswith("sqlite:///"):
            db_path = url[len("sqlite:///") :].split("?", 1)[0]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            storage = optuna.storages.RDBStorage(url)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                sampler=optuna.samplers.RandomSampler(),  # replaced below
                directions=self.directions,
                load_if_exists=True,
            )
        except Exception as e:
            raise SweeperConfigError(
                f"hydra.sweeper.storage: cannot open study in {_safe_url(url)!r}: {_one_line(e)}"
            ) from e
        existing = [d.name.lower() for d in study.directions]
        if existing != self.directions:
            raise SweeperConfigError(
                f"hydra.sweeper.direction: {self.directions} does not match the existing study "
                f"{self.study_name!r} in {_safe_url(url)!r}, which has directions {existing}"
            )
        return study

    @staticmethod
    def _recover_interrupted(study: optuna.Study) -> int:
        """Mark RUNNING trials left by a killed invocation as FAIL and re-enqueue their params.

        WAITING trials are already queued (``study.ask`` pops them first), so they are left alone.
        Assumes a single sweeper process per study.
        """
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage = study._storage  # no public API to annotate a trial of another process
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
            study.tell(t.number, state=TrialState.FAIL)
            params = dict(t.params) or dict(t.system_attrs.get("fixed_params", {}) or {})
            study.enqueue_trial(params, user_attrs={REQUEUED_FROM_ATTR: t.number})
            log.warning(f"Trial {t.number} was interrupted (state RUNNING); marked FAIL, re-enqueued params {params}")
            n += 1
        return n

    # -- trials ------------------------------------------------------------- #
    def _configure_trial(
        self,
        trial: Trial,
        fixed_params: dict[str, str],
    ) -> tuple[str, ...]:
        if self.custom_search_space_extender is not None:
            assert self.config is not None
            self.custom_search_space_extender(self.config, trial)
        overlap = set(trial.params) & set(fixed_params)
        if overlap:
            raise SweeperConfigError(
                f"hydra.sweeper.custom_search_space: suggests parameters that are also fixed: {sorted(overlap)}"
            )
        overrides = [f"{name}={format_override_value(val)}" for name, val in trial.params.items()]
        overrides += [f"{name}={val}" for name, val in fixed_params.items()]
        trial.set_user_attr(OVERRIDES_ATTR, overrides)
        return tuple(overrides)

    def _job_result(self, ret: JobReturn) -> tuple[list[float] | None, BaseException | None]:
        if ret.status == JobStatus.FAILED:
            # JobReturn.return_value would re-raise (and print to stderr); read the stored exception.
            exc = getattr(ret, "_return_value", None)
            if not isinstance(exc, BaseException):
                exc = RuntimeError("job failed")
            return None, exc
        try:
            return _values_from_return(ret.return_value, len(self.directions)), None
        except Exception as e:  # noqa: BLE001 - any bad return value fails the trial, not the sweep
            return None, e

    # -- main loop ---------------------------------------------------------- #
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        assert self.max_failures is not None

        # 1. Parse the search space before touching storage.
        entries: list[tuple[str, str]] = []
        for k, v in (self.params or {}).items():
            entries.append((f"hydra.sweeper.params.{k}", f"{k!s}={_config_value_to_str(v)}"))
        entries += [("command-line override", a) for a in arguments]
        distributions, fixed_params = create_params_from_overrides(
            entries, config_loader=getattr(self.hydra_context, "config_loader", None)
        )

        # 2. Open / resume the study.
        url = self._storage_url()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self._open_study(url)
        n_prior = len(study.get_trials(deepcopy=False))
        n_recovered = self._recover_interrupted(study)
        study.sampler = self._build_sampler(n_prior)

        def count(state: TrialState) -> int:
            return len(study.get_trials(deepcopy=False, states=(state,)))

        n_complete = count(TrialState.COMPLETE)
        log.info(f"Study: {study.study_name} | storage: {_safe_url(url)}")
        log.info(f"Sampler: {type(study.sampler).__name__} | directions: {self.directions}")
        log.info(f"Search space: {distributions}" + (f" | fixed: {fixed_params}" if fixed_params else ""))
        log.info(
            f"{n_complete}/{self.n_trials} COMPLETE trials in storage"
            + (f"; {n_recovered} interrupted trial(s) re-enqueued" if n_recovered else "")
        )

        self.job_idx = len(study.get_trials(deepcopy=False))
        failures = 0
        last_error = ""
        exhausted = False
        while n_complete < self.n_trials and not exhausted:
            batch = min(self.n_jobs, self.n_trials - n_complete)
            trials = [study.ask(fixed_distributions=distributions) for _ in range(batch)]
            try:
                overrides = [self._configure_trial(t, fixed_params) for t in trials]
            except BaseException:
                for t in trials:
                    study.tell(t, state=TrialState.FAIL)
                raise

            # Use the optuna trial number as hydra.job.num (job sub-dir) when possible, so
            # resumed sweeps never overwrite the output dirs of earlier trials.
            numbers = [t.number for t in trials]
            consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            first_idx = numbers[0] if consecutive else self.job_idx
            returns = self.launcher.launch(overrides, initial_job_idx=first_idx)
            self.job_idx = max(self.job_idx, first_idx + len(returns), max(numbers) + 1)

            for trial, ret in zip(trials, returns):
                values, error = self._job_result(ret)
                out_dir = None
                if isinstance(ret.hydra_cfg, DictConfig):
                    out_dir = OmegaConf.select(
                        ret.hydra_cfg, "hydra.runtime.output_dir", default=None, throw_on_resolution_failure=False
                    )
                if out_dir:
                    trial.set_user_attr(OUTPUT_DIR_ATTR, str(out_dir))
                try:
                    if error is None:
                        n_complete += 1
                        shown = values[0] if len(values) == 1 else values
                        log.info(f"Trial {trial.number} finished: {shown} ({n_complete}/{self.n_trials} COMPLETE)")
                        study.tell(trial, values=values, state=TrialState.COMPLETE)
                    else:
                        failures += 1
                        last_error = _one_line(error)
                        trial.set_user_attr(ERROR_ATTR, last_error)
                        log.warning(f"Trial {trial.number} failed ({' '.join(ret.overrides)}): {last_error}")
                        log.debug("Trial %d traceback", trial.number, exc_info=error)
                        study.tell(trial, state=TrialState.FAIL)
                except RuntimeError as e:
                    # Grid/BruteForce samplers call study.stop() once the space is exhausted;
                    # outside study.optimize that raises (after the trial has been stored).
                    if "Study.stop" not in str(e):
                        raise
                    exhausted = True
            if exhausted:
                log.info("Sampler reports the search space is exhausted; stopping.")
            if failures >= self.max_failures and n_complete < self.n_trials:
                self._report(study)
                raise SweepAbortedError(
                    f"lowbit_optuna: aborting sweep after {failures} failed trial(s) in this invocation "
                    f"(hydra.sweeper.max_failures={self.max_failures}); {n_complete}/{self.n_trials} COMPLETE. "
                    f"Last error: {last_error}"
                )

        self._report(study)

    # -- results ------------------------------------------------------------ #
    def _report(self, study: optuna.Study) -> None:
        assert self.config is not None
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        n_failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if not complete:
            log.warning("No COMPLETE trials; not writing optimization results.")
            return
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
        if len(self.directions) == 1:
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_params=best.params,
                best_value=best.value,
                best_overrides=best.user_attrs.get(OVERRIDES_ATTR),
            )
            log.info(f"Best trial {best.number}: value={best.value} params={best.params}")
        else:
            pareto = study.best_trials
            results["solutions"] = [
                {
                    "trial": t.number,
                    "params": t.params,
                    "values": t.values,
                    "overrides": t.user_attrs.get(OVERRIDES_ATTR),
                }
                for t in pareto
            ]
            log.info(f"Pareto front: {len(pareto)} solution(s)")
            for t in pareto:
                log.info(f"    trial {t.number}: values={t.values} params={t.params}")
        results.update(n_complete=len(complete), n_failed=n_failed, directions=self.directions)
        out = Path(str(self.config.hydra.sweep.dir)) / RESULTS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out)
        log.info(f"Wrote {out}")
