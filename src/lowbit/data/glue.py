"""GLUE data: local JSONL (``nyu-mll/glue`` schema) or the hub, tokenized once and cached.

Data directory resolution: ``local_dir`` if set, else ``$LOWBIT_DATA_DIR``, else the
hub (``nyu-mll/glue``). Local files are ``<dir>/<task>/<split>.jsonl``. Every row is
checked on first read, so a malformed file fails with its path and line number
before training starts. Tokenized splits are saved under ``cache_dir`` keyed by the
source file, subset, tokenizer and max length, so a second run does not re-tokenize.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytorch_lightning as pl
from datasets import Dataset, load_dataset, load_from_disk
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from lowbit.data.tasks import GLUE_TASKS, GlueTask
from lowbit.errors import LowbitConfigError, check

DATA_DIR_ENV = "LOWBIT_DATA_DIR"
HUB_DATASET = "nyu-mll/glue"


def resolve_data_dir(local_dir: str | None) -> Path | None:
    """The local GLUE root, or None for the hub."""
    if local_dir:
        check(Path(local_dir).is_dir(), f"data.local_dir={local_dir!r} is not a directory")
        return Path(local_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        check(Path(env).is_dir(), f"{DATA_DIR_ENV}={env!r} is not a directory")
        return Path(env)
    return None


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    check(path.is_file(), f"data file {path} not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LowbitConfigError(f"{path}:{lineno}: malformed JSON row ({e.msg})") from None
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise LowbitConfigError(f"{path}:{lineno}: row lacks column(s) {missing}")
            rows.append(row)
    check(rows, f"data file {path} has no rows")
    return rows


class GLUEDataModule(pl.LightningDataModule):
    def __init__(self, task: str, tokenizer=None, local_dir: str | None = None, max_length: int = 128,
                 batch_size: int = 32, eval_batch_size: int = 64, max_train_samples: int | None = None,
                 max_eval_samples: int | None = None, subset_seed: int = 0, num_workers: int = 0,
                 cache_dir: str | None = None):
        super().__init__()
        self.task: GlueTask = GLUE_TASKS.get(task)
        for option, value in (("max_length", max_length), ("batch_size", batch_size),
                              ("eval_batch_size", eval_batch_size)):
            check(isinstance(value, int) and value > 0, f"data.{option} must be a positive integer, got {value!r}")
        for option, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            check(value is None or (isinstance(value, int) and value > 0),
                  f"data.{option} must be a positive integer or null, got {value!r}")
        self.tokenizer = tokenizer
        self.data_dir = resolve_data_dir(local_dir)
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.max_train_samples, self.max_eval_samples, self.subset_seed = max_train_samples, max_eval_samples, subset_seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.splits: dict[str, Dataset] = {}

    # -- sources ---------------------------------------------------------------------------------
    def split_path(self, split: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / self.task.name / f"{split}.jsonl"

    def check_sources(self) -> None:
        """Fail early (before model loading/training) if a local split file is missing."""
        for split in (self.task.train_split, *self.task.eval_splits):
            path = self.split_path(split)
            if path is not None:
                check(path.is_file(), f"data file {path} not found (task {self.task.name}, split {split})")

    def _raw(self, split: str) -> Dataset:
        path = self.split_path(split)
        required = tuple(k for k in self.task.text_keys if k) + ("label",)
        if path is not None:
            return Dataset.from_list(read_jsonl(path, required))
        try:
            return load_dataset(HUB_DATASET, self.task.name, split=split)
        except Exception as e:
            raise LowbitConfigError(f"cannot load {HUB_DATASET}/{self.task.name} split {split} from the hub "
                                    f"({type(e).__name__}); set data.local_dir or {DATA_DIR_ENV}") from None

    def _cache_key(self, split: str, limit: int | None) -> str:
        path = self.split_path(split)
        source = (f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}" if path
                  else f"hub:{HUB_DATASET}:{self.task.name}")
        tok = self.tokenizer
        ident = [source, split, limit, self.subset_seed, self.max_length, type(tok).__name__,
                 getattr(tok, "name_or_path", ""), len(tok)]
        return hashlib.sha1(json.dumps(ident, default=str).encode()).hexdigest()[:16]

    def _subset(self, ds: Dataset, limit: int | None) -> Dataset:
        if limit is None or limit >= len(ds):
            return ds
        idx = sorted(random.Random(self.subset_seed).sample(range(len(ds)), limit))
        return ds.select(idx)

    def _tokenize(self, ds: Dataset, fingerprint: str | None = None) -> Dataset:
        a, b = self.task.text_keys

        def encode(batch):
            enc = self.tokenizer(batch[a], batch[b] if b else None, truncation=True, max_length=self.max_length)
            enc["labels"] = batch["label"]
            return enc

        keep = [c for c in ds.column_names]
        # our own cache key as the fingerprint: otherwise datasets hashes the whole closure (tokenizer
        # included), seconds per split even for a handful of rows
        return ds.map(encode, batched=True, remove_columns=keep, desc=f"tokenize {self.task.name}",
                      new_fingerprint=fingerprint)

    def load_split(self, split: str, limit: int | None) -> Dataset:
        cache, key = None, self._cache_key(split, limit)
        if self.cache_dir is not None:
            cache = self.cache_dir / f"{self.task.name}-{split}-{key}"
            if (cache / "dataset_info.json").exists():
                return load_from_disk(str(cache))
        ds = self._tokenize(self._subset(self._raw(split), limit), fingerprint=key)
        if cache is not None:
            ds.save_to_disk(str(cache))
        return ds

    # -- lightning -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        check(self.tokenizer is not None, "GLUEDataModule needs a tokenizer")
        if self.splits:
            return
        self.splits[self.task.train_split] = self.load_split(self.task.train_split, self.max_train_samples)
        for split in self.task.eval_splits:
            self.splits[split] = self.load_split(split, self.max_eval_samples)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        ds = ds.with_format("torch")
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits[self.task.train_split], self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.splits[s], self.eval_batch_size, shuffle=False) for s in self.task.eval_splits]
