"""Implementation of the ``lowbit_optuna`` Hydra sweeper (Optuna >= 4).

Not scanned by Hydra's plugin loader (leading underscore), so importing optuna
here costs nothing for runs that do not sweep.

Several sweeper processes ("workers") may run the same study at once (PostgreSQL/MySQL, SQLite on a
local disk, or a journal file): a worker re-counts the study before it asks a trial and asks one only
while ``COMPLETE + RUNNING < n_trials``; its trials carry a heartbeat, and a trial whose worker died is
failed after ``grace_period`` seconds without heartbeat and retried (``max_retry`` times).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
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
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)

# Trial user attributes written by this sweeper.
OVERRIDES_ATTR = "lowbit_overrides"
INTERRUPTED_ATTR = "lowbit_interrupted"
REQUEUED_FROM_ATTR = "lowbit_requeued_from"
ERROR_ATTR = "lowbit_error"
OUTPUT_DIR_ATTR = "lowbit_output_dir"
WORKER_ATTR = "lowbit_worker"  # "<host>:<pid>" of the sweeper process that runs the trial
SURPLUS_ATTR = "lowbit_surplus"  # FAIL trial given back because another worker filled the last slot
# Trial system attribute (journal storage only): time.time() of the worker's last heartbeat.
HEARTBEAT_ATTR = "lowbit_heartbeat"
# Study user attributes: the task config the trials run (flattened) and its sha256.
CONFIG_ATTR = "lowbit_config"
CONFIG_HASH_ATTR = "lowbit_config_sha256"

RESULTS_FILE = "optimization_results.yaml"
ENV_PREFIX = "env:"
JOURNAL_PREFIX = "journal://"
_DIRECTIONS = ("minimize", "maximize")
_KNOWN_TAGS = {"log"}

# Config keys that do not change what a trial computes (infrastructure, logging, output paths): left out
# of the study's config fingerprint. Prefixes match a key and everything below it.
FINGERPRINT_EXCLUDE = (
    "hydra",
    "paths",
    "logger",
    "callbacks",
    "tags",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "trainer.accelerator",
    "data.num_workers",
    "data.local_dir",
    "data.cache_dir",
)


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



# --------------------------------------------------------------------------- #
# storage URLs and secrets
# --------------------------------------------------------------------------- #
def resolve_storage_url(storage: str) -> str:
    """``env:VAR`` -> the value of $VAR; anything else unchanged."""
    if not storage.startswith(ENV_PREFIX):
        return storage
    var = storage[len(ENV_PREFIX) :].strip()
    if not var:
        raise SweeperConfigError(
            "hydra.sweeper.storage: 'env:' needs a variable name, e.g. env:LOWBIT_OPTUNA_STORAGE"
        )
    value = os.environ.get(var, "").strip()
    if not value:
        raise SweeperConfigError(f"hydra.sweeper.storage: environment variable {var} is not set (storage={storage})")
    if value.startswith(ENV_PREFIX):
        raise SweeperConfigError(f"hydra.sweeper.storage: ${var} must hold a storage URL, not another 'env:' reference")
    return value


def journal_path(url: str) -> Path:
    """``journal:///abs/file.log`` -> /abs/file.log; ``journal://rel/file.log`` -> ./rel/file.log."""
    rest = url[len(JOURNAL_PREFIX) :]
    if not rest or rest.endswith("/"):
        raise SweeperConfigError(
            f"hydra.sweeper.storage: {url!r} names no file (expected journal:///path/to/study.log)"
        )
    return Path(rest).expanduser().absolute()


def _url_password(url: str) -> str | None:
    if url.startswith(JOURNAL_PREFIX):
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password or None
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide
        return None


def _safe_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for logs and messages."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for logging
        return url


def _is_storage_override(line: str) -> bool:
    return line.lstrip("+~").split("=", 1)[0].strip() == "hydra.sweeper.storage"


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed.

    SQLAlchemy 2.0 maps a bare ``postgresql://`` to psycopg2, 2.1 to psycopg (3); ``lowbit[postgres]``
    installs psycopg (3), so name it explicitly when psycopg2 is absent. URLs naming a driver
    (``postgresql+psycopg2://``) are left alone."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            import importlib.util

            if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
                return "postgresql+psycopg://" + url[len(scheme) :]
            return "postgresql://" + url[len(scheme) :]
    return url


def _is_creation_race(e: BaseException) -> bool:
    """An error of two processes creating the same Optuna tables / version row at once."""
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text
        for s in ("integrityerror", "uniqueviolation", "already exists", "duplicate key", "database is locked")
    )


def _atomic_save(cfg: Any, path: Path) -> None:
    """Write YAML via a temporary file + rename, so concurrent workers never interleave a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    OmegaConf.save(cfg, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- #
# config fingerprint
# --------------------------------------------------------------------------- #
_ABSENT = object()


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        if not node and prefix:
            out[prefix] = {}
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(node, (list, tuple)):
        if not node and prefix:
            out[prefix] = []
        for i, v in enumerate(node):
            _flatten(v, f"{prefix}.{i}", out)
    elif node is None or isinstance(node, (str, int, float, bool)):
        out[prefix] = node
    else:
        out[prefix] = str(node)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_fingerprint(
    config: DictConfig,
    varied: Iterable[str] = (),
    fixed: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """The task config the trials run, as ``{dotted.key: value}``.

    ``config`` is the sweep's composed config (command-line overrides included); its ``hydra`` node, the
    keys in ``varied`` (the search space), :data:`FINGERPRINT_EXCLUDE` and ``exclude`` are left out;
    ``fixed`` (``hydra.sweeper.params`` entries with a fixed value, passed to every trial as ``key=value``
    but not part of the composed config) are laid over it. Interpolations
    are kept unresolved (``${paths.x}``), so time- or host-dependent resolvers never make two invocations
    of the same sweep look different; a changed value shows up at the key where it is written.
    """
    container = OmegaConf.to_container(config, resolve=False, enum_to_str=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    flat: dict[str, Any] = {}
    _flatten(container, "", flat)
    skip = fingerprint_skip(varied, exclude)
    flat = {k: v for k, v in flat.items() if not _under(k, skip)}
    for key, value in (fixed or {}).items():
        name = key.lstrip("+~")
        if _under(name, skip):
            continue
        flat = {k: v for k, v in flat.items() if not _under(k, [name])}
        flat[name] = "<deleted>" if key.startswith("~") else value
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def fingerprint_skip(varied: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    """Key prefixes left out of the fingerprint: built-ins, ``exclude`` and the search-space keys."""
    return [*FINGERPRINT_EXCLUDE, *exclude, *(k.lstrip("+~") for k in varied)]


def _fingerprint_hash(flat: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_diff(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key=<stored> (stored) vs <now> (now)`` for every differing key: changed values first, then keys
    present on one side only; shallow keys first."""

    def show(v: Any) -> str:
        return "<absent>" if v is _ABSENT else repr(v)

    diffs = []
    for key in set(stored) | set(now):
        a, b = stored.get(key, _ABSENT), now.get(key, _ABSENT)
        one_sided = a is _ABSENT or b is _ABSENT
        if one_sided or json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(((one_sided, key.count("."), key), f"{key}={show(a)} (stored) vs {show(b)} (now)"))
    return [line for _, line in sorted(diffs)]


# --------------------------------------------------------------------------- #
# heartbeat and retries
# --------------------------------------------------------------------------- #
def _retry_callback_class() -> type:
    # Optuna >= 4.9 renamed RetryFailedTrialCallback (now a deprecated alias).
    return getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback


class RetryCallback:
    """Re-queue a FAIL trial whose worker died or was interrupted, at most ``max_retry`` times.

    Wraps Optuna's ``RetryHeartbeatStaleTrialCallback`` (``RetryFailedTrialCallback`` before 4.9): the
    new WAITING trial has the same params, Optuna's ``failed_trial`` / ``retry_history`` system attrs,
    and the user attr ``lowbit_requeued_from: <number of the failed trial>``. ``study.ask`` pops it first.
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self._inner = _retry_callback_class()(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        drop = {WORKER_ATTR, OUTPUT_DIR_ATTR, ERROR_ATTR, INTERRUPTED_ATTR, SURPLUS_ATTR}
        trial.user_attrs = {
            **{k: v for k, v in trial.user_attrs.items() if k not in drop},
            REQUEUED_FROM_ATTR: trial.number,
        }
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        history = list(trial.system_attrs.get("retry_history", []))
        if len(history) + 1 > self.max_retry:
            log.warning(
                f"Trial {trial.number} FAIL (its worker stopped); not retried: already retried "
                f"{len(history)} time(s) (hydra.sweeper.max_retry={self.max_retry})"
            )
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._inner(study, trial)
        log.warning(f"Trial {trial.number} FAIL (its worker stopped); params re-queued once: {trial.params}")


class _BeatThread(threading.Thread):
    """Calls ``beat(trial_id)`` every ``interval`` seconds until stopped (or the trial is finished)."""

    def __init__(self, beat: Callable[[int], None], trial_id: int, interval: float) -> None:
        super().__init__(daemon=True, name=f"lowbit-heartbeat-{trial_id}")
        self._beat, self._trial_id, self._interval = beat, trial_id, interval
        self._halt = threading.Event()

    def run(self) -> None:
        warned = False
        while not self._halt.wait(self._interval):
            try:
                self._beat(self._trial_id)
                warned = False
            except UpdateFinishedTrialError:
                return  # failed by another worker (stale): nothing left to keep alive
            except Exception as e:  # noqa: BLE001 - e.g. the database restarting: keep trying
                if not warned:
                    log.warning(f"heartbeat of trial id {self._trial_id} failed: {_one_line(e)}")
                    warned = True

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


class Heartbeat:
    """Liveness of RUNNING trials.

    - RDB storages (PostgreSQL, MySQL, SQLite): Optuna's heartbeat (``RDBStorage(heartbeat_interval,
      grace_period, heartbeat_stale_trial_callback)``), timestamps from the database clock; stale trials
      are those of the storage's ``_get_stale_trial_ids`` (what ``optuna.storages.fail_stale_trials``
      fails), marked ``lowbit_interrupted`` then FAIL, and retried by :class:`RetryCallback`.
    - Journal storage, which has no heartbeat in Optuna (checked up to 5.0): a trial system attr
      ``lowbit_heartbeat`` = ``time.time()`` of the worker, so worker clocks must agree (NTP) to well
      within ``grace_period``.
    - ``interval=None``: off (single-worker mode).
    """

    def __init__(self, storage: Any, interval: int | None, grace: int | None, retry: RetryCallback | None) -> None:
        self.storage = storage
        self.interval = interval
        self.grace = grace if grace is not None else (2 * interval if interval else None)
        self.retry = retry
        self.native = interval is not None and isinstance(storage, optuna.storages.RDBStorage)

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def beat(self, trial_id: int) -> None:
        if self.native:
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def start(self, trial_id: int) -> _BeatThread:
        assert self.interval is not None
        thread = _BeatThread(self.beat, trial_id, float(self.interval))
        thread.start()
        return thread

    def fail_stale(self, study: optuna.Study, fail: Callable[[int], bool]) -> None:
        """Fail (and retry) RUNNING trials without heartbeat for ``grace`` seconds; ``fail(trial_id)``."""
        if not self.enabled:
            return
        assert self.grace is not None
        if self.native:
            stale_ids = getattr(study._storage, "_get_stale_trial_ids", None)
            if stale_ids is None:  # not in this Optuna: its public helper (no lowbit_interrupted attr)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # calls self.retry for each trial it failed
            else:  # what fail_stale_trials does, plus the lowbit_interrupted attr before FAIL
                for trial_id in stale_ids(study._study_id):
                    fail(trial_id)
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            start = t.datetime_start.timestamp() if t.datetime_start else now
            if self.native:
                # Optuna ignores RUNNING trials that never recorded a heartbeat: trials of a lowbit
                # version without heartbeat, or a worker killed between ask and its first beat.
                if WORKER_ATTR in t.user_attrs or now - start <= 2 * self.grace:
                    continue
            elif now - max(float(t.system_attrs.get(HEARTBEAT_ATTR, 0.0)), start) <= self.grace:
                continue
            fail(t._trial_id)


# --------------------------------------------------------------------------- #
# sampler
# --------------------------------------------------------------------------- #
def _per_trial_seedable() -> tuple[type, ...]:
    """Samplers whose seed only feeds random draws, so a new seed per trial is safe. Not GridSampler (the
    seed shuffles the grid that stored ``grid_id`` s index), QMCSampler (all workers must share one
    scrambled sequence), CmaEs/GP samplers (state tied to their random stream): those keep one seed."""
    s = optuna.samplers
    names = ("TPESampler", "RandomSampler", "NSGAIISampler", "NSGAIIISampler", "BruteForceSampler")
    return tuple(getattr(s, n) for n in names if hasattr(s, n))


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler rebuilt before every new trial with seed ``seed + 7919 * trial.number``.

    Deterministic for a given study history, and two workers never share a random stream (trial
    numbers are unique), so they do not propose the same params; a resumed sweep does not replay the
    samples of the first invocation either. Used for the samplers of :func:`_per_trial_seedable`.
    """

    def __init__(self, build: Callable[[int | None], BaseSampler], first: BaseSampler | None = None) -> None:
        self._build = build
        self._inner = first if first is not None else build(None)
        self._number: int | None = None

    @property
    def inner(self) -> BaseSampler:
        return self._inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.number != self._number:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                self._inner = self._build(trial.number)
            self._number = trial.number
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _consecutive_runs(trials: Sequence[Trial]) -> list[list[Trial]]:
    runs: list[list[Trial]] = []
    for t in trials:
        if runs and t.number == runs[-1][-1].number + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


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
        heartbeat_interval: int | None = 10,
        grace_period: int | None = 60,
        max_retry: int = 1,
        check_config: bool = True,
        fingerprint_exclude: Sequence[str] | None = None,
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
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = max_retry
        self.check_config = check_config
        self.fingerprint_exclude = fingerprint_exclude
        self.custom_search_space_extender: Callable[[DictConfig, Trial], None] | None = None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.directions: list[str] = []
        self.job_idx = 0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.heartbeat: Heartbeat | None = None
        self.retry = RetryCallback(max_retry if isinstance(max_retry, int) and max_retry >= 0 else 0)
        self._secrets: set[str] = set()

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
        for name in ("heartbeat_interval", "grace_period"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SweeperConfigError(f"hydra.sweeper.{name}: must be an integer >= 1 (seconds) or null, got {v!r}")
        hb, grace = self.heartbeat_interval, self.grace_period
        if hb is not None and grace is not None and grace <= hb:
            raise SweeperConfigError(
                f"hydra.sweeper.grace_period: must be larger than heartbeat_interval={hb} (2-4x is safe), got {grace}"
            )
        if isinstance(self.max_retry, bool) or not isinstance(self.max_retry, int) or self.max_retry < 0:
            raise SweeperConfigError(f"hydra.sweeper.max_retry: must be an integer >= 0, got {self.max_retry!r}")
        if not isinstance(self.check_config, bool):
            raise SweeperConfigError(f"hydra.sweeper.check_config: must be true or false, got {self.check_config!r}")
        exclude = self.fingerprint_exclude
        if exclude is None:
            self.fingerprint_exclude = []
        elif isinstance(exclude, (ListConfig, list, tuple)) and all(isinstance(x, str) for x in exclude):
            self.fingerprint_exclude = [str(x) for x in exclude]
        else:
            raise SweeperConfigError(
                f"hydra.sweeper.fingerprint_exclude: must be a list of config keys, got {exclude!r}"
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
        self.retry = RetryCallback(self.max_retry)
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

    def _build_sampler(self, number: int | None) -> BaseSampler:
        """Instantiate the sampler from its config; for trial ``number`` of a seeded sampler, with seed
        ``seed + 7919 * number`` (see :class:`TrialSeededSampler`). Hydra hands the sweeper an already
        instantiated sampler; it is used as is only when there is no ``_target_`` config to rebuild from."""
        cfg = self._sampler_config()
        kwargs: dict[str, Any] = {}
        if cfg is not None and number is not None and cfg.get("seed", None) is not None:
            kwargs["seed"] = (int(cfg.seed) + 7919 * number) % (2**32)
        if cfg is None or "_target_" not in cfg:
            if isinstance(self.sampler, BaseSampler):
                return self.sampler
            if self.sampler is None:
                return optuna.samplers.TPESampler()
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

    def _make_sampler(self) -> BaseSampler:
        cfg = self._sampler_config()
        first = self._build_sampler(None)
        seeded = cfg is not None and "_target_" in cfg and cfg.get("seed", None) is not None
        if seeded and type(first) in _per_trial_seedable():
            return TrialSeededSampler(self._build_sampler, first)
        return first

    # -- storage / study ---------------------------------------------------- #
    def _storage_url(self) -> str:
        if self.storage:
            return resolve_storage_url(str(self.storage))
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{sweep_dir / 'optuna.db'}"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _redact_config(self, url: str) -> None:
        """Keep a storage password given literally (command line or YAML) out of every file Hydra writes.

        Hydra saves ``hydra.sweeper.storage`` and the ``hydra.sweeper.storage=...`` override in each job's
        ``.hydra/hydra.yaml`` and in ``multirun.yaml``; jobs are re-composed from
        ``hydra.overrides.hydra``. Both are replaced by the URL with ``***`` for the password (this process
        already holds the real URL). A URL given as ``${oc.env:VAR}`` / ``env:VAR`` is never written.
        """
        password = _url_password(url)
        if not password:
            return
        self._secrets.add(password)
        assert self.config is not None
        cfg = self.config
        raw = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False).get("storage")  # type: ignore[union-attr]
        hydra_overrides = [str(o) for o in OmegaConf.to_container(cfg.hydra.overrides.hydra)]  # type: ignore[union-attr]
        if not ((isinstance(raw, str) and password in raw) or any(password in o for o in hydra_overrides)):
            return
        redacted = _safe_url(url)
        if password in redacted:  # cannot render it without the password
            redacted = "***"
        quoted = redacted.replace("\\", "\\\\").replace("'", "\\'")
        new_overrides = [o.replace(password, "***") for o in hydra_overrides if not _is_storage_override(o)]
        new_overrides.append(f"hydra.sweeper.storage='{quoted}'")
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.sweeper.storage = redacted
            cfg.hydra.overrides.hydra = new_overrides
        if HydraConfig.initialized():
            HydraConfig.instance().set_config(cfg)
        log.warning(
            "hydra.sweeper.storage holds a password: it is written as '***' in the configs Hydra saves, but may "
            "stay in your shell history and the process list; prefer "
            "hydra.sweeper.storage='${oc.env:LOWBIT_OPTUNA_STORAGE}' (or env:LOWBIT_OPTUNA_STORAGE)"
        )

    def _make_storage(self, url: str) -> Any:
        if url.startswith(JOURNAL_PREFIX):
            path = journal_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            journal = optuna.storages.journal
            backend = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
            return optuna.storages.JournalStorage(backend(str(path)))
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            db_path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            if "timeout=" not in url:  # several workers: wait for the write lock instead of failing
                engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True  # long sweeps outlive idle server connections
        kwargs: dict[str, Any] = {}
        if self.heartbeat_interval is not None:
            kwargs.update(heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period)
            params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
            cb = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
            kwargs[cb] = self.retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=engine_kwargs, **kwargs)

    def _open_study(self, url: str) -> optuna.Study:
        verbosity = optuna.logging.get_verbosity()
        try:
            for attempt in range(6):
                try:
                    storage = self._make_storage(url)
                    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study" (we log)
                    study = optuna.create_study(
                        study_name=self.study_name,
                        storage=storage,
                        sampler=optuna.samplers.RandomSampler(),  # replaced in sweep()
                        directions=self.directions,
                        load_if_exists=True,
                    )
                    break
                except Exception as e:
                    # Workers starting together on a new database race to create Optuna's tables.
                    if attempt == 5 or not _is_creation_race(e):
                        raise
                    time.sleep(0.2 + random.random() * (attempt + 1))
        except SweeperConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any storage error is a one-line config error
            hint = ""
            if isinstance(e, ImportError) and url.startswith("postgres"):
                hint = " (install the driver: pip install 'lowbit[postgres]')"
            raise SweeperConfigError(
                self._scrub(f"hydra.sweeper.storage: cannot open study in {_safe_url(url)!r}: {_one_line(e)}{hint}")
            ) from None
        finally:
            optuna.logging.set_verbosity(verbosity)
        existing = [d.name.lower() for d in study.directions]
        if existing != self.directions:
            raise SweeperConfigError(
                f"hydra.sweeper.direction: {self.directions} does not match the existing study "
                f"{self.study_name!r} in {_safe_url(url)!r}, which has directions {existing}"
            )
        self.heartbeat = Heartbeat(storage, self.heartbeat_interval, self.grace_period, self.retry)
        return study

    def _check_config(
        self, study: optuna.Study, url: str, fingerprint: dict[str, Any], skip: list[str], *, first: bool
    ) -> None:
        """Refuse to run a study that was created for another task config (see ``config_fingerprint``).

        The stored fingerprint is compared under today's exclusions (``skip``: built-ins,
        ``fingerprint_exclude``, today's search space), so excluding a key later works."""
        if not self.check_config:
            return
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            if first:
                if study.get_trials(deepcopy=False):
                    log.warning(
                        f"Study {study.study_name!r} has no config fingerprint (made by an older lowbit); "
                        "recording the current config"
                    )
                study.set_user_attr(CONFIG_ATTR, fingerprint)
                study.set_user_attr(CONFIG_HASH_ATTR, _fingerprint_hash(fingerprint))
            return
        stored = {k: v for k, v in stored.items() if not _under(k, skip)}
        if _fingerprint_hash(stored) == _fingerprint_hash(fingerprint):
            return
        diff = config_diff(stored, fingerprint)
        shown = ", ".join(diff[:5]) + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else "")
        raise SweeperConfigError(
            f"hydra.sweeper: study {study.study_name!r} in {_safe_url(url)} was created for a different config: "
            f"{shown}; use another hydra.sweeper.study_name or the same config"
        )

    def _fail_trial(self, study: optuna.Study, trial_id: int, *, interrupted: bool) -> bool:
        """Mark a RUNNING trial FAIL (``lowbit_interrupted`` + retry when ``interrupted``); False when
        another worker finished it first."""
        storage = study._storage  # no public API to update a trial of another process
        try:
            if interrupted:
                storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        if interrupted:
            self.retry(study, copy.deepcopy(storage.get_trial(trial_id)))
        return True

    def _recover_interrupted(self, study: optuna.Study) -> int:
        """Single-worker mode (``heartbeat_interval: null``): every RUNNING trial was left by a killed
        invocation; mark it FAIL (``lowbit_interrupted``) and re-queue its params."""
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self._fail_trial(study, t._trial_id, interrupted=True):
                log.warning(f"Trial {t.number} was interrupted (state RUNNING): marked FAIL")
                n += 1
        return n

    # -- trials ------------------------------------------------------------- #
    def _ask(self, study: optuna.Study, distributions: dict[str, BaseDistribution], n: int) -> list[Trial]:
        """Ask up to ``n`` trials; give back those that another worker's simultaneous ask made surplus."""
        assert self.heartbeat is not None
        trials = []
        for _ in range(n):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
                trial = study.ask(fixed_distributions=distributions)
            if self.heartbeat.enabled:
                self.heartbeat.beat(trial._trial_id)
            trial.set_user_attr(WORKER_ATTR, self.worker_id)
            if self._is_surplus(study, trial):
                self._give_back(study, trial)
                continue
            trials.append(trial)
        return trials

    def _is_surplus(self, study: optuna.Study, trial: Trial) -> bool:
        """Trials are ranked by number: a trial is surplus when the COMPLETE trials plus the RUNNING ones
        numbered up to it exceed ``n_trials`` (two workers asked for the last slot at once)."""
        live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        used = sum(1 for t in live if t.state == TrialState.COMPLETE or t.number <= trial.number)
        return used > self.n_trials

    def _give_back(self, study: optuna.Study, trial: Trial) -> None:
        frozen = study._storage.get_trial(trial._trial_id)
        if "fixed_params" in frozen.system_attrs or "failed_trial" in frozen.system_attrs:
            # a queued trial (enqueue_trial / retry): put it back in the queue
            study.add_trial(
                optuna.create_trial(
                    state=TrialState.WAITING,
                    params=frozen.params,
                    distributions=frozen.distributions,
                    user_attrs={k: v for k, v in frozen.user_attrs.items() if k != WORKER_ATTR},
                    system_attrs=frozen.system_attrs,
                )
            )
        try:
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except UpdateFinishedTrialError:
            pass
        log.info(
            f"Trial {trial.number}: another worker took the last of the {self.n_trials} slots at the same "
            f"moment; given back (FAIL, {SURPLUS_ATTR})"
        )

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
        if OmegaConf.select(self.config, "logger.wandb") is not None:  # lowbit's W&B logger: file the run by study
            from lowbit.wandb_charts import sweep_run_overrides

            params = {name: format_override_value(val) for name, val in trial.params.items()}
            return (*overrides, *sweep_run_overrides(self.config, trial.study.study_name, trial.number, params))
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

    def _poll_interval(self) -> float:
        """Seconds between re-counts while all slots are taken: heartbeat_interval / 2, within [0.5, 5]."""
        return float(min(max((self.heartbeat_interval or 10) / 2, 0.5), 5))

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

        # 2. Open / resume the study; refuse one made for another config.
        url = self._storage_url()
        self._redact_config(url)
        sampler = self._make_sampler()  # fails on a bad sampler before any file is written
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.config, sweep_dir / "multirun.yaml")
        study = self._open_study(url)
        assert self.heartbeat is not None
        # Command-line overrides are already in the composed config; fixed values from hydra.sweeper.params
        # are only passed to the jobs, so they are laid over it.
        n_params = len(entries) - len(arguments)
        _, params_fixed = create_params_from_overrides(
            entries[:n_params], config_loader=getattr(self.hydra_context, "config_loader", None)
        )
        cli_keys = {a.split("=", 1)[0].lstrip("+~") for a in arguments}
        params_fixed = {k: v for k, v in params_fixed.items() if k.lstrip("+~") not in cli_keys}
        skip = fingerprint_skip(distributions, self.fingerprint_exclude or ())
        fingerprint = config_fingerprint(self.config, distributions, params_fixed, self.fingerprint_exclude or ())
        self._check_config(study, url, fingerprint, skip, first=True)
        n_recovered = 0 if self.heartbeat.enabled else self._recover_interrupted(study)
        study.sampler = sampler

        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        inner = sampler.inner if isinstance(sampler, TrialSeededSampler) else sampler
        hb = (
            f"heartbeat every {self.heartbeat_interval} s, FAIL + retry after {self.heartbeat.grace} s without"
            if self.heartbeat.enabled
            else "no heartbeat (single worker: RUNNING trials found at start are re-run)"
        )
        log.info(f"Study: {study.study_name} | storage: {_safe_url(url)} | worker {self.worker_id} | {hb}")
        log.info(f"Sampler: {type(inner).__name__} | directions: {self.directions}")
        log.info(f"Search space: {distributions}" + (f" | fixed: {fixed_params}" if fixed_params else ""))
        log.info(
            f"{n_complete}/{self.n_trials} COMPLETE trials in storage"
            + (f"; {n_recovered} interrupted trial(s) re-enqueued" if n_recovered else "")
        )

        failures = 0
        last_error = ""
        exhausted = False
        waiting = ""
        while not exhausted:
            # 3. Re-count the study (all workers) before asking.
            self._check_config(study, url, fingerprint, skip, first=False)
            self.heartbeat.fail_stale(study, lambda trial_id: self._fail_trial(study, trial_id, interrupted=True))
            counts = {TrialState.COMPLETE: 0, TrialState.RUNNING: 0}
            for t in study.get_trials(deepcopy=False, states=tuple(counts)):
                counts[t.state] += 1
            n_complete, n_running = counts[TrialState.COMPLETE], counts[TrialState.RUNNING]
            if n_complete >= self.n_trials:
                break
            room = self.n_trials - n_complete - n_running
            if room <= 0:
                msg = (
                    f"{n_complete}/{self.n_trials} COMPLETE, {n_running} RUNNING in other workers (or left by a "
                    f"killed one: FAIL + retry after {self.heartbeat.grace} s without heartbeat); waiting"
                    if self.heartbeat.enabled
                    else f"{n_complete}/{self.n_trials} COMPLETE, {n_running} RUNNING elsewhere; waiting "
                    "(heartbeat_interval=null: only one worker per study is supported)"
                )
                if msg != waiting:
                    log.info(msg)
                    waiting = msg
                time.sleep(self._poll_interval())
                continue
            waiting = ""

            trials = self._ask(study, distributions, min(self.n_jobs, room))
            if not trials:
                continue
            threads = [self.heartbeat.start(t._trial_id) for t in trials] if self.heartbeat.enabled else []
            try:
                try:
                    overrides = [self._configure_trial(t, fixed_params) for t in trials]
                    # hydra.job.num = the optuna trial number: job sub-dirs never collide across
                    # resumes or workers (trials with non-consecutive numbers are launched in runs).
                    by_number = dict(zip([t.number for t in trials], overrides))
                    returns: list[JobReturn] = []
                    ordered: list[Trial] = []
                    for run in _consecutive_runs(trials):
                        returns += list(
                            self.launcher.launch([by_number[t.number] for t in run], initial_job_idx=run[0].number)
                        )
                        ordered += run
                    self.job_idx = max(self.job_idx, max(by_number) + 1)
                except BaseException as e:
                    # Ctrl-C / SystemExit: FAIL + retry (re-run on resume); other errors: FAIL.
                    interrupted = not isinstance(e, Exception)
                    for t in trials:
                        self._fail_trial(study, t._trial_id, interrupted=interrupted)
                    raise
                for trial, ret in zip(ordered, returns):
                    error, stop = self._tell(study, trial, ret)
                    exhausted = exhausted or stop
                    if error is not None:
                        failures += 1
                        last_error = error
            finally:
                for th in threads:
                    th.stop()
            if exhausted:
                log.info("Sampler reports the search space is exhausted; stopping.")
            if failures >= self.max_failures:
                n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if n_complete < self.n_trials:
                    self._report(study)
                    raise SweepAbortedError(
                        f"lowbit_optuna: aborting sweep after {failures} failed trial(s) in this invocation "
                        f"(hydra.sweeper.max_failures={self.max_failures}); {n_complete}/{self.n_trials} "
                        f"COMPLETE. Last error: {last_error}"
                    )

        self._report(study)

    def _tell(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> tuple[str | None, bool]:
        """Store a job's result; returns (error line if the trial failed, search space exhausted)."""
        values, error = self._job_result(ret)
        state = study._storage.get_trial(trial._trial_id).state
        if state.is_finished():
            log.warning(
                f"Trial {trial.number} was marked {state.name} by another worker while it ran (no heartbeat for "
                f"{self.heartbeat.grace if self.heartbeat else '?'} s: was this process suspended or cut off from "
                "the storage?); its result is discarded, its params were re-queued"
            )
            return None, False
        out_dir = None
        if isinstance(ret.hydra_cfg, DictConfig):
            out_dir = OmegaConf.select(
                ret.hydra_cfg, "hydra.runtime.output_dir", default=None, throw_on_resolution_failure=False
            )
        try:
            if out_dir:
                trial.set_user_attr(OUTPUT_DIR_ATTR, str(out_dir))
            if error is None:
                study.tell(trial, values=values, state=TrialState.COMPLETE, skip_if_finished=True)
                assert values is not None
                shown = values[0] if len(values) == 1 else values
                n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                log.info(f"Trial {trial.number} finished: {shown} ({n_complete}/{self.n_trials} COMPLETE)")
                return None, False
            line = self._scrub(_one_line(error))
            trial.set_user_attr(ERROR_ATTR, line)
            log.warning(f"Trial {trial.number} failed ({' '.join(ret.overrides)}): {line}")
            log.debug("Trial %d traceback", trial.number, exc_info=error)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return line, False
        except UpdateFinishedTrialError:
            log.warning(f"Trial {trial.number} was finished by another worker meanwhile; result discarded")
            return None, False
        except RuntimeError as e:
            # Grid/BruteForce samplers call study.stop() once the space is exhausted;
            # outside study.optimize that raises (after the trial has been stored).
            if "Study.stop" not in str(e):
                raise
            return (None if error is None else self._scrub(_one_line(error))), True

    # -- results ------------------------------------------------------------ #
    def _report(self, study: optuna.Study) -> None:
        assert self.config is not None
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        n_failed = sum(1 for t in failed if not t.user_attrs.get(SURPLUS_ATTR))
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
        _atomic_save(OmegaConf.create(results), out)
        log.info(f"Wrote {out}")
        if OmegaConf.select(self.config, "logger.wandb") is not None:  # lowbit's W&B logger: the study's own run
            from lowbit.wandb_charts import SweepTrial, log_sweep_run

            trials = [SweepTrial(t.number, dict(t.params), list(t.values)) for t in complete]
            log_sweep_run(self.config, study.study_name, trials, self.directions)
