"""Every command documented in README.md and experiments/**/README.md still works, as a dry run.

The READMEs are parsed when the tests run (fenced code blocks and inline `code`), so a command
added or edited later is checked too. Each ``python train.py ...`` / ``python -m lowbit.<module> ...``
command becomes one test, its id the command as documented, and is checked without training:

- ``python train.py OVERRIDES`` (and ``-m`` sweeps): the config composed and everything a run builds
  before training instantiated (``lowbit.pipeline.dry_run``: model spec, data module, every method
  group, optimizer, callbacks, trainer); for a sweep, the search space parsed with the
  ``lowbit_optuna`` sweeper's grammar and one trial's config dry-run;
- ``python -m lowbit.tables NAME ...``: ``tables.main([..., "--dry-run"])`` (every row);
- ``python -m lowbit.hessian ...``: ``hessian.dry_run=true``;
- ``python -m lowbit.export CKPT OUT``: run for real when CKPT is the tiny session run, else the
  argument parsing only;
- ``python -m lowbit.bench NAME ...``: NAME is a benchmark and its parser accepts the options.
- ``python -m lowbit.deploy CKPT ...``: the options parse and the backend is registered.

Placeholders (``<run dir>``, ``logs/.../checkpoints/best.ckpt``, ``NAME``, ``...``) are replaced as
``SUBSTITUTIONS`` says, by files of a tiny run built once per session. A command the extractor
cannot handle fails (it is not skipped) with a message saying what to teach it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TINY_RUN

#: the documents whose commands are checked (globbed at test time)
DOC_GLOBS = ("README.md", "experiments/**/README.md")

#: how a command is recognised anywhere in a document (the completeness check counts these)
MENTION = re.compile(r"(?<![\w./-])(?:[\w./-]*/)?python3?\s+(?:train\.py|-m\s+lowbit\.)")
#: a command after its prefixes are stripped
COMMAND = re.compile(r"^python (?:train\.py|-m lowbit\.[\w.]+)(?=\s|$)")
#: what may precede ``python`` on a line and is dropped: env assignments, taskset, nohup, time
PREFIXES = (re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*\s+"), re.compile(r"^taskset\s+(?:-c\s+)?\S+\s+"),
            re.compile(r"^nohup\s+"), re.compile(r"^time\s+"))
PYTHON = re.compile(r"^(?:[\w.~-]*/)*python3?(?=\s)")  # .venv/bin/python, python3 -> python

#: (pattern, replacement, why). Applied in order to the documented command before it is split into
#: arguments. Replacements name the session's tiny run: {run_dir}, {ckpt}, {hessian_json}, {tmp}.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"<run dir>/finetune/checkpoints/best\.ckpt", "{ckpt}", "a run's fine-tuned teacher: the tiny run's best.ckpt"),
    (r"<(?:that )?run dir>", "{run_dir}", "a finished run's directory: the tiny session run"),
    (r"<fp32 best\.ckpt>|<ckpt>|(?<!\S)CKPT(?!\S)", "{ckpt}", "a run's checkpoint: the tiny run's best.ckpt"),
    (r"logs/(?:\.\.\.|…)/checkpoints/best\.ckpt", "{ckpt}", "a run's best checkpoint: the tiny run's"),
    (r"logs/(?:\.\.\.|…)/checkpoints/best\.hessian\.json", "{hessian_json}",
     "the spectrum python -m lowbit.hessian writes beside that checkpoint: computed on the tiny run"),
    (r"logs/tables[\w-]*/[\w-]+/[\w-]+/checkpoints/best\.ckpt", "{ckpt}",
     "a table row's checkpoint (made by python -m lowbit.tables): the tiny run's"),
    (r"\{row:[\w-]+\}", "{run_dir}", "an earlier table row's directory: the tiny run's"),
    (r"(?<!\S)OUT(?!\S)", "{tmp}/export/OUT", "an output directory: under the session's tmp dir"),
    (r"\+experiment=NAME(?!\S)", "+experiment=demo_sst2", "any experiment: the make-demo one"),
    (r"\+hparams_search=SPACE(?!\S)", "+hparams_search=bits_lr", "any search space: bits_lr"),
    (r"(lowbit\.tables\s+)NAME(?!\S)", r"\1ternarybert_table1_sst2", "any table: TernaryBERT Table 1"),
    (r"\[overrides for every row\]", "data.max_train_samples=1000", "overrides for every row: the README's example"),
    (r"(lowbit\.bench\s+)NAME(?!\S)", r"\1export_size", "any benchmark: export_size"),
    (r"\[(?:overrides|budget overrides|options|--options|--opts)\]", "",
     "optional extra arguments: none"),
    (r"(?<!\S)(?:\.\.\.|…)(?!\S)", "", "a bare ellipsis ('the overrides as before'): dropped"),
    (r"(?<!\S)trainer=gpu(?!\S)", "trainer=gpu trainer.accelerator=cpu",
     "a GPU command, checked on this GPU-less machine: everything but the device"),
]
#: what is left over after SUBSTITUTIONS and still looks like a placeholder
LEFTOVER = [re.compile(p) for p in (r"<[^<>\s][^<>]*>", r"\.\.\.|…", r"\{row:", r"\[[A-Za-z][A-Za-z ]* [A-Za-z ]*\]",
                                      r"(?:(?<=\s)|(?<==)|^)[A-Z][A-Z0-9_]{2,}(?=\s|$)")]
LITERAL_CAPS = {"INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL"}

HOW_TO_TEACH = ("teach tests/test_documented_commands.py: add the placeholder to SUBSTITUTIONS, a prefix to "
                "PREFIXES, or a checker to CHECKERS")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------
@dataclass
class DocCommand:
    text: str                      # the command as documented (one line, comments and prefixes stripped)
    where: list[str] = field(default_factory=list)  # README.md:42, ...
    problem: str | None = None     # why the extractor cannot handle it (the test then fails)


def doc_files(root: Path = ROOT) -> list[Path]:
    return sorted({p for g in DOC_GLOBS for p in root.glob(g) if p.is_file()})


def _outside_quotes(s: str):
    """(index, char, inside quotes) for each char of a shell line."""
    quote = None
    for i, ch in enumerate(s):
        if quote:
            if ch == quote:
                quote = None
            yield i, ch, True
        else:
            if ch in "'\"":
                quote = ch
                yield i, ch, True
            else:
                yield i, ch, False


def strip_comment(line: str) -> str:
    for i, ch, quoted in _outside_quotes(line):
        if ch == "#" and not quoted and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def split_shell(line: str) -> list[str]:
    """A shell line cut at ``&&``, ``||``, ``;``, ``|`` and ``&`` (outside quotes)."""
    parts, start = [], 0
    for i, ch, quoted in _outside_quotes(line):
        if not quoted and ch in "&;|" and i >= start:
            parts.append(line[start:i])
            start = i + 2 if line[i:i + 2] in ("&&", "||") else i + 1
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def snippets(text: str) -> list[tuple[int, str]]:
    """(line number, shell text) of every fenced-block logical line and every inline code span."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    prose = []
    fence, pending, pending_line = None, "", 0
    for n, line in enumerate(lines, 1):
        marker = re.match(r"^\s*(```|~~~)", line)
        if fence is None and marker:
            fence = marker.group(1)
            prose.append("")
            continue
        if fence is not None:
            prose.append("")
            if line.strip().startswith(fence):
                fence = None
                if pending:
                    out.append((pending_line, pending))
                pending = ""
                continue
            body = line.rstrip()
            if not pending:
                pending_line = n
            if body.endswith("\\"):
                pending += body[:-1] + " "
                continue
            out.append((pending_line, pending + body))
            pending = ""
            continue
        prose.append(line)
    joined = "\n".join(prose)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        out.append((joined.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return sorted(out)


def normalise(segment: str) -> str | None:
    """The segment as ``python train.py ...`` / ``python -m lowbit.X ...``, or None if it is not one."""
    s = " ".join(segment.split())
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if p.match(s) and not PYTHON.match(s):
                s, changed = p.sub("", s, count=1), True
    s = PYTHON.sub("python", s)
    return s if COMMAND.match(s) else None


#: sections that document commands meant to fail (their messages are tests/test_bad_inputs.py's cases)
FAILURE_SECTIONS = re.compile(r"^(#+)\s+Bad input\b")


def without_failure_sections(text: str) -> str:
    """``text`` with the lines of ``FAILURE_SECTIONS`` blanked (line numbers kept)."""
    out, level = [], None
    for line in text.splitlines():
        heading = re.match(r"^(#+)\s", line)
        if heading and level is not None and len(heading.group(1)) <= level:
            level = None
        m = FAILURE_SECTIONS.match(line)
        if m:
            level = len(m.group(1))
        out.append("" if level is not None else line)
    return "\n".join(out)


def extract(text: str, name: str = "<text>") -> list[DocCommand]:
    """Every documented command of one document, in order (duplicates kept)."""
    found: list[DocCommand] = []
    text = without_failure_sections(text)
    for line_no, snippet in snippets(text):
        for segment in split_shell(strip_comment(snippet)):
            if not MENTION.search(segment):
                continue
            cmd = normalise(segment)
            if cmd is None:  # a command quoted in parentheses inside a listing: "bench/  ... (python -m lowbit.bench NAME)"
                inner = re.search(r"\((" + MENTION.pattern + r"[^()]*)\)", segment)
                cmd = normalise(inner.group(1)) if inner and len(MENTION.findall(segment)) == 1 else None
            where = f"{name}:{line_no}"
            if cmd is None:
                found.append(DocCommand(" ".join(segment.split()), [where],
                                        f"cannot tell where the command starts in {segment!r}; {HOW_TO_TEACH}"))
            else:
                found.append(DocCommand(cmd, [where]))
    return found


def mentions(text: str) -> int:
    return len(MENTION.findall(without_failure_sections(text)))


def documented_commands() -> list[DocCommand]:
    by_text: dict[str, DocCommand] = {}
    for path in doc_files():
        for c in extract(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))):
            if c.text in by_text:
                by_text[c.text].where += c.where
            else:
                by_text[c.text] = c
    return list(by_text.values())


# --------------------------------------------------------------------------------------------
# placeholders -> the tiny session run
# --------------------------------------------------------------------------------------------
@dataclass
class TinyRun:
    tmp: Path
    run_dir: Path
    ckpt: Path
    hessian_json: Path

    def fill(self, text: str) -> str:
        values = {"run_dir": str(self.run_dir), "ckpt": str(self.ckpt), "hessian_json": str(self.hessian_json),
                  "tmp": str(self.tmp)}
        for pattern, repl, _ in SUBSTITUTIONS:
            text = re.sub(pattern, lambda m, r=repl: m.expand(r).format(**values), text)
        return " ".join(text.split())


def leftover_placeholders(filled: str) -> list[str]:
    left = [m.group(0) for p in LEFTOVER for m in p.finditer(filled)]
    return [x for x in left if x not in LITERAL_CAPS]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """A tiny run directory as ``python train.py`` leaves it: ``.hydra/config.yaml``, ``checkpoints/{best,last}.ckpt``
    and the spectrum ``python -m lowbit.hessian`` writes beside ``best.ckpt``.

    Built with lowbit's own builders (random tiny BERT, ternary 2-2-8 prepared, the Lightning module's
    state_dict) rather than trained: a 1-step run spends most of its time tokenizing, and a dry run only
    needs the files to exist; ``python -m lowbit.export`` loads and packs this checkpoint for real.
    """
    import pytorch_lightning as pl
    import torch
    import yaml
    from omegaconf import OmegaConf

    from lowbit.builder import build_model
    from lowbit.compose import compose_train
    from lowbit.data.tasks import GLUE_TASKS
    from lowbit.hessian.spectrum import block_spectrum, hessian_blocks
    from lowbit.methods import all_param_groups
    from lowbit.module import CompressionModule
    from lowbit.optim import build_optim

    tmp = tmp_path_factory.mktemp("documented_commands")
    run_dir = tmp / "run"
    overrides = [*TINY_RUN, "quantizer=ternary_twn", "bit_assignment=w2e2"]
    cfg = compose_train(overrides, run_dir, root_dir=ROOT, log_dir=tmp / "logs", cache_dir=tmp / "cache")
    torch.manual_seed(0)
    built = build_model(cfg, num_labels=2)
    module = CompressionModule(built.model, GLUE_TASKS.get("sst2"), built.methods, build_optim(cfg.optim),
                               all_param_groups(built.methods, built.model))
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 1, "pytorch-lightning_version": pl.__version__}
    torch.save(state, ckpt)
    torch.save(state, ckpt.with_name("last.ckpt"))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    # the spectrum of the float model, as python -m lowbit.hessian hessian.checkpoint=<ckpt> writes it
    floating = build_model(cfg, num_labels=2, with_methods=False).model
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (4, 12), generator=g), "attention_mask": torch.ones(4, 12, dtype=torch.long),
                "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny HVPs: thread hand-offs cost more than they save on a shared machine
    try:
        blocks = block_spectrum(floating, batches, hessian_blocks(floating, ["layer"]), "lanczos", 1e-2, 3, False, 0)
    finally:
        torch.set_num_threads(threads)
    hessian_json = ckpt.with_suffix(".hessian.json")
    hessian_json.write_text(json.dumps({"model": cfg.model.name, "task": "sst2", "n_batches": len(batches),
                                        "blocks": blocks, "negative_blocks": [n for n, b in blocks.items() if b["negative"]]}))
    return TinyRun(tmp, run_dir, ckpt, hessian_json)


# --------------------------------------------------------------------------------------------
# checkers: one per command kind; each raises on failure and returns a short description
# --------------------------------------------------------------------------------------------
def _compose(overrides: list[str], tiny: TinyRun):
    from lowbit.compose import compose_train

    return compose_train(overrides, tiny.tmp / "out", root_dir=ROOT, log_dir=tiny.tmp / "logs",
                         cache_dir=tiny.tmp / "cache")


def _dry_run(overrides: list[str], tiny: TinyRun) -> dict:
    from lowbit.pipeline import dry_run

    return dry_run(_compose(overrides, tiny))


def _first(distribution) -> Any:
    choices = getattr(distribution, "choices", None)
    return choices[0] if choices is not None else distribution.low


def check_sweep(overrides: list[str], tiny: TinyRun) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    _compose([o.input_line for o in parsed if not o.is_sweep_override()], tiny)  # which sweeper, which space
    sweeper = HydraConfig.get().sweeper
    if not str(sweeper.get("_target_", "")).endswith("LowbitOptunaSweeper"):  # Hydra's basic sweeper: each value once
        n = max([len(list(o.sweep_string_iterator())) for o in sweeps] or [1])
        for i in range(n):
            combo = [f"{o.get_key_element()}={(v := list(o.sweep_string_iterator()))[min(i, len(v) - 1)]}"
                     if o.is_sweep_override() else o.input_line for o in parsed]
            _dry_run(combo, tiny)
        return f"basic sweeper, {n} job(s) dry-run"
    from hydra_plugins.lowbit_optuna_sweeper._impl import (
        LowbitOptunaSweeperImpl,
        _config_value_to_str,
        create_params_from_overrides,
        format_override_value,
    )

    raw = OmegaConf.to_container(sweeper, resolve=False)
    params = sweeper.get("params") or {}
    entries = [(f"hydra.sweeper.params.{k}", f"{k}={_config_value_to_str(v)}") for k, v in params.items()]
    entries += [("command-line override", a) for a in overrides]
    distributions, fixed = create_params_from_overrides(entries)
    impl = LowbitOptunaSweeperImpl(**{k: raw.get(k) for k in ("sampler", "direction", "study_name", "storage",
                                                               "n_trials", "n_jobs", "max_failures", "params",
                                                               "custom_search_space")})
    impl.params = params
    impl._validate()
    if sweeper.get("sampler") is not None:
        instantiate(sweeper.sampler)
    trial = [f"{k}={format_override_value(_first(d))}" for k, d in distributions.items()]
    trial += [f"{k}={v}" for k, v in fixed.items()]
    _dry_run(trial, tiny)
    return f"lowbit_optuna: {len(distributions)} searched param(s) parse; trial {trial} dry-runs"


def check_train(args: list[str], tiny: TinyRun) -> str:
    flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    if flags:
        raise Unhandled(f"train.py flag(s) {flags} have no dry-run meaning; {HOW_TO_TEACH}")
    overrides = [a for a in args if not a.startswith("-") and not a.startswith("+dry_run=")]
    if "-m" in args or "--multirun" in args:
        return check_sweep(overrides, tiny)
    summary = _dry_run(overrides, tiny)
    return json.dumps(summary["methods"])


def check_tables(args: list[str], tiny: TinyRun) -> str:
    from lowbit.tables import main

    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args = [*args, "--out", str(tiny.tmp / "tables" / (args[0] if args else "none"))]
    rows = main([*args, "--dry-run"])
    return f"{len(rows)} rows"


def check_hessian(args: list[str], tiny: TinyRun) -> str:
    from lowbit.hessian.analysis import main

    result = main([*args, "hessian.dry_run=true"])
    assert result.get("dry_run") is True, "hessian.dry_run=true did not stop before loading data"
    return f"{result['model']} on {result['task']}"


def check_export(args: list[str], tiny: TinyRun) -> str:
    import lowbit.export.__main__ as export_cli

    positional = [a for a in args if not a.startswith("-")]
    if positional and Path(positional[0]) == tiny.ckpt:  # the tiny run: export it for real, into tmp
        out = Path(positional[1]) if len(positional) > 1 else None
        if out is not None and not out.is_absolute():
            args = [a if a != positional[1] else str(tiny.tmp / "export" / a) for a in args]
        facts = export_cli.main(args)
        return f"exported for real ({' '.join(args)}): {facts['ratio']:.1f}x smaller"
    calls = []
    original = export_cli.export_checkpoint
    export_cli.export_checkpoint = lambda *a, **k: calls.append(a) or {"packed_layers": 0, "weights_bytes": 1,
                                                                        "fp32_safetensors_bytes": 1, "ratio": 1.0}
    try:
        export_cli.main(args)
    finally:
        export_cli.export_checkpoint = original
    return f"arguments parse (checkpoint is not the tiny run): {calls}"


def check_bench(args: list[str], tiny: TinyRun) -> str:
    from lowbit.bench.__main__ import BENCHMARKS

    if not args or args[0] not in BENCHMARKS:
        raise AssertionError(f"unknown benchmark {args[:1]}; known: {sorted(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[args[0]])
    module.parser().parse_args(args[1:])
    return f"{args[0]} options parse"


def check_deploy(args: list[str], tiny: TinyRun) -> str:
    """Arguments parse and the backend exists; deploying a real run is ``tests/test_int8_cpu.py``'s."""
    from lowbit.deploy import BACKENDS
    from lowbit.deploy.__main__ import parser

    a = parser().parse_args(args)
    BACKENDS.get(a.backend)
    return f"options parse, backend {a.backend} registered"


def check_report(args: list[str], tiny: TinyRun) -> str:
    """Options parse and the site builds: ``logs`` (the default root; absent from a fresh clone) is the session's
    tiny run, any other root must be a committed directory (``experiments/qbert/results``); ``--wandb`` is not
    called (its one-line error without an API key is tests/report's)."""
    from lowbit.report import build_report
    from lowbit.report.__main__ import parser

    a = parser().parse_args(args)
    roots = []
    for root in a.roots or [Path("logs")]:
        if str(root) == "logs":
            roots.append(tiny.run_dir)
        else:
            assert (ROOT / root).is_dir(), f"documented report root {str(root)!r} is not a directory of the repository"
            roots.append(ROOT / root)
    index = build_report(roots, tiny.tmp / "report")
    return f"site built from {[str(r) for r in roots]}: {index}"


CHECKERS: dict[str, Callable[[list[str], TinyRun], str]] = {
    "train.py": check_train, "lowbit.tables": check_tables, "lowbit.hessian": check_hessian,
    "lowbit.export": check_export, "lowbit.bench": check_bench, "lowbit.deploy": check_deploy,
    "lowbit.report": check_report,
}


class Unhandled(Exception):
    """The extractor / substitutions cannot turn this documented command into a check."""


def to_argv(text: str, tiny: TinyRun) -> tuple[str, list[str]]:
    """(checker name, arguments) of a documented command, placeholders filled in."""
    filled = tiny.fill(text)
    left = leftover_placeholders(filled)
    if left:
        raise Unhandled(f"placeholder(s) {left} left after substitution; {HOW_TO_TEACH}")
    try:
        tokens = shlex.split(filled)
    except ValueError as e:
        raise Unhandled(f"cannot split into arguments ({e}); {HOW_TO_TEACH}") from None
    if tokens[1] == "-m":
        kind, args = tokens[2], tokens[3:]
    else:
        kind, args = tokens[1], tokens[2:]
    if kind not in CHECKERS:
        raise Unhandled(f"no checker for `python {'-m ' if tokens[1] == '-m' else ''}{kind}`; {HOW_TO_TEACH}")
    return kind, args


_RESULTS: dict[tuple, tuple[bool, str]] = {}


def _error_text(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"exit {e.code}" if isinstance(e.code, int) else str(e.code)
    parts, seen = [], e
    while seen is not None:
        msg = " ".join(str(seen).split())
        parts.append(f"{type(seen).__name__}: {msg}" if msg else type(seen).__name__)
        seen = seen.__cause__ or (seen.__context__ if not seen.__suppress_context__ else None)
    return " <- ".join(dict.fromkeys(parts))


def dry_run_command(text: str, tiny: TinyRun) -> tuple[bool, str, str]:
    """(ok, what was run, description or error) for one documented command; identical runs are memoised."""
    try:
        kind, args = to_argv(text, tiny)
    except Unhandled as e:
        return False, text, str(e)
    ran = " ".join(["python", *(["train.py"] if kind == "train.py" else ["-m", kind]), *map(shlex.quote, args)])
    key = (kind, tuple(args))
    if key not in _RESULTS:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                _RESULTS[key] = (True, CHECKERS[kind](args, tiny))
        except (Exception, SystemExit) as e:
            stderr = " ".join(err.getvalue().split()[-60:])
            _RESULTS[key] = (False, _error_text(e) + (f" (stderr: {stderr})" if stderr else ""))
    ok, info = _RESULTS[key]
    return ok, ran, info


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------
COMMANDS = documented_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[c.text for c in COMMANDS])
def test_documented_command_dry_runs(command: DocCommand, tiny_run):
    where = ", ".join(command.where)
    if command.problem:
        pytest.fail(f"documented command ({where}) cannot be checked: {command.problem}", pytrace=False)
    try:
        to_argv(command.text, tiny_run)
    except Unhandled as e:
        pytest.fail(f"documented command cannot be checked\n  documented: {command.text}\n  in: {where}\n  {e}",
                    pytrace=False)
    ok, ran, info = dry_run_command(command.text, tiny_run)
    if not ok:
        pytest.fail(f"documented command fails its dry run\n  documented: {command.text}\n  in: {where}\n"
                    f"  ran as: {ran}\n  error: {info}\n(fix the command in the README, or the code it documents)",
                    pytrace=False)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_mention_of_a_command_is_extracted(path: Path):
    text = path.read_text(encoding="utf-8")
    got = extract(text, path.name)
    assert len(got) == mentions(text), (
        f"{path.relative_to(ROOT)} mentions `python train.py` / `python -m lowbit.` {mentions(text)} times but "
        f"{len(got)} command(s) were extracted ({[c.text for c in got]}): a command outside a code block or "
        f"inline code, or a form the extractor does not know; {HOW_TO_TEACH}")


def test_the_docs_have_commands():
    assert (ROOT / "README.md") in doc_files() and len(COMMANDS) >= 10, [c.text for c in COMMANDS]


SAMPLE = r"""
Run `python train.py +experiment=demo_sst2
data.max_train_samples=8` or see below.

```bash
# a comment line
OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python train.py +experiment=qbert_sst2 \
    "bit_assignment.bit_choices=[2,3]" quantizer.n_groups=8   # trailing comment
python -m lowbit.tables qbert_groups [budget overrides] & python -m lowbit.bench qat_step --steps 2 &
make demo   # not a python command
src/           the package (python -m lowbit.export CKPT OUT)
```
"""


def test_extractor_reads_blocks_inline_code_continuations_and_prefixes():
    assert [c.text for c in extract(SAMPLE)] == [
        "python train.py +experiment=demo_sst2 data.max_train_samples=8",
        'python train.py +experiment=qbert_sst2 "bit_assignment.bit_choices=[2,3]" quantizer.n_groups=8',
        "python -m lowbit.tables qbert_groups [budget overrides]",
        "python -m lowbit.bench qat_step --steps 2",
        "python -m lowbit.export CKPT OUT",
    ]
    assert mentions(SAMPLE) == 5


def test_extractor_fails_on_what_it_cannot_handle(tiny_run):
    # a launcher prefix it does not know: the command is reported with the way to teach it
    (cmd,) = extract("```\nsrun -n 1 python train.py +experiment=demo_sst2\n```\n", "X.md")
    assert cmd.problem and "PREFIXES" in cmd.problem
    # a placeholder it does not know
    ok, _, info = dry_run_command("python train.py +experiment=demo_sst2 model.init_checkpoint=<teacher ckpt>",
                                  tiny_run)
    assert not ok and "<teacher ckpt>" in info and "SUBSTITUTIONS" in info
    ok, _, info = dry_run_command("python -m lowbit.nosuchmodule x", tiny_run)
    assert not ok and "CHECKERS" in info


BROKEN = [  # (a broken command, what its failure must say)
    ("python train.py +experiment=qbert_sst2 bit_assignment.bitz=2", "bitz"),                      # stale key
    (("python train.py +experiment=qbert_sst2 bit_assignment=hessian +bit_assignment.bits_old=4 "  # composes, does
      "bit_assignment.sensitivity_file=logs/.../checkpoints/best.hessian.json"), "bits_old"),      # not instantiate
    ("python train.py +experiment=qbert_sst2 bit_assignment=hessian", "sensitivity_file"),         # needs the JSON
    ("python train.py +experiment=qbert_sst2 bit_assignment.bits=1", "bit_assignment.bits"),       # bad value
    (("python train.py -m +experiment=demo_sst2 +hparams_search=bits_lr "
      "'optim.weight_decay=interval(0.1, 0.01)'"), "interval lower bound"),                        # bad search space
    ("python -m lowbit.tables no_such_table", "unknown table"),
    ("python -m lowbit.tables ternarybert_table1_sst2 quantizer.bitz=2", "quantizer.bitz"),
    ("python -m lowbit.hessian hessian.metod=lanczos", "hessian.metod"),
    ("python -m lowbit.hessian hessian.checkpoint=logs/missing/best.ckpt", "does not exist"),
    ("python -m lowbit.export", "exit 2"),
    ("python -m lowbit.bench hessian --batchez 4", "--batchez"),
    ("python -m lowbit.bench no_such_bench", "unknown benchmark"),
]


@pytest.mark.parametrize("text, says", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_command_fails_with_a_useful_message(text, says, tiny_run):
    ok, _, info = dry_run_command(text, tiny_run)
    assert not ok, f"{text!r} should fail its dry run"
    assert says in info, info


def test_a_basic_sweep_dry_runs_each_value(tiny_run):
    ok, _, info = dry_run_command("python train.py -m +experiment=demo_sst2 bit_assignment.bits=2,4", tiny_run)
    assert ok and "basic sweeper, 2 job(s)" in info, info
    ok, _, info = dry_run_command("python train.py -m +experiment=demo_sst2 bit_assignment.bits=2,1", tiny_run)
    assert not ok and "bit_assignment.bits" in info, info


def test_a_broken_readme_command_is_caught(tiny_run):
    """README.md as it is, with one documented override made stale in a copy: that command, and only it, fails."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next((ln for ln in readme.splitlines() if re.match(r"python train\.py .*\s[a-z_]+\.[a-z_.]+=", ln)), None)
    assert line, "README.md has no `python train.py ... group.key=value` line left: pick another command to break here"
    key = re.search(r"\s([a-z_]+\.[a-z_.]+)=", line).group(1)
    broken = readme.replace(line, line.replace(f" {key}=", f" {key}_stale=", 1), 1)
    before = {c.text for c in extract(readme)}
    (changed,) = [c for c in extract(broken) if c.text not in before]
    assert f"{key}_stale=" in changed.text
    ok, _, info = dry_run_command(changed.text, tiny_run)
    assert not ok and f"{key}_stale" in info, info


def test_train_py_dry_run_flag(tmp_path, capsys):
    """``python train.py ... +dry_run=true`` prints the summary and returns without training."""
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    argv = ["train.py", "+experiment=qbert_sst2", "+dry_run=true", f"hydra.run.dir={tmp_path}/run",
            f"paths.log_dir={tmp_path}/logs", "logger=none"]
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        out = capsys.readouterr().out
        assert "dry run OK" in out and '"quantizer": "groupwise"' in out
        assert not (tmp_path / "run" / "checkpoints").exists()
        mp.setattr(sys, "argv", [*argv[:2], "bit_assignment.bits=1", *argv[2:]])
        GlobalHydra.instance().clear()
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        assert e.value.code == 2 and "lowbit: error: bit_assignment.bits" in capsys.readouterr().err
