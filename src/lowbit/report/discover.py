"""Find what the report shows under its roots: runs, paper tables, Optuna sweeps, Hessian spectra.

What each is on disk (written elsewhere in lowbit):

- a **run** is a directory with ``summary.json`` (``lowbit.tracking.write_summary``), usually with ``.hydra/config.yaml``
  (the composed config), ``checkpoints/`` and its logger's files (``csv/version_*/metrics.csv``, ``wandb/``);
- a **table** is ``<dir>/<name>.csv`` written by ``lowbit.tables.write_table`` (columns ``row, paper_row, ours ...,
  paper ..., paper source``), its rows' runs in ``<dir>/<row>/``; a committed copy has no row dirs
  (``experiments/*/results/<name>.csv``). A table being run has row dirs but no CSV yet: its rows are built from
  the row summaries the way ``lowbit.tables`` will write them;
- a **sweep** is an Optuna storage: ``<sweep dir>/optuna.db`` (the ``lowbit_optuna`` sweeper's default), or the
  SQLite / journal file a sweep dir's ``multirun.yaml`` names in ``hydra.sweeper.storage``; each trial's run dir is
  its ``lowbit_output_dir`` user attribute;
- a **Hessian spectrum** is a ``python -m lowbit.hessian`` JSON (``blocks`` of kind ``layer`` / ``module`` /
  ``embedding``), beside a checkpoint (``<ckpt>.hessian.json``) or committed (``experiments/qbert/results``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.errors import check

#: directories that hold a run's artefacts, never other runs or tables: not walked
SKIP_DIRS = {"wandb", "checkpoints", ".hydra", "csv", "__pycache__", ".git", ".cache", ".submitit", "export",
             "node_modules", ".ipynb_checkpoints"}
#: method groups whose option names what a run did (``<group>/option`` in its summary), in pipeline order
METHOD_GROUPS = ("distillation", "early_exit", "pruning", "attention_span", "bit_assignment", "quantizer",
                 "approximation")
#: options that mean "this group did nothing special" (``bit_assignment=uniform`` only sets the bits)
NEUTRAL_OPTIONS = {"none", "uniform", None}
NO_METHOD = "none"
#: a task's own dev metrics (lowbit.data.tasks: ``<eval prefix>/<metric>``)
DEV_METRIC = re.compile(r"^val[a-z_]*/(acc|f1|mcc|pearson|spearmanr|accuracy)$")


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]  # .hydra/config.yaml as plain YAML (interpolations left as strings), {} if absent

    def config_value(self, dotted: str) -> Any:
        node: Any = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return None if isinstance(node, str) and "${" in node else node

    @property
    def task(self) -> str:
        return str(self.config_value("data.task") or "")

    @property
    def model(self) -> str:
        return str(self.config_value("model.name") or "")

    @property
    def methods(self) -> list[str]:
        """``group=option`` of every method group that did something (``[NO_METHOD]`` for a float run)."""
        tokens = [f"{g}={self.summary[f'{g}/option']}" for g in METHOD_GROUPS
                  if self.summary.get(f"{g}/option") not in NEUTRAL_OPTIONS]
        return tokens or [NO_METHOD]

    @property
    def metrics(self) -> dict[str, float]:
        """The final dev metrics of the task (``val/acc``, MNLI's ``val_mm/acc``; not per-layer or per-threshold
        ones such as ``val/exit/acc@1``)."""
        return {k: v for k, v in self.summary.items() if DEV_METRIC.match(k) and isinstance(v, (int, float))}

    def hessian_files(self) -> list[Path]:
        """Spectra of this run: the one its bit assignment read, and any computed on its checkpoints."""
        found = []
        used = self.config_value("bit_assignment.sensitivity_file")
        if isinstance(used, str):
            found.append(Path(used))
        found += sorted((self.path / "checkpoints").glob("*.hessian.json"))
        return list(dict.fromkeys(p for p in found if p.is_file()))

    @property
    def layer_bits(self) -> list[int | None] | None:
        """Bits per encoder layer (``bit_assignment/layer_bits``: "2,3,float,..."), None if not layer-wise."""
        raw = self.summary.get("bit_assignment/layer_bits")
        if not isinstance(raw, str) or not raw:
            return None
        return [None if b == "float" else int(b) for b in raw.split(",")]


@dataclass
class TableResult:
    name: str
    source: Path  # the CSV, or the table's directory when its rows are read from their summaries
    columns: list[str]
    rows: list[dict[str, Any]]
    spec: Any = None  # lowbit.tables.TableSpec when conf/table/<name>.yaml exists
    row_runs: dict[str, Run] = field(default_factory=dict)  # row name -> its run (only where the row dir exists)
    note: str = ""  # e.g. "3 of 11 rows done (no CSV yet)"


@dataclass
class Sweep:
    study_name: str
    storage: str  # an Optuna storage URL (sqlite:///... or journal:///...)
    storage_path: Path
    directory: Path
    objectives: list[str]
    trial_runs: dict[int, Run] = field(default_factory=dict)  # trial number -> its run dir, where found


@dataclass
class HessianSpectrum:
    path: Path
    data: dict[str, Any]


@dataclass
class Findings:
    roots: list[Path]
    runs: list[Run]  # single runs: neither a table's row nor a sweep's trial
    tables: list[TableResult]
    sweeps: list[Sweep]
    spectra: list[HessianSpectrum]
    all_runs: dict[Path, Run]
    #: conf/table specs with no results under the roots
    tables_without_results: list[str] = field(default_factory=list)
    #: files that looked like results but could not be read (shown on the index)
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_run(path: Path) -> Run | None:
    summary = _read_json(path / "summary.json")
    if not isinstance(summary, dict):
        return None
    config = _read_yaml(path / ".hydra" / "config.yaml")
    return Run(path=path, summary=summary, config=config if isinstance(config, dict) else {})


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def is_table_csv(path: Path) -> bool:
    try:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:2] == ["row", "paper_row"]


def read_table_csv(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: _number(v or "") for k, v in r.items()} for r in reader]
        return list(reader.fieldnames or []), rows


def load_spec(name: str) -> Any:
    """``conf/table/<name>.yaml`` as a ``TableSpec``, or None (no such table, or a spec that does not load)."""
    from lowbit.compose import conf_dir
    from lowbit.errors import LowbitConfigError
    from lowbit.tables import TableSpec

    try:
        if not (conf_dir() / "table" / f"{name}.yaml").is_file():
            return None
        return TableSpec.load(name)
    except LowbitConfigError:
        return None


def conf_table_names() -> list[str]:
    from lowbit.compose import conf_dir
    from lowbit.errors import LowbitConfigError

    try:
        return sorted(p.stem for p in (conf_dir() / "table").glob("*.yaml"))
    except LowbitConfigError:
        return []


def read_spectrum(path: Path) -> HessianSpectrum | None:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), dict):
        return None
    if not all(isinstance(b, dict) and "kind" in b for b in data["blocks"].values()):
        return None  # e.g. a benchmark's JSON that also has "blocks"
    return HessianSpectrum(path, data)


def _sweep_storages(directory: Path, files: list[str]) -> list[tuple[str, Path]]:
    """(storage URL, file) of the Optuna storages in a directory: optuna.db, and what multirun.yaml names."""
    found: list[tuple[str, Path]] = []
    if "optuna.db" in files:
        db = (directory / "optuna.db").resolve()
        found.append((f"sqlite:///{db}", db))
    if "multirun.yaml" in files:
        cfg = _read_yaml(directory / "multirun.yaml") or {}
        storage = ((cfg.get("hydra") or {}).get("sweeper") or {}).get("storage") if isinstance(cfg, dict) else None
        for prefix in ("sqlite:///", "journal:///"):
            if isinstance(storage, str) and storage.startswith(prefix) and "${" not in storage:
                path = Path(storage[len(prefix):].split("?", 1)[0])
                path = (path if path.is_absolute() else directory / path).resolve()
                if path.is_file() and all(p != path for _, p in found):
                    found.append((f"{prefix}{path}", path))
    return found


def open_storage(url: str) -> Any:
    """An Optuna storage to read (SQLite without creating tables; a journal file)."""
    import optuna

    if url.startswith("journal:///"):
        journal = optuna.storages.journal
        backend = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        return optuna.storages.JournalStorage(backend(url[len("journal:///"):]))
    return optuna.storages.RDBStorage(url, skip_table_creation=True)


def _objective_names(directory: Path, study_name: str, n: int) -> list[str]:
    """The metric of each objective, from the sweep's ``multirun.yaml`` (``objectives`` or ``optimized_metric``)."""
    cfg = _read_yaml(directory / "multirun.yaml")
    names: list[str] = []
    if isinstance(cfg, dict) and ((cfg.get("hydra") or {}).get("sweeper") or {}).get("study_name") in (study_name, None):
        objectives, metric = cfg.get("objectives"), cfg.get("optimized_metric")
        if isinstance(objectives, list) and all(isinstance(o, str) for o in objectives):
            names = objectives
        elif isinstance(metric, str) and "${" not in metric:
            names = [metric]
    return names if len(names) == n else [f"objective {i}" for i in range(n)]


def _sweeps_in(directory: Path, files: list[str], problems: list[str]) -> list[Sweep]:
    import optuna

    sweeps = []
    for url, path in _sweep_storages(directory, files):
        try:
            storage = open_storage(url)
            summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        except Exception as e:  # noqa: BLE001 - not an Optuna storage, or one this Optuna cannot read
            problems.append(f"{path}: not read as an Optuna storage ({' '.join(str(e).split())[:200]})")
            continue
        for s in summaries:
            sweeps.append(Sweep(s.study_name, url, path, directory,
                                _objective_names(directory, s.study_name, len(s.directions))))
    return sweeps


def _walk(root: Path, exclude: list[Path]):
    """(directory, file names) under root, not entering SKIP_DIRS or the excluded directories (the report)."""
    excluded = {p.resolve() for p in exclude}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and (here / d).resolve() not in excluded)
        yield here, filenames


def discover(roots: list[Path], exclude: list[Path] | None = None) -> Findings:
    """Everything under ``roots`` (each must be a directory); ``exclude``: directories not to look in."""
    for root in roots:
        check(root.exists(), f"report root {str(root)!r} does not exist")
        check(root.is_dir(), f"report root {str(root)!r} is not a directory")
    all_runs: dict[Path, Run] = {}
    csvs: list[Path] = []
    sweeps: list[Sweep] = []
    spectra: list[HessianSpectrum] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for root in roots:
        for directory, files in _walk(root, exclude or []):
            if directory.resolve() in seen:  # roots that overlap
                continue
            seen.add(directory.resolve())
            if "summary.json" in files:
                run = read_run(directory)
                if run is not None:
                    all_runs[directory] = run
            csvs += [directory / f for f in sorted(files) if f.endswith(".csv") and is_table_csv(directory / f)]
            sweeps += _sweeps_in(directory, files, problems)
            spectra += [s for f in sorted(files) if f.endswith(".json") and "hessian" in f
                        and (s := read_spectrum(directory / f)) is not None]
    tables = _tables(csvs, all_runs)
    claimed = {r.path for t in tables for r in t.row_runs.values()}
    for sweep in sweeps:
        sweep.trial_runs = _trial_runs(sweep, all_runs)
        claimed |= {r.path for r in sweep.trial_runs.values()}
    singles = sorted((r for p, r in all_runs.items() if p not in claimed), key=lambda r: str(r.path))
    with_results = {t.name for t in tables}
    return Findings(roots=roots, runs=singles, tables=tables, sweeps=sweeps, spectra=spectra, all_runs=all_runs,
                    tables_without_results=[n for n in conf_table_names() if n not in with_results],
                    problems=problems)


def _tables(csvs: list[Path], runs: dict[Path, Run]) -> list[TableResult]:
    tables = []
    for path in csvs:
        columns, rows = read_table_csv(path)
        name = path.stem
        row_runs = {r["row"]: runs[path.parent / str(r["row"])] for r in rows if path.parent / str(r["row"]) in runs}
        tables.append(TableResult(name, path, columns, rows, load_spec(name), row_runs))
    # a table being run: row dirs of a conf/table spec, in a directory named after it, without its CSV yet
    with_csv = {path.parent for path in csvs}
    by_dir: dict[Path, list[Run]] = {}
    for path, run in runs.items():
        if path.parent not in with_csv:
            by_dir.setdefault(path.parent, []).append(run)
    for directory, dir_runs in sorted(by_dir.items()):
        spec = load_spec(directory.name)
        if spec is None:
            continue
        done = {r.path.name: r for r in dir_runs if r.path.name in {row.name for row in spec.rows}}
        if not done:
            continue
        tables.append(partial_table(spec, directory, done))
    return sorted(tables, key=lambda t: (t.name, str(t.source)))


def partial_table(spec: Any, directory: Path, done: dict[str, Run]) -> TableResult:
    """The rows done so far, as ``lowbit.tables`` will write them once every row has run."""
    from lowbit.tables import _table_row

    rows = [_table_row(spec, row, done[row.name].summary) for row in spec.rows if row.name in done]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    note = f"{len(rows)} of {len(spec.rows)} rows done (table not finished: no {spec.name}.csv yet)"
    return TableResult(spec.name, directory, columns, rows, spec, done, note)


def _trial_runs(sweep: Sweep, runs: dict[Path, Run]) -> dict[int, Run]:
    import optuna

    try:
        study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage))
    except Exception:  # noqa: BLE001 - the sweep page says the study could not be read
        return {}
    by_resolved = {p.resolve(): r for p, r in runs.items()}
    out = {}
    for t in study.get_trials(deepcopy=False):
        job_dir = t.user_attrs.get("lowbit_output_dir")
        if isinstance(job_dir, str) and Path(job_dir).resolve() in by_resolved:
            out[t.number] = by_resolved[Path(job_dir).resolve()]
    return out
