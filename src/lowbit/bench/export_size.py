"""Packed-export size vs FP32: a BERT-base-size model (random weights) under given methods, or a trained run.

Default: TernaryBERT 2-2-8 (ternary encoder + pooler, ternary row-wise word embeddings, float position /
token-type embeddings, LayerNorm, biases and classifier). Goal: >= 14.9x (paper), aiming at >= 18x.

``--overrides``: any method overrides instead (e.g. EdgeBERT's 8-bit AdaptivFloat weights with one-shot
magnitude masks: ``quantizer=adaptivfloat bit_assignment.bits=8 pruning=magnitude pruning.schedule=oneshot
pruning.final_sparsity=0.5 pruning.embedding_sparsity=0.6``). ``--run DIR``: a trained run's checkpoint
(``DIR/checkpoints/last.ckpt`` and ``DIR/.hydra/config.yaml``), packed with ``python -m lowbit.export``'s code
(reloaded, logits checked). The JSON gives the packed bytes, the FP32 safetensors bytes, their ratio, and how
the packed layers are stored (value kinds, dense / bitmap / csr / delta counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from lowbit.builder import build_model
from lowbit.compose import compose_train
from lowbit.errors import LowbitConfigError
from lowbit.export import export_packed, load_packed
from lowbit.export.__main__ import export_checkpoint, fp32_safetensors_bytes
from lowbit.methods import METHOD_ORDER
from lowbit.size import SizeReport, size_report

TERNARYBERT_2_2_8 = ["quantizer=ternary_twn", "bit_assignment=w2e2"]
#: model shapes for the random-weight measurement (``tiny``: a quick check)
MODELS = {"bert-base": {}, "tiny": {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}}


def storage_summary(report: SizeReport) -> dict:
    """How the packed layers are stored: value kinds and sparse formats (layer counts), sizes in bits."""
    return {"size_report_bits": report.total_bits, "fp32_bits": report.fp32_bits,
            "size_report_ratio": report.compression_ratio,
            "value_kinds": dict(Counter(s.value_kind for s in report.layers.values())),
            "formats": report.formats(),
            "layers_sparse": {n: {"format": s.format, "kept": s.kept, "numel": s.numel}
                              for n, s in report.layers.items() if s.format != "dense"}}


def run(num_labels: int = 2, overrides: list[str] | None = None, model: str = "bert-base",
        setting: str | None = None) -> dict:
    """A random-weight model of ``model``'s shape under the methods ``overrides`` choose, packed."""
    overrides = TERNARYBERT_2_2_8 if overrides is None else list(overrides)
    torch.manual_seed(0)
    backbone = BertForSequenceClassification(BertConfig(num_labels=num_labels, **MODELS[model]))
    fp32 = fp32_safetensors_bytes(backbone)
    cfg = compose_train(["model=tiny", "data=sst2", *overrides], "logs/bench")
    # not "deploy" (which expects a checkpoint's masks): one-shot pruning computes its masks from these weights
    built = build_model(cfg, backbone=backbone, purpose="analysis")
    configs = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in METHOD_ORDER}
    with tempfile.TemporaryDirectory() as d:
        facts = export_packed(backbone, d, configs, built.methods)
    return {"benchmark": "export_size", "model": "bert-base-uncased config, random weights"
            if model == "bert-base" else f"{model} BERT config, random weights",
            "params": sum(p.numel() for p in backbone.parameters()),
            "setting": setting or ("TernaryBERT 2-2-8" if overrides == TERNARYBERT_2_2_8 else " ".join(overrides)),
            "overrides": overrides, "fp32_safetensors_bytes": fp32, "packed_bytes": facts["weights_bytes"],
            "ratio": fp32 / facts["weights_bytes"], **storage_summary(size_report(backbone)),
            **({"paper_ratio": 14.9, "goal_ratio": 18.0} if overrides == TERNARYBERT_2_2_8 else {})}


def run_checkpoint(run_dir: Path, ckpt: str = "last.ckpt", config: Path | None = None) -> dict:
    """A trained run's packed size (``python -m lowbit.export``'s code: rebuild, pack, reload, equal logits)."""
    with tempfile.TemporaryDirectory() as d:
        facts = export_checkpoint(Path(run_dir) / "checkpoints" / ckpt, Path(d) / "packed", config)
        report = size_report(load_packed(Path(d) / "packed"))
    return {"benchmark": "export_size", "run": str(run_dir), "checkpoint": ckpt,
            "fp32_safetensors_bytes": facts["fp32_safetensors_bytes"], "packed_bytes": facts["weights_bytes"],
            "ratio": facts["ratio"], "reload_max_abs_logit_diff": facts["reload_max_abs_logit_diff"],
            **storage_summary(report)}


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench export_size``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results/export_size.json")
    p.add_argument("--overrides", nargs="+", default=None, metavar="OVERRIDE",
                   help="method overrides for the random-weight model (default: TernaryBERT 2-2-8)")
    p.add_argument("--model", choices=sorted(MODELS), default="bert-base", help="shape of the random-weight model")
    p.add_argument("--setting", default=None, help="a name for the setting in the JSON")
    p.add_argument("--run", type=Path, default=None, help="a trained run directory instead of random weights")
    p.add_argument("--ckpt", default="last.ckpt", help="with --run: the checkpoint under DIR/checkpoints/")
    p.add_argument("--config", type=Path, default=None, help="with --run: the run config (default DIR/.hydra/config.yaml)")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    if a.run is not None and a.overrides is not None:
        parser().error("--run measures a trained run: its config chooses the methods (drop --overrides)")
    try:
        if a.run is not None:
            result = run_checkpoint(a.run, a.ckpt, a.config)
        else:
            result = run(overrides=a.overrides, model=a.model, setting=a.setting)
    except LowbitConfigError as e:
        sys.exit(f"lowbit: error: {e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result
