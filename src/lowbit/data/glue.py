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
import math
import os
import random
import shutil
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


def check_label(label, num_labels: int, where: str):
    """The label as the model takes it, or one line naming ``where``: an integer class id in
    ``[0, num_labels)`` (an integral float such as ``1.0`` is taken as that id), or for regression
    (``num_labels == 1``, STS-B) a finite number, returned as a float."""
    kind = type(label)
    if num_labels == 1:
        if (kind is float or kind is int) and math.isfinite(label):
            return float(label)
    else:
        if kind is float and label.is_integer():
            label, kind = int(label), int
        if kind is int and 0 <= label < num_labels:
            return label
    if label is None:
        raise LowbitConfigError(f"{where}: label is null")
    if num_labels == 1:
        raise LowbitConfigError(f"{where}: label must be a finite number (regression), got {label!r}")
    raise LowbitConfigError(f"{where}: label must be an integer class id in [0, {num_labels}), got {label!r}")


def read_jsonl(path: Path, required: tuple[str, ...], num_labels: int | None = None,
               text_keys: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL split, each checked: valid JSON object, every ``required`` column present,
    ``text_keys`` strings and (``num_labels`` given) ``label`` a valid class id / regression target
    (``check_label``). A bad row is one line ``<path>:<line>: ...``."""
    check(path.is_file(), f"data file {path} not found")
    rows = []
    wanted = set(required)
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LowbitConfigError(f"{path}:{lineno}: malformed JSON row ({e.msg})") from None
                if type(row) is not dict:
                    raise LowbitConfigError(f"{path}:{lineno}: row is not a JSON object, got {type(row).__name__}")
                if not wanted <= row.keys():
                    missing = [k for k in required if k not in row]
                    raise LowbitConfigError(f"{path}:{lineno}: row lacks column(s) {missing}")
                for key in text_keys:
                    if type(row[key]) is not str:
                        raise LowbitConfigError(f"{path}:{lineno}: column {key!r} must be a string, "
                                                f"got {type(row[key]).__name__}")
                if num_labels is not None:
                    label = row["label"]
                    if not (type(label) is int and 0 <= label < num_labels) or num_labels == 1:
                        row["label"] = check_label(label, num_labels, f"{path}:{lineno}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise LowbitConfigError(f"data file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    check(rows, f"data file {path} has no rows")
    return rows


def _save_atomically(ds: Dataset, cache: Path) -> None:
    """``ds.save_to_disk(cache)`` that no reader sees half-written: saved beside it, then renamed into place.

    Several processes can tokenize the same split at once (sweep workers, DDP ranks, test workers) and a run can be
    killed mid-save; the first complete copy to be renamed wins, the others are discarded.
    """
    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, cache)
        except OSError:  # a non-empty directory is never replaced
            if (cache / "dataset_info.json").exists():
                return  # another process renamed its complete copy first
            shutil.rmtree(cache)  # half-written by a save that was not atomic (lowbit before this) and killed
            os.rename(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class GLUEDataModule(pl.LightningDataModule):
    def __init__(self, task: str, tokenizer=None, local_dir: str | None = None, max_length: int = 128,
                 batch_size: int = 32, eval_batch_size: int = 64, max_train_samples: int | None = None,
                 max_eval_samples: int | None = None, subset_seed: int = 0, num_workers: int = 0,
                 cache_dir: str | None = None, metric: str | None = None, group_by_length: bool = False,
                 length_group_batches: int = 50):
        """``metric``: the task's default ``optimized_metric`` (``conf/data/<task>.yaml``; ``val/<main metric>``).
        ``group_by_length``: training batches of similar length (``ResumableRandomSampler``), drawn from
        mega-batches of ``length_group_batches`` batches: less padding, the same examples per epoch."""
        super().__init__()
        check(isinstance(task, str), f"data.task must be a GLUE task name, got {task!r}")
        self.task: GlueTask = GLUE_TASKS.get(task)
        check(metric is None or metric in self.task.logged_metrics(),
              f"data.metric={metric!r} is not logged by task {self.task.name} (it logs: "
              f"{', '.join(self.task.logged_metrics())})")
        self.metric = metric or self.task.default_metric
        for option, value in (("max_length", max_length), ("batch_size", batch_size),
                              ("eval_batch_size", eval_batch_size)):
            check(isinstance(value, int) and value > 0, f"data.{option} must be a positive integer, got {value!r}")
        for option, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            check(value is None or (isinstance(value, int) and value > 0),
                  f"data.{option} must be a positive integer or null, got {value!r}")
        check(isinstance(group_by_length, bool), f"data.group_by_length must be true or false, got {group_by_length!r}")
        check(isinstance(length_group_batches, int) and not isinstance(length_group_batches, bool)
              and length_group_batches > 0,
              f"data.length_group_batches must be a positive integer, got {length_group_batches!r}")
        self.group_by_length, self.length_group_batches = group_by_length, length_group_batches
        for option, value in (("subset_seed", subset_seed), ("num_workers", num_workers)):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                  f"data.{option} must be a non-negative integer, got {value!r}")
        check(local_dir is None or isinstance(local_dir, (str, os.PathLike)),
              f"data.local_dir must be a path or null, got {local_dir!r}")
        self.tokenizer = tokenizer
        self.data_dir = resolve_data_dir(local_dir)
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.max_train_samples, self.max_eval_samples, self.subset_seed = max_train_samples, max_eval_samples, subset_seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir is not None:
            existing = next((d for d in (self.cache_dir, *self.cache_dir.parents) if d.exists()), None)
            check(existing is None or existing.is_dir(),
                  f"data.cache_dir={str(cache_dir)!r} cannot be created: {existing} is not a directory")
        self.splits: dict[str, Dataset] = {}
        self._checked_rows: dict[str, list[dict]] = {}  # splits read (and checked) by check_sources

    # -- sources ---------------------------------------------------------------------------------
    def split_path(self, split: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / self.task.name / f"{split}.jsonl"

    def _limit(self, split: str) -> int | None:
        return self.max_train_samples if split == self.task.train_split else self.max_eval_samples

    def check_sources(self) -> None:
        """Fail early (before model loading/training) if a local split file is missing.

        With a tokenizer (a run's ``setup``), every local split that has no tokenized cache yet is also
        read and checked row by row now (JSON, columns, text, labels: ``read_jsonl``), so a bad row stops
        the run before any stage trains; the rows are kept for tokenizing. A cached split was checked
        when it was cached (the cache key includes the file's size and mtime).
        """
        for split in (self.task.train_split, *self.task.eval_splits):
            path = self.split_path(split)
            if path is not None:
                check(path.is_file(), f"data file {path} not found (task {self.task.name}, split {split})")
                if self.tokenizer is not None and split not in self._checked_rows and not self._is_cached(split):
                    self._checked_rows[split] = self._read(path)

    def _read(self, path: Path) -> list[dict]:
        text_keys = tuple(k for k in self.task.text_keys if k)
        return read_jsonl(path, text_keys + ("label",), num_labels=self.task.num_labels, text_keys=text_keys)

    def _raw(self, split: str) -> Dataset:
        path = self.split_path(split)
        if path is not None:
            rows = self._checked_rows.pop(split, None)
            return Dataset.from_list(rows if rows is not None else self._read(path))
        try:
            ds = load_dataset(HUB_DATASET, self.task.name, split=split)
        except Exception as e:
            raise LowbitConfigError(f"cannot load {HUB_DATASET}/{self.task.name} split {split} from the hub "
                                    f"({type(e).__name__}); set data.local_dir or {DATA_DIR_ENV}") from None
        for i, label in enumerate(ds["label"]):
            check_label(label, self.task.num_labels, f"{HUB_DATASET}/{self.task.name} split {split} row {i}")
        return ds

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

    def _cache_path(self, split: str, limit: int | None, key: str | None = None) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.task.name}-{split}-{key or self._cache_key(split, limit)}"

    def _is_cached(self, split: str) -> bool:
        cache = self._cache_path(split, self._limit(split))
        return cache is not None and (cache / "dataset_info.json").exists()

    def load_split(self, split: str, limit: int | None) -> Dataset:
        key = self._cache_key(split, limit)
        cache = self._cache_path(split, limit, key)
        if cache is not None and (cache / "dataset_info.json").exists():
            return load_from_disk(str(cache))
        ds = self._tokenize(self._subset(self._raw(split), limit), fingerprint=key)
        if cache is not None:
            _save_atomically(ds, cache)
        return ds

    # -- lightning -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        check(self.tokenizer is not None, "GLUEDataModule needs a tokenizer")
        if self.splits:
            return
        self.splits[self.task.train_split] = self.load_split(self.task.train_split, self.max_train_samples)
        for split in self.task.eval_splits:
            self.splits[split] = self.load_split(split, self.max_eval_samples)

    def _loader(self, ds: Dataset, batch_size: int, sampler=None) -> DataLoader:
        ds = ds.with_format("torch")
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        from lowbit.checkpointing import train_sampler

        # shuffled like shuffle=True, and resumable mid-epoch (lowbit.checkpointing.ResumeState)
        ds = self.splits[self.task.train_split]
        lengths = [len(ids) for ids in ds["input_ids"]] if self.group_by_length else None
        self.train_sampler = train_sampler(self, len(ds), self.batch_size, lengths, self.length_group_batches)
        return self._loader(ds, self.batch_size, self.train_sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.splits[s], self.eval_batch_size) for s in self.task.eval_splits]
