"""Packed-export size of a BERT-base-size model (random weights) vs its FP32 safetensors.

TernaryBERT 2-2-8 (ternary encoder + pooler, ternary row-wise word embeddings, float position /
token-type embeddings, LayerNorm, biases and classifier). Goal: >= 14.9x (paper), aiming at >= 18x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from lowbit.builder import build_model
from lowbit.compose import compose_train
from lowbit.export import export_packed
from lowbit.export.__main__ import fp32_safetensors_bytes
from lowbit.methods import METHOD_ORDER
from lowbit.size import size_report


def run(num_labels: int = 2) -> dict:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=num_labels))  # bert-base-uncased shape
    fp32 = fp32_safetensors_bytes(model)
    cfg = compose_train(["model=tiny", "data=sst2", "quantizer=ternary_twn", "bit_assignment=w2e2"], "logs/bench")
    built = build_model(cfg, backbone=model, purpose="deploy")
    configs = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in METHOD_ORDER}
    with tempfile.TemporaryDirectory() as d:
        facts = export_packed(model, d, configs, built.methods)
    return {"benchmark": "export_size", "model": "bert-base-uncased config, random weights",
            "params": sum(p.numel() for p in model.parameters()), "setting": "TernaryBERT 2-2-8",
            "fp32_safetensors_bytes": fp32, "packed_bytes": facts["weights_bytes"],
            "ratio": fp32 / facts["weights_bytes"], "size_report_ratio": size_report(model).compression_ratio,
            "paper_ratio": 14.9, "goal_ratio": 18.0}


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench export_size``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results/export_size.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    result = run()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result
