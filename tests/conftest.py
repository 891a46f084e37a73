from __future__ import annotations

import os
from pathlib import Path

# Before transformers / huggingface_hub / datasets are imported: they read these once, at import. Set later, a
# hub lookup retries with backoff against the unreachable network (~25-50 s per test) instead of failing at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# `make test` runs two pytest-xdist workers on a 2-core machine: one thread each (and in the runs they start), so the
# workers do not oversubscribe the cores with 2 x 2 threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest
import torch
from omegaconf import DictConfig
from transformers import AlbertConfig, AutoModelForSequenceClassification, BertConfig, RobertaConfig

from lowbit.compose import compose_train as _compose

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_GLUE = ROOT.parent / "shared" / "data" / "glue"

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

if not os.environ.get("LOWBIT_DATA_DIR") and SHARED_GLUE.is_dir():
    os.environ["LOWBIT_DATA_DIR"] = str(SHARED_GLUE)


def tiny_config(model_type: str = "bert", num_labels: int = 2):
    common = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    if model_type == "bert":
        return BertConfig(**common)
    if model_type == "roberta":
        return RobertaConfig(**common, pad_token_id=1)
    if model_type == "albert":
        return AlbertConfig(**common, embedding_size=16)
    raise ValueError(model_type)


@pytest.fixture
def tiny_model():
    def make(model_type: str = "bert", num_labels: int = 2, seed: int = 0):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_labels)).eval()

    return make


@pytest.fixture
def one_thread():
    """Many tiny HVPs: thread hand-offs cost more than they save on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 120, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def compose_train(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose conf/train.yaml as `python train.py OVERRIDES` would, outputs under tmp_path."""
    return _compose(overrides, tmp_path / "out", root_dir=ROOT, log_dir=tmp_path / "logs", cache_dir=tmp_path / "cache")


#: overrides that make any experiment a seconds-long CPU job
TINY_RUN = ["model=tiny", "logger=none", "callbacks=none", "trainer.fast_dev_run=true",
            "data.max_train_samples=32", "data.max_eval_samples=32", "data.batch_size=8",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.fixture
def make_cfg(tmp_path):
    return lambda overrides: compose_train(overrides, tmp_path)


def payload_bytes(path) -> int:
    """Bytes of the tensors in a safetensors file (its header excluded)."""
    import json
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def assert_row_path_equals_full_table(embedding, ids) -> None:
    """An embedding's training lookup (row-wise chain) equals the eval lookup of the whole transformed table."""
    embedding.train()
    rows = embedding(ids)
    embedding.eval()
    with torch.no_grad():
        full = embedding(ids)
    torch.testing.assert_close(rows.detach(), full)
