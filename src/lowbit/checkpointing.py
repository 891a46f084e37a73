"""Nothing lost: atomic checkpoints, ``last.ckpt`` on a schedule, and the state exact resume needs.

- ``AtomicCheckpointIO``: every checkpoint (best, last, stages) is written to a temporary file in the
  same directory, flushed to disk, then renamed over the old one. A crash or a full disk leaves the
  previous checkpoint intact; a failed write is one line naming the file.
- ``LastCheckpoint``: ``last.ckpt`` every ``every_n_train_steps`` optimizer steps, at every epoch end
  and when training ends (Lightning's ``save_last`` rewrites it only when the monitored best improves).
- ``ResumeState``: what Lightning's checkpoint lacks for a bit-identical resume: the global RNG states
  (torch, numpy, python; dropout draws from them) and the training sampler's position (the epoch's
  shuffle seed and how many samples were consumed), restored before the data loader starts.
- ``resolve_ckpt_path``: ``ckpt_path=last`` (must exist: one line otherwise), ``auto`` (resume when
  there is a checkpoint, else start), or a file.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lowbit.errors import LowbitRunError, check

LAST = "last.ckpt"
RESUME_KEY = "lowbit_resume"

# Lightning warns that a mid-epoch resume replays data unreliably unless the dataloader is stateful; ResumeState
# (below) restores the sampler's position exactly (tests/test_exact_resume.py), so the warning is false here
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``.<name>.tmp-<pid>``, fsync, ``os.replace``: a checkpoint file is complete or absent."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            reason = e.strerror or type(e).__name__
            raise LowbitRunError(f"cannot write checkpoint {path}: {reason} (the previous one, if any, is intact)") \
                from None


def atomic_save(trainer: pl.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` (rank 0 writes, every rank waits) through an atomic write."""
    if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    trainer.save_checkpoint(path)


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` steps (0: never mid-epoch; never after an
    epoch's last step), at every epoch end (after its validation) and when training ends, atomically."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 50):
        check(isinstance(every_n_train_steps, int) and not isinstance(every_n_train_steps, bool)
              and every_n_train_steps >= 0,
              f"callbacks.last_checkpoint.every_n_train_steps must be a non-negative integer, got {every_n_train_steps!r}")
        self.path = Path(dirpath) / LAST
        self.every_n_train_steps = every_n_train_steps

    def save(self, trainer: pl.Trainer) -> None:
        atomic_save(trainer, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        # not after an epoch's last batch: the epoch-end save follows its validation, and a resume from a
        # checkpoint between the two would skip that validation (Lightning counts the epoch as done), its best
        # checkpoint and its RNG draws; from the previous checkpoint the last step replays exactly
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if n and trainer.global_step % n == 0 and not trainer.sanity_checking and not last_of_epoch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)


def rng_states() -> dict[str, Any]:
    """The global RNG states, as plain lists and tensors (checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss],
           "python": [version, list(state), gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(pl.Callback):
    """Saves and restores the RNG states and the training sampler's position with every checkpoint.

    ``datamodule`` builds its training sampler with ``train_sampler(datamodule, ...)``; a restore leaves
    the saved position on the datamodule, and the sampler built next (Lightning builds the loader after
    restoring the checkpoint) starts from it. When the RNG states are put back matters: creating a data
    loader iterator draws from the global RNG (its worker base seed). Saved mid-epoch, the uninterrupted
    run had already made that draw, so the states are restored at ``on_train_start``, after the resumed
    run's loader exists; saved at an epoch end, the next draw *is* the new epoch's iterator (and its
    shuffle seed), so they are restored at once, before the loader is built. Unless that epoch was the
    last: then the uninterrupted run drew nothing more before ``fit`` returned, while the resumed run's
    setup built a loader anyway, so the states are put back once more when ``fit`` ends without a step.
    """

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self._pending_rng: dict[str, Any] | None = None
        self._epoch_end_rng: dict[str, Any] | None = None  # restored at fit end if no step trains after it

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        state: dict[str, Any] = {"rng": rng_states(), "batches_done": done, "world_size": trainer.world_size,
                                 "epoch_complete": done >= trainer.num_training_batches}
        sampler = getattr(self.datamodule, "train_sampler", None)
        if sampler is not None and sampler.seed is not None:
            state["sampler_seed"] = int(sampler.seed)
        checkpoint[RESUME_KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RESUME_KEY)
        if state is None:  # a checkpoint from before lowbit saved resume state: resumes, but not exactly
            return
        if state["epoch_complete"]:
            set_rng_states(state["rng"])
            self._epoch_end_rng = state["rng"]
            return
        self._pending_rng = state["rng"]
        # the same permutation, from the first sample not yet trained on. Under DDP Lightning shards the
        # sampler's output per rank: a mid-epoch position is not one offset into it, so a DDP run resumes
        # exactly only from epoch-end checkpoints (mid-epoch it replays the epoch's data, as Lightning warns)
        if "sampler_seed" in state and state.get("world_size", 1) == 1 and trainer.world_size == 1:
            self.datamodule.pending_sampler_resume = (state["sampler_seed"], state["batches_done"])

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._epoch_end_rng = None

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._epoch_end_rng is not None:  # resumed after the last epoch: what follows draws as it would have
            set_rng_states(self._epoch_end_rng)
            self._epoch_end_rng = None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``None`` | ``last`` (must exist) | ``auto`` (resume if there is one) | a checkpoint file (must exist)."""
    if ckpt_path is None:
        return None
    last = Path(output_dir) / "checkpoints" / LAST
    if ckpt_path == "last":
        check(last.is_file(), f"ckpt_path=last: no checkpoint at {last} (nothing to resume; hydra.run.dir must be the "
                              f"interrupted run's directory; ckpt_path=auto resumes if there is one, else starts)")
        return str(last)
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    check(Path(str(ckpt_path)).is_file(), f"ckpt_path={ckpt_path!r} does not exist")
    from lowbit.models import read_checkpoint

    # loaded as data first (weights_only): a text, truncated or code-carrying file is one line here, before any
    # training; the trainer then loads it with weights_only=True as well
    read_checkpoint(ckpt_path, "ckpt_path")
    return str(ckpt_path)


class ResumableRandomSampler(torch.utils.data.Sampler[int]):
    """``RandomSampler`` that can continue mid-epoch, optionally grouping examples of similar length.

    Each epoch draws its shuffle seed from the global torch RNG exactly as ``torch.utils.data.RandomSampler``
    does (so a run's data order is what it was with ``shuffle=True``), and remembers it; ``resume_at(seed,
    batches)`` makes the next epoch replay that permutation from the first sample not yet trained on.

    ``lengths`` (token counts) turns on length grouping, as transformers' ``LengthGroupedSampler``: the
    permutation is cut into mega-batches of ``group_batches`` batches, each sorted by length (longest first),
    then the full batches are shuffled. A padded batch then wastes little compute on padding, while batch
    order and membership stay random. The last, partial batch stays last so the DataLoader's batch
    boundaries (consecutive ``batch_size`` indices) are the batches built here. The order is a function of the
    seed alone, so resume works as without grouping.
    """

    def __init__(self, n: int, batch_size: int, lengths: Sequence[int] | None = None, group_batches: int = 50):
        check(lengths is None or len(lengths) == n, f"length grouping: {len(lengths or [])} lengths for {n} examples")
        self.n, self.batch_size = n, batch_size
        self.lengths, self.group_batches = (None if lengths is None else list(lengths)), group_batches
        self.seed: int | None = None
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.n

    def resume_at(self, seed: int, batches_done: int) -> None:
        self._resume = (seed, batches_done * self.batch_size)

    def order(self, seed: int) -> list[int]:
        """The epoch's sample order for ``seed``."""
        generator = torch.Generator()
        generator.manual_seed(seed)
        perm = torch.randperm(self.n, generator=generator).tolist()
        if self.lengths is None:
            return perm
        mega, bs = self.batch_size * self.group_batches, self.batch_size
        grouped = [i for start in range(0, self.n, mega)
                   for i in sorted(perm[start:start + mega], key=lambda i: -self.lengths[i])]  # stable: ties random
        full = self.n // bs
        batches = [grouped[b * bs:(b + 1) * bs] for b in range(full)]
        shuffled = [batches[b] for b in torch.randperm(full, generator=generator).tolist()]
        return [i for batch in shuffled for i in batch] + grouped[full * bs:]

    def __iter__(self):
        if self._resume is not None:
            seed, start = self._resume
            self._resume = None
        else:
            seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        yield from self.order(seed)[start:]


def train_sampler(datamodule, n: int, batch_size: int, lengths: Sequence[int] | None = None,
                  group_batches: int = 50) -> ResumableRandomSampler:
    """The training sampler of ``datamodule``, starting where a restored checkpoint left off (``lengths``:
    group by length, see ``ResumableRandomSampler``)."""
    sampler = ResumableRandomSampler(n, batch_size, lengths, group_batches)
    pending = getattr(datamodule, "pending_sampler_resume", None)
    if pending is not None:
        sampler.resume_at(*pending)
        datamodule.pending_sampler_resume = None
    return sampler
