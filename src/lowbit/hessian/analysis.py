"""``python -m lowbit.hessian [training overrides] [hessian.OPTION=VALUE ...]``.

Composes the training config (``+experiment=...``), builds the float model, loads the
fine-tuned weights from ``hessian.checkpoint`` (a Lightning ckpt of ``CompressionModule``,
whose state_dict holds the HF model under ``model.``), takes ``hessian.fraction`` of the
training set, and writes per-block top eigenvalues to ``<checkpoint>.hessian.json`` (or
``hessian.out``). A JSON computed with the same options is reused unless ``hessian.force=true``.
The per-layer table and bar chart go to W&B (offline without an API key). ``hessian.dry_run=true``
parses the options, composes the config and checks the model spec, data files and checkpoint
exist, then returns before loading any data or weights.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lowbit.errors import LowbitConfigError, check
from lowbit.hessian.eigen import EIGEN_SOLVERS
from lowbit.hessian.spectrum import BLOCK_KINDS, block_spectrum, hessian_blocks

PREFIX = "hessian."


@dataclass
class HessianOptions:
    checkpoint: str | None = None  # Lightning ckpt to analyse; null = the model as built (pretrained)
    fraction: float = 0.1          # of the (subset) training data, as in the paper
    max_batches: int | None = None
    batch_size: int | None = None  # null: data.batch_size
    method: str = "power"          # power (paper/code) | lanczos
    tol: float = 1e-2              # relative change, code default
    max_iter: int = 100
    blocks: list[str] = field(default_factory=lambda: list(BLOCK_KINDS))
    summed: bool = True            # also the code's data-summed eigenvalue
    seed: int = 0
    #: false (Q-BERT): the float fine-tuned model; true: the model with every method of the config
    #: prepared (a quantized / pruned checkpoint's own Hessian, through the STE)
    with_methods: bool = False
    out: str | None = None
    force: bool = False
    wandb_mode: str = "auto"
    #: parse the options and compose the config, then return before loading data (nothing written)
    dry_run: bool = False

    def __post_init__(self):
        check(0 < self.fraction <= 1, f"hessian.fraction must be in (0, 1], got {self.fraction!r}")
        bad = [b for b in self.blocks if b not in BLOCK_KINDS]
        check(not bad, f"hessian.blocks has unknown kind(s) {bad}; known: {list(BLOCK_KINDS)}")
        self.blocks = list(self.blocks)
        EIGEN_SOLVERS.get(self.method)  # unknown method: one line, before any data is loaded
        check(self.tol > 0, f"hessian.tol must be positive, got {self.tol!r}")

    def fingerprint(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("out", "force", "wandb_mode", "dry_run")}


def split_args(argv: list[str]) -> tuple[list[str], HessianOptions]:
    ours = [a[len(PREFIX):] for a in argv if a.startswith(PREFIX)]
    overrides = [a for a in argv if not a.startswith(PREFIX)]
    raw = OmegaConf.to_container(OmegaConf.from_dotlist(ours))
    known = set(HessianOptions.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    check(not unknown, f"unknown option(s) {[PREFIX + u for u in unknown]}; known: {sorted(PREFIX + k for k in known)}")
    return overrides, HessianOptions(**raw)


def load_finetuned(model: torch.nn.Module, checkpoint: str) -> None:
    """Load the HF model's weights from a CompressionModule ckpt (``model.`` prefix) or a plain state_dict."""
    from lowbit.models import load_finetuned_weights

    load_finetuned_weights(model, checkpoint, option="hessian.checkpoint")


def default_out(cfg, opts: HessianOptions) -> Path:
    if opts.out:
        return Path(opts.out)
    if opts.checkpoint:
        return Path(opts.checkpoint).with_suffix(".hessian.json")
    return Path(cfg.paths.output_dir) / "hessian.json"


def analysis_batches(datamodule, fraction: float, batch_size: int, max_batches: int | None, seed: int) -> list[dict]:
    from transformers import DataCollatorWithPadding

    train = datamodule.splits[datamodule.task.train_split]
    n = max(1, math.ceil(fraction * len(train)))
    idx = sorted(random.Random(seed).sample(range(len(train)), n))
    subset = train.select(idx).with_format("torch")
    collate = DataCollatorWithPadding(datamodule.tokenizer, return_tensors="pt")
    batches = [collate([subset[j] for j in range(i, min(i + batch_size, n))]) for i in range(0, n, batch_size)]
    return batches[:max_batches] if max_batches else batches


def report_lines(blocks: dict[str, dict]) -> list[str]:
    lines = ["| block | numel | mean λ | std | sensitivity (mean+std) | data-summed λ | HVPs | note |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.4g}"
    for name, b in blocks.items():
        note = "NEGATIVE top eigenvalue: not a local minimum" if b["negative"] else ""
        note += ("" if b["converged"] else (" / " if note else "") + "not converged")
        lines.append(f"| {name} | {b['numel']} | {fmt(b['mean'])} | {fmt(b['std'])} | {fmt(b['sensitivity'])} | "
                     f"{fmt(b['summed'])} | {b['hvps']} | {note} |")
    return lines


def log_wandb(blocks: dict[str, dict], out: Path, mode: str, name: str) -> None:
    from lowbit.tracking import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return
    import wandb  # seconds to import: only when it will be used

    from lowbit.wandb_charts import hessian_charts

    columns = ["block", "kind", "layer", "numel", "mean", "std", "sensitivity", "summed", "negative"]
    rows = [[n, b["kind"], b["layer"], b["numel"], b["mean"], b["std"], b["sensitivity"], b["summed"], b["negative"]]
            for n, b in blocks.items()]
    run = wandb.init(project="lowbit", name=name, job_type="hessian", dir=str(out.parent), mode=mode)
    table = wandb.Table(columns=columns, data=rows)
    run.log({"hessian/blocks": table, **hessian_charts(blocks)})
    print(f"W&B hessian run logged ({run.settings.mode}) under {out.parent}/wandb")
    run.finish()


def analyse(overrides: list[str], opts: HessianOptions, output_dir: str | Path | None = None) -> dict:
    from lowbit.builder import build, build_model
    from lowbit.compose import compose_train

    cfg = compose_train(overrides, output_dir or Path("logs") / "hessian")
    out = default_out(cfg, opts)
    if opts.dry_run:
        return _dry_run(cfg, opts, out)
    if out.is_file() and not opts.force:
        cached = json.loads(out.read_text())
        if cached.get("options") == opts.fingerprint():
            print(f"hessian: reusing {out} (same options; hessian.force=true recomputes)")
            return cached
    torch.manual_seed(opts.seed)
    model_spec = build(cfg.model)
    datamodule = build(cfg.data, tokenizer=model_spec.load_tokenizer())
    datamodule.check_sources()
    datamodule.setup("fit")
    if opts.checkpoint:  # its weights replace the pretrained ones: build the architecture only
        cfg.model.init_checkpoint = None
    model = build_model(cfg, datamodule.task.num_labels, purpose="analysis",
                        weights="none" if opts.checkpoint else "pretrained", with_methods=opts.with_methods).model
    if opts.checkpoint:
        load_finetuned(model, opts.checkpoint)
    batches = analysis_batches(datamodule, opts.fraction, opts.batch_size or cfg.data.batch_size, opts.max_batches,
                               opts.seed)
    blocks = block_spectrum(model, batches, hessian_blocks(model, opts.blocks), opts.method, opts.tol, opts.max_iter,
                            opts.summed, opts.seed)
    result = {"options": opts.fingerprint(), "model": cfg.model.name, "task": datamodule.task.name,
              "n_batches": len(batches), "n_examples": sum(int(b["input_ids"].shape[0]) for b in batches),
              "blocks": blocks, "negative_blocks": [n for n, b in blocks.items() if b["negative"]]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = report_lines(blocks)
    if result["negative_blocks"]:
        lines += ["", (f"WARNING: negative top eigenvalue in {result['negative_blocks']}: "
                       "the model is not at a local minimum there (Q-BERT fine-tunes to convergence first).")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"hessian: written to {out}")
    log_wandb(blocks, out, opts.wandb_mode, f"hessian-{cfg.task_name}")
    return result


def _dry_run(cfg, opts: HessianOptions, out: Path) -> dict:
    """What ``analyse`` would use, built and checked without loading data or weights."""
    from lowbit.builder import build, build_methods

    model_spec = build(cfg.model)
    datamodule = build(cfg.data, tokenizer=None)
    datamodule.check_sources()
    if opts.checkpoint:
        check(Path(opts.checkpoint).exists(), f"hessian.checkpoint={opts.checkpoint!r} does not exist")
    methods = build_methods(cfg) if opts.with_methods else {}
    result = {"dry_run": True, "options": asdict(opts), "model": model_spec.name, "task": datamodule.task.name,
              "methods": {g: m.option for g, m in methods.items()}, "out": str(out)}
    print(f"hessian: dry run OK (model {model_spec.name}, task {datamodule.task.name}, blocks {opts.blocks}, "
          f"{opts.method}; would write {out})")
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides, opts = split_args(argv)
        return analyse(overrides, opts)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: {e}") from None
