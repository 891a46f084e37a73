"""Paper tables as one command: ``python -m lowbit.tables NAME [overrides...]``.

A table is ``conf/table/NAME.yaml``: rows, each a list of training overrides plus the
paper's numbers for that row (with their source, ``src`` or ``recalled``). Rows run in
order; an override may name an earlier row's output directory as ``{row:ROW_NAME}``
(e.g. a teacher checkpoint). A row whose ``summary.json`` exists is not rerun, and a row
interrupted mid-way resumes from its ``last.ckpt`` (``ckpt_path=auto``), so an interrupted
table resumes where it stopped. The result is written as CSV and markdown next to the rows and
logged to W&B as a ``wandb.Table`` (offline without an API key).

``--rows sst2_*`` runs only the rows matching the glob(s) (and the earlier rows they refer to); the table
written then holds every row done so far, in the spec's order.

``--dry-run`` composes every row's config and instantiates it (``lowbit.pipeline.dry_run``)
without training or writing anything; a row whose config reads a file that only an earlier row
produces (its checkpoint, a Hessian JSON of it) has those groups composed but not instantiated.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.compose import compose_train, conf_dir
from lowbit.errors import LowbitConfigError, check

#: where a table's paper column comes from (paper-tables.md tags): the paper itself, recalled, or the project's seed
#: summary of a paper whose tables were not recovered (EdgeBERT)
SOURCES = ("src", "recalled", "seed summary")


@dataclass
class TableRow:
    name: str
    overrides: list[str]
    paper: dict[str, float | None] = field(default_factory=dict)
    paper_label: str = ""  # the paper's row this corresponds to
    # config groups whose base_overrides this row leaves out (e.g. the fp32 baseline of a table whose
    # base sets quantizer.*: ``drop_base: [quantizer]``)
    drop_base: list[str] = field(default_factory=list)

    def base(self, base_overrides: list[str]) -> list[str]:
        return [o for o in base_overrides if not any(_in_group(o, g) for g in self.drop_base)]


def _in_group(override: str, group: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == group or key.startswith(group + ".")


@dataclass
class TableSpec:
    name: str
    title: str
    metrics: list[str]  # our metrics, columns in order (e.g. val/acc)
    rows: list[TableRow]
    base_overrides: list[str] = field(default_factory=list)
    paper_source: str = "recalled"
    notes: str = ""
    #: a computed table (no training): ``lowbit.<module>:<function>`` returning {row name: {metric: value}}
    compute: str | None = None
    #: metric values are fractions shown as percentages (accuracy); false: shown as they are (errors); a list:
    #: only those metrics as percentages, the others as they are (accuracy beside a span in tokens)
    percent: bool | list[str] = True

    def shows_percent(self, metric: str) -> bool:
        return metric in self.percent if isinstance(self.percent, list) else bool(self.percent)

    @classmethod
    def load(cls, name: str) -> TableSpec:
        """``conf/table/<name>.yaml``, checked (``check_spec``): one line naming the file and what is wrong."""
        from lowbit.validate import check_environment

        check_environment()
        check(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", name) is not None,
              f"table name {name!r}: letters, digits, '_' and '-' only (it names conf/table/<name>.yaml)")
        path = conf_dir() / "table" / f"{name}.yaml"
        known = sorted(p.stem for p in (conf_dir() / "table").glob("*.yaml"))
        check(path.is_file(), f"unknown table {name!r}; known: {known}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise LowbitConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        check(isinstance(raw, dict), f"{path}: a table spec is a mapping (name, title, metrics, rows, ...)")
        _check_keys(raw, cls, str(path), exclude=("rows",))
        check(isinstance(raw.get("rows"), list) and raw["rows"],
              f"{path}: rows must be a non-empty list of {{name, overrides, ...}}")
        rows = []
        for i, r in enumerate(raw.pop("rows")):
            check(isinstance(r, dict), f"{path}: rows[{i}] must be a mapping {{name, overrides, ...}}, got {r!r}")
            _check_keys(r, TableRow, f"{path}: row {r.get('name', i)!r}")
            rows.append(TableRow(**r))
        spec = cls(rows=rows, **raw)
        check_spec(spec, str(path))
        return spec


def _check_keys(raw: dict, cls: type, where: str, exclude: tuple[str, ...] = ()) -> None:
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]
    known = [f.name for f in fields]
    unknown = [k for k in raw if k not in known and k not in exclude]
    check(not unknown, f"{where}: unknown key(s) {unknown}; known: {known}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in raw]
    check(not missing, f"{where}: missing key(s) {missing}")


def check_spec(spec: TableSpec, where: str | None = None) -> None:
    """Everything about a spec that would otherwise fail only when its row runs: value types, duplicate
    row names, paper_source, and ``{row:NAME}`` references (each to an earlier row)."""
    where = where or f"table {spec.name}"
    check(isinstance(spec.name, str) and spec.name, f"{where}: name must be a non-empty string")
    check(isinstance(spec.metrics, list) and all(isinstance(m, str) for m in spec.metrics),
          f"{where}: metrics must be a list of metric names (e.g. [val/acc]), got {spec.metrics!r}")
    check(isinstance(spec.base_overrides, list) and all(isinstance(o, str) for o in spec.base_overrides),
          f"{where}: base_overrides must be a list of override strings, got {spec.base_overrides!r}")
    check(spec.paper_source in SOURCES, f"{where}: paper_source must be one of {SOURCES}, got {spec.paper_source!r}")
    check(isinstance(spec.percent, bool) or (isinstance(spec.percent, list) and set(spec.percent) <= set(spec.metrics)),
          f"{where}: percent must be true, false or a list of the table's metrics, got {spec.percent!r}")
    check(spec.compute is None or (isinstance(spec.compute, str)
                                   and re.fullmatch(r"lowbit(\.[A-Za-z0-9_]+)+:[A-Za-z_][A-Za-z0-9_]*", spec.compute)),
          f"{where}: compute must name a lowbit function as lowbit.<module>:<function>, got {spec.compute!r}")
    names = [r.name for r in spec.rows]
    duplicates = sorted({n for n in names if names.count(n) > 1}, key=str)
    check(not duplicates, f"{where}: duplicate row names {duplicates}")
    for i, row in enumerate(spec.rows):
        check(isinstance(row.name, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", row.name) is not None,
              f"{where}: row {i}: name must be letters, digits, '_' and '-' (it names the row's directory), "
              f"got {row.name!r}")
        check(isinstance(row.overrides, list) and all(isinstance(o, str) for o in row.overrides),
              f"{where}: row {row.name!r}: overrides must be a list of override strings, got {row.overrides!r}")
        check(isinstance(row.paper, dict), f"{where}: row {row.name!r}: paper must be a mapping, got {row.paper!r}")
        check(isinstance(row.drop_base, list), f"{where}: row {row.name!r}: drop_base must be a list of groups")
        for override in [*row.base(spec.base_overrides), *row.overrides]:
            for m in _ROW_REF.finditer(override):
                check(m.group(1) in names[:i], f"table {spec.name}: row {row.name!r}: override {override!r} refers to "
                                               f"row {m.group(1)!r} that has not run before it")


_ROW_REF = re.compile(r"\{row:([A-Za-z0-9_\-]+)\}")


def _resolve_refs(override: str, done: dict[str, Path]) -> str:
    def sub(m: re.Match) -> str:
        check(m.group(1) in done, f"table override {override!r} refers to row {m.group(1)!r} that has not run before it")
        return str(done[m.group(1)])

    return _ROW_REF.sub(sub, override)


def _check_drop_base(spec: TableSpec) -> None:
    for row in spec.rows:  # a typo would silently keep the overrides: fail before any row trains
        for g in row.drop_base:
            check(any(_in_group(o, g) for o in spec.base_overrides),
                  f"table {spec.name}: row {row.name!r} drop_base entry {g!r} matches no base override")


def _row_overrides(spec: TableSpec, row: TableRow, extra_overrides: list[str], done: dict[str, Path]) -> list[str]:
    overrides = [_resolve_refs(o, done) for o in [*row.base(spec.base_overrides), *row.overrides, *extra_overrides]]
    overrides += [f"task_name={spec.name}-{row.name}", f"logger.wandb.group={spec.name}", f"logger.wandb.name={row.name}",
                  f"logger.wandb.job_type={row.name}"] if not any(o.startswith("logger=") for o in overrides) else []
    return overrides


#: keys of a row's config that do not change its result (where files go, how progress is shown)
VOLATILE_KEYS = ("paths", "hydra", "logger", "callbacks", "tags", "task_name", "ckpt_path", "trainer.enable_progress_bar",
                 "data.cache_dir", "data.num_workers")
ROW_CONFIG_FILE = "row_config.json"
#: config keys added to lowbit after table rows may have been stored, with the value that reproduces what those
#: rows ran: a stored row without the key is compared as if it had this value (so a new option, at its old
#: behaviour, does not invalidate finished rows; any other value still does)
LATER_KEYS: dict[str, Any] = {"data.group_by_length": False, "data.length_group_batches": 50}


def save_run_config(cfg, row_dir: Path) -> None:
    """``<row>/.hydra/config.yaml``, as ``train.py`` writes it, so a row's checkpoint exports, deploys and
    benchmarks like any run's (``python -m lowbit.deploy <row>/checkpoints/last.ckpt``)."""
    from omegaconf import OmegaConf

    (row_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, row_dir / ".hydra" / "config.yaml")


def row_fingerprint(cfg) -> dict[str, Any]:
    """A row's composed config, flattened to dotted keys, without ``VOLATILE_KEYS``: what its numbers depend on."""
    from omegaconf import OmegaConf

    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif not any(prefix == v or prefix.startswith(v + ".") for v in VOLATILE_KEYS):
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def check_same_config(row_dir: Path, fingerprint: dict[str, Any]) -> None:
    """A row already (partly) run in ``row_dir`` must have been run with this config: one line naming the keys."""
    stored_file = row_dir / ROW_CONFIG_FILE
    if not stored_file.is_file():
        return
    stored = json.loads(stored_file.read_text())
    stored = {**{k: v for k, v in LATER_KEYS.items() if k in fingerprint}, **stored}
    differ = sorted((k for k in set(stored) | set(fingerprint) if stored.get(k, "<unset>") != fingerprint.get(k, "<unset>")),
                    key=lambda k: (k not in stored or k not in fingerprint, k))  # changed values before added/removed keys
    shown = ", ".join(f"{k}={stored.get(k, '<unset>')!r} (stored) vs {fingerprint.get(k, '<unset>')!r} (now)"
                      for k in differ[:3])
    check(not differ, f"{row_dir} was run with a different config: {shown}"
                      f"{f' (+{len(differ) - 3} more)' if len(differ) > 3 else ''}; use --out <another dir> or the same "
                      f"overrides")


def select_rows(spec: TableSpec, patterns: list[str] | None) -> set[str]:
    """The rows ``--rows`` names (globs on row names), with every earlier row they refer to (``{row:NAME}``,
    transitively): all rows without patterns. A pattern matching no row is an error naming the known rows."""
    import fnmatch

    names = [r.name for r in spec.rows]
    if not patterns:
        return set(names)
    chosen = set()
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        check(matched, f"--rows {pattern!r} matches no row of table {spec.name}; rows: {names}")
        chosen.update(matched)
    by_name = {r.name: r for r in spec.rows}
    todo = list(chosen)
    while todo:
        row = by_name[todo.pop()]
        for override in [*row.base(spec.base_overrides), *row.overrides]:
            for m in _ROW_REF.finditer(override):
                if m.group(1) not in chosen:
                    chosen.add(m.group(1))
                    todo.append(m.group(1))
    return chosen


def _compose_rows(spec: TableSpec, extra_overrides: list[str], out_dir: Path, selected: set[str] | None = None) -> None:
    """Compose every row and check its config (``lowbit.validate``), as ``run_table`` will run it, so a bad
    override (``data.bogus=1``) or metric fails in seconds, before the first row trains; a row already run in
    ``out_dir`` with a different config (another model, another budget) is refused, not reused. Rows outside
    ``selected`` (``--rows``) are checked only if done: they will be in the table written, so they must match."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lowbit.validate import validate_run_config

    planned = {r.name: out_dir / r.name for r in spec.rows}  # {row:NAME} as the run resolves it
    for row in spec.rows:
        if selected is not None and row.name not in selected and not (out_dir / row.name / "summary.json").exists():
            continue
        try:
            cfg = compose_train(_row_overrides(spec, row, extra_overrides, planned), out_dir / row.name)
            check_same_config(out_dir / row.name, row_fingerprint(cfg))
            if (out_dir / row.name / "summary.json").exists():
                continue
            validate_run_config(cfg)
        except (HydraException, OmegaConfBaseException) as e:
            raise LowbitConfigError(f"table {spec.name}: row {row.name}: {' '.join(str(e).split())}") from None
        except LowbitConfigError as e:
            raise LowbitConfigError(f"table {spec.name}: row {row.name}: {e}") from None


def run_table(spec: TableSpec, extra_overrides: list[str], out_dir: Path, wandb_mode: str = "auto",
              rows: list[str] | None = None) -> list[dict]:
    """Run the rows not done yet (only those ``rows`` selects, see ``select_rows``), then write and log the
    table of every row done."""
    from lowbit.pipeline import run

    check_spec(spec)
    if spec.compute is not None:
        check(not rows, f"table {spec.name} is computed, not trained: --rows does not apply")
        return run_computed_table(spec, extra_overrides, out_dir, wandb_mode)
    _check_drop_base(spec)
    selected = select_rows(spec, rows)
    _compose_rows(spec, extra_overrides, out_dir, selected)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    results = []
    for row in spec.rows:
        row_dir = out_dir / row.name
        summary_file = row_dir / "summary.json"
        if row.name not in selected:
            if summary_file.exists():  # done by an earlier run: in the table, not rerun
                done[row.name] = row_dir
                results.append(_table_row(spec, row, json.loads(summary_file.read_text())))
            continue
        if not summary_file.exists():
            overrides = _row_overrides(spec, row, extra_overrides, done)
            if not any(o.lstrip("+~").startswith("ckpt_path=") for o in overrides):
                overrides.append("ckpt_path=auto")  # a row interrupted mid-way resumes from its last.ckpt
            print(f"[{spec.name}] row {row.name}: {' '.join(overrides)}")
            cfg = compose_train(overrides, row_dir)
            row_dir.mkdir(parents=True, exist_ok=True)
            (row_dir / ROW_CONFIG_FILE).write_text(json.dumps(row_fingerprint(cfg), indent=1, default=str))
            save_run_config(cfg, row_dir)
            run(cfg)
        done[row.name] = row_dir
        metrics = json.loads(summary_file.read_text())
        results.append(_table_row(spec, row, metrics))
    write_table(spec, results, out_dir)
    log_wandb_table(spec, results, out_dir, wandb_mode)
    return results


def run_computed_table(spec: TableSpec, extra_overrides: list[str], out_dir: Path, wandb_mode: str = "auto") -> list[dict]:
    """A table whose rows a lowbit function computes (I-BERT Table 1: approximation errors); no training."""
    import importlib

    check(not extra_overrides, f"table {spec.name} is computed, not trained: it takes no overrides, got {extra_overrides}")
    module, function = spec.compute.split(":")
    values = getattr(importlib.import_module(module), function)()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for row in spec.rows:
        check(row.name in values, f"table {spec.name}: {spec.compute} computed no row {row.name!r}")
        results.append(_table_row(spec, row, values[row.name]))
    write_table(spec, results, out_dir)
    log_wandb_table(spec, results, out_dir, wandb_mode)
    return results


def _string_leaves(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _string_leaves(v)
    elif isinstance(node, list):
        for v in node:
            yield from _string_leaves(v)
    elif isinstance(node, str):
        yield node


def _deferred_groups(cfg, refs: dict[str, Path]) -> dict[str, str]:
    """Top-level config keys of ``cfg`` that read a not-yet-existing file under an earlier row's directory."""
    from omegaconf import OmegaConf

    deferred: dict[str, str] = {}
    for key in cfg:
        node = cfg[key]
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        for leaf in _string_leaves(value):
            for ref, ref_dir in refs.items():
                if leaf.startswith(str(ref_dir)) and not Path(leaf).exists():
                    deferred[key] = f"reads {leaf}, made from the output of row {ref!r} (not there yet; keys checked)"
    return deferred


def dry_run_table(spec: TableSpec, extra_overrides: list[str], out_dir: Path, rows: list[str] | None = None) -> list[dict]:
    """Compose and instantiate every row's config as ``run_table`` would run it; nothing is trained or written.

    Rows already done (``summary.json``) are skipped, as ``run_table`` skips them. Raises one
    ``LowbitConfigError`` naming every row that fails.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lowbit.pipeline import dry_run

    check_spec(spec)
    if spec.compute is not None:  # nothing to compose: check the function exists
        import importlib

        module, function = spec.compute.split(":")
        check(callable(getattr(importlib.import_module(module), function, None)),
              f"table {spec.name}: compute={spec.compute!r} is not a function")
        return [{"row": r.name, "status": "computed"} for r in spec.rows]
    _check_drop_base(spec)
    selected = select_rows(spec, rows)
    done: dict[str, Path] = {}
    results, failures = [], []
    for row in spec.rows:
        row_dir = out_dir / row.name
        result: dict[str, Any] = {"row": row.name}
        if row.name not in selected:
            done[row.name] = row_dir
            continue
        if (row_dir / "summary.json").exists():
            result["status"] = "done (skipped, as a real run would)"
        else:
            try:
                overrides = _row_overrides(spec, row, extra_overrides, done)
                refs = {m.group(1): done[m.group(1)] for o in [*row.base(spec.base_overrides), *row.overrides,
                                                               *extra_overrides] for m in _ROW_REF.finditer(o)}
                result["overrides"] = overrides
                cfg = compose_train(overrides, row_dir)
                deferred = _deferred_groups(cfg, refs)
                summary = dry_run(cfg, defer=deferred)
                result.update(status="ok" if not deferred else "composed; some groups wait for an earlier row",
                              summary=summary)
            except (LowbitConfigError, HydraException, OmegaConfBaseException) as e:
                msg = " ".join(str(e).split())
                result.update(status="error", error=msg)
                failures.append(f"row {row.name}: {msg}")
        done[row.name] = row_dir
        results.append(result)
        line = f"[{spec.name}] row {row.name}: {result['status']}"
        if result["status"] == "error":
            line += f": {result['error']}"
        elif "summary" in result:
            s = result["summary"]
            line += " (" + (", ".join(f"{g}={o}" for g, o in s["methods"].items() if isinstance(o, str) and o != "none")
                            or "no compression method") + ")"
            for key, reason in s["deferred"].items():
                line += f"\n    {key}: not instantiated: {reason}"
        print(line)
    check(not failures, f"table {spec.name}: {len(failures)} of {len(results)} row(s) fail the dry run: "
                        + "; ".join(failures))
    print(f"[{spec.name}] dry run OK: {len(results)} rows compose (nothing trained or written)")
    return results


def _table_row(spec: TableSpec, row: TableRow, metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"row": row.name, "paper_row": row.paper_label or row.name}
    for m in spec.metrics:
        value = metrics.get(m)
        out[f"ours {m}"] = (None if value is None else round(100 * value, 2) if spec.shows_percent(m)
                            else float(f"{value:.4g}"))
    if "model/size_mb" in metrics:
        out["size MB"] = round(metrics["model/size_mb"], 3)
        out["compression"] = round(metrics["model/compression"], 2)
    for key, value in row.paper.items():
        out[f"paper {key}"] = value
    out["paper source"] = spec.paper_source
    return out


def write_table(spec: TableSpec, results: list[dict], out_dir: Path) -> None:
    columns = list(dict.fromkeys(k for r in results for k in r))
    with (out_dir / f"{spec.name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(results)
    fmt = lambda v: "–" if v is None else str(v)
    lines = [f"### {spec.title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in results]
    if spec.paper_source == "recalled":
        lines += ["", "Paper numbers are recalled (see shared/docs/paper-tables.md), not verified."]
    elif spec.paper_source == "seed summary":
        lines += ["", ("Paper numbers are the figures a published summary of the paper states (shared/docs/paper-tables.md: "
                       "seed summary); the paper's full tables were not recovered.")]
    if spec.notes:
        lines += ["", spec.notes.strip()]
    (out_dir / f"{spec.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def log_wandb_table(spec: TableSpec, results: list[dict], out_dir: Path, mode: str) -> None:
    import wandb

    from lowbit.tracking import resolve_wandb_mode
    from lowbit.wandb_charts import row_settings, table_charts, with_deltas

    rows = with_deltas(spec, results)  # the paper columns and Δ = ours − paper
    columns = list(dict.fromkeys(k for r in rows for k in r))
    run = wandb.init(project="lowbit", name=spec.name, group=spec.name, job_type="table", dir=str(out_dir),
                     mode=resolve_wandb_mode(mode), config={"table": spec.name, "title": spec.title})
    run.log({spec.name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
             **table_charts(spec, results, row_settings(out_dir, [r["row"] for r in results]))})
    run.summary["paper_source"] = spec.paper_source
    run_dir = Path(run.dir).parent
    sync = f" (upload later with: wandb sync {run_dir})" if run.settings.mode == "offline" else ""
    print(f"W&B table {spec.name!r} logged ({run.settings.mode}) to {run_dir}{sync}; its rows' runs share the group "
          f"{spec.name!r}, one job_type per row")
    run.finish()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="name of conf/table/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every row (e.g. data.max_train_samples=4000)")
    p.add_argument("--out", default=None, help="output dir (default logs/tables/<name>); reruns resume there")
    p.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"])
    p.add_argument("--rows", action="append", metavar="GLOB",
                   help="run only the rows matching GLOB (repeatable; e.g. 'sst2_*') and the rows they refer to")
    p.add_argument("--dry-run", action="store_true",
                   help="compose and instantiate every row's config without training or writing anything")
    a = p.parse_intermixed_args(argv)  # overrides may come after --out
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        # ``--rows a b`` takes only ``a``; ``b`` would otherwise reach Hydra as a bare override with a lexer error
        for o in a.overrides:
            check("=" in o or o.startswith("~"),
                  f"argument {o!r} is not a KEY=VALUE override (to pick several rows, repeat --rows: --rows A --rows B)")
        spec = TableSpec.load(a.table)
        if a.dry_run:
            return dry_run_table(spec, a.overrides, Path(a.out or Path("logs") / "tables" / a.table), a.rows)
        return run_table(spec, a.overrides, Path(a.out or Path("logs") / "tables" / a.table), a.wandb_mode, a.rows)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: {e}") from None
    except (HydraException, OmegaConfBaseException) as e:  # a bad override met while a row composes
        raise SystemExit(f"lowbit: error: table {a.table}: {' '.join(str(e).split())}") from None


if __name__ == "__main__":
    main()
