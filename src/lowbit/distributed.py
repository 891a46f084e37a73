"""Multi-process (DDP) support: device checks, ranks, rank-zero side effects, gathered evaluation.

A ``trainer=ddp`` run is one process per device, each running the whole pipeline on the same config
and seed (Lightning's launcher re-runs ``train.py`` with the same overrides; under Slurm each task is
one rank). What keeps the ranks in step:

* **weights and gradients**: DDP broadcasts rank 0's weights when it wraps the model and all-reduces
  (averages) gradients in every backward, so every loss a rank computes stays local (its own shard
  of the global batch). Lightning's ``DistributedSampler`` gives each rank a disjoint shard.
* **EMA activation observers** (``ActivationQuantizer(mode="ema")``): each training forward
  all-reduces the batch minimum (MIN) and maximum (MAX) over ranks before the EMA update
  (``all_reduce_range``), so every rank holds the same ``running_min`` / ``running_max``: the range
  of the global batch, as one process with the whole batch would have it.
* **distillation**: the teacher is a deep copy of the model taken in ``prepare`` on every rank from
  the same (seeded / loaded) weights; it is frozen and not part of the DDP module, so it needs no
  synchronisation. Its outputs and captured attention scores are per batch, per process.
* **evaluation**: ``CompressionModule`` gathers predictions, labels, methods' ``eval_outputs`` and
  the example indices from all ranks (``gather_eval``) and drops the duplicates the sampler pads
  with, so GLUE metrics are over exactly the eval set and identical on every rank (checkpoint
  monitors and early stopping agree).
* **files**: run summaries, stage ``done.json`` files and the final ``last.ckpt`` are written by rank 0
  only (``is_rank_zero`` / ``rank_zero_only``); Lightning's checkpoint callbacks already are.

``SyncCheck`` is a callback that asserts (and can dump) that every rank ends each fit with identical
observer ranges and weights.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from lowbit.errors import LowbitConfigError, check

T = TypeVar("T")

#: strategies that run ``fit`` in spawned processes: the pipeline reads metrics and weights from the
#: module after ``fit`` and runs several fits per job, which spawned processes do not hand back
SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true",
                    "ddp_fork_find_unused_parameters_true", "ddp_notebook_find_unused_parameters_true")
GPU_ACCELERATORS = ("gpu", "cuda")


# -- configuration ---------------------------------------------------------------------------------
def _device_count(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for (None: "auto" / -1, i.e. all visible)."""
    if devices in (None, "auto", -1, "-1"):
        return None
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        check(devices.lstrip("-").isdigit(), f"trainer.devices must be an integer, a list or 'auto', got {devices!r}")
        return int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices
    try:
        return len(list(devices))  # a list of device ids
    except TypeError:
        raise LowbitConfigError(f"trainer.devices must be an integer, a list or 'auto', got {devices!r}") from None


def check_trainer_devices(trainer_cfg: Mapping[str, Any]) -> None:
    """Fail with one line when ``trainer`` asks for devices this machine lacks, or for a spawn strategy.

    ``trainer=gpu`` (``accelerator: gpu``) without a visible CUDA GPU, more GPUs than are visible,
    a non-positive ``devices``, a ``ddp_spawn``-family strategy (unsupported: see ``SPAWN_STRATEGIES``),
    or several devices in a local multirun (Lightning re-runs the command line to start the other ranks:
    that would re-run the sweep; under Slurm the launcher starts the ranks instead) raise
    ``LowbitConfigError``. Call it before anything is built.
    """
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    strategy = trainer_cfg.get("strategy", "auto")
    devices = trainer_cfg.get("devices", "auto")
    n = _device_count(devices)
    check(n is None or n > 0, f"trainer.devices must be positive, 'auto' or -1, got {devices!r}")
    if isinstance(strategy, str):
        check(strategy not in SPAWN_STRATEGIES,
              f"trainer.strategy={strategy} is not supported: the pipeline runs several fits per job and reads "
              f"metrics from the module after each, which spawned processes do not hand back; use strategy=ddp")
    if accelerator in GPU_ACCELERATORS:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check(visible > 0, f"trainer.accelerator={accelerator} needs a CUDA GPU, but none is visible "
                           f"(torch.cuda.is_available() is False); use trainer=default (auto) or trainer=cpu")
        check(n is None or n <= visible,
              f"trainer.devices={devices!r} asks for {n} GPU(s), but only {visible} are visible")
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")
    if (isinstance(strategy, str) and strategy.startswith("ddp") and n is not None and per_node.isdigit()
            and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive") and int(per_node) != n):
        raise LowbitConfigError(f"trainer.devices={devices!r} but this Slurm job runs {per_node} task(s) per node: "
                                f"one task per device (hydra.launcher.tasks_per_node={n})")
    if _lightning_launches_ranks(trainer_cfg, n) and _in_multirun():
        raise LowbitConfigError(
            f"trainer.strategy={strategy} with trainer.devices={devices!r} in a multirun: Lightning can only "
            f"launch the ranks of a single `python train.py` run; in a sweep use hydra/launcher=submitit_slurm "
            f"with hydra.launcher.tasks_per_node=<devices> (Slurm starts the ranks), or run the jobs one by one")


def ranks_started_externally(env: Mapping[str, str] | None = None) -> bool:
    """The ranks are already processes (Slurm tasks, torchrun, or a child Lightning launched): Lightning
    will not launch more."""
    env = os.environ if env is None else env
    slurm = ("SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"))
    return slurm or "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def _lightning_launches_ranks(trainer_cfg: Mapping[str, Any], n: int | None) -> bool:
    strategy = trainer_cfg.get("strategy", "auto")
    if not (isinstance(strategy, str) and strategy.startswith("ddp")):
        return False
    if n is None:  # all visible devices: GPUs if any
        n = torch.cuda.device_count() if torch.cuda.is_available() else 1
    nodes = trainer_cfg.get("num_nodes", 1) or 1
    return n * nodes > 1 and not ranks_started_externally()


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# -- ranks -----------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """A process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_rank() -> int:
    """This process's global rank: the process group's, else what the launcher's environment says."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    from lightning_fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0  # RANK, LOCAL_RANK, SLURM_PROCID, JSM_NAMESPACE_RANK


def is_rank_zero() -> bool:
    return global_rank() == 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """``fn`` runs on global rank 0 only; other ranks get None (for file writes and printing)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapped


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# -- collectives -----------------------------------------------------------------------------------
def all_reduce_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min over ranks of ``lo``, max over ranks of ``hi``); identity outside a multi-process group.

    One collective: MAX over the stacked (-lo, hi) (negation is exact, so its MAX is the MIN of lo).
    Every rank must call it the same number of times in the same order (every training forward of an
    EMA observer does, as the ranks run the same model on equal-sized shards).
    """
    if not is_distributed():
        return lo, hi
    both = torch.stack([-lo.detach(), hi.detach()]).float()  # fp16 / bf16 values are exact in fp32
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return (-both[0]).to(lo.dtype), both[1].to(hi.dtype)


def gather_objects(obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_eval(tensors: Mapping[str, torch.Tensor], indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example tensors of the whole eval set from the shards every rank evaluated.

    ``tensors`` hold this rank's examples along dim 0, ``indices`` their positions in the dataset.
    The ranks' shards are gathered, each dataset index is kept once (the ``DistributedSampler``
    repeats examples to give every rank equal batches) and the result is in dataset order, so it is the
    same on every rank. In a single process the tensors are returned as they are.
    """
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    for name, value in tensors.items():
        check(value.shape[0] == indices.shape[0],
              f"eval output {name!r} has {value.shape[0]} rows for {indices.shape[0]} examples")
    if not is_distributed():
        return tensors
    shards = gather_objects((indices.cpu(), tensors))
    all_idx = torch.cat([i for i, _ in shards])
    # first occurrence of each index, in index order: stable sort, then drop repeats
    order = torch.sort(all_idx, stable=True).indices
    sorted_idx = all_idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    return {k: torch.cat([t[k] for _, t in shards])[keep] for k in tensors}


def sampler_indices(dataloader: Any, n: int) -> torch.Tensor:
    """The dataset indices of the first ``n`` examples ``dataloader`` yields (in this process)."""
    sampler = getattr(dataloader, "sampler", None)
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    if batch_sampler is not None and getattr(batch_sampler, "sampler", None) is not None:
        sampler = batch_sampler.sampler
    check(sampler is not None, "cannot gather eval outputs: the eval dataloader has no sampler")
    indices = []
    for i in sampler:
        if len(indices) == n:
            break
        indices.append(int(i))
    check(len(indices) == n, f"eval dataloader's sampler yields {len(indices)} examples, {n} were evaluated")
    return torch.tensor(indices, dtype=torch.long)


# -- checks ----------------------------------------------------------------------------------------
def observer_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every EMA observer's ``running_min`` / ``running_max`` (by module name)."""
    out = {}
    for name, module in model.named_modules():
        if getattr(module, "is_observer", False) and hasattr(module, "running_min"):
            out[f"{name}.running_min"] = module.running_min.detach().cpu().clone()
            out[f"{name}.running_max"] = module.running_max.detach().cpu().clone()
    return out


class SyncCheck(pl.Callback):
    """At the end of every fit, check that all ranks hold identical observer ranges and weights.

    Raises ``RuntimeError`` naming the first tensor that differs between ranks. ``dump_dir``: each
    rank also writes ``<dump_dir>/rank<r>-fit<k>.pt`` (``{"observers": ..., "params": ...}``) for
    inspection (``k`` counts the fits of the job: a ``finetune`` stage, the main training).
    Add it with ``+callbacks.sync_check._target_=lowbit.distributed.SyncCheck``.
    """

    def __init__(self, dump_dir: str | None = None, check_params: bool = True):
        self.dump_dir, self.check_params = dump_dir, check_params

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        state = {"observers": observer_state(model)}
        if self.check_params:
            state["params"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        if self.dump_dir:
            fits = len(list(Path(self.dump_dir).glob(f"rank{global_rank()}-fit*.pt"))) if Path(
                self.dump_dir).is_dir() else 0
            Path(self.dump_dir).mkdir(parents=True, exist_ok=True)
            torch.save(state, Path(self.dump_dir) / f"rank{global_rank()}-fit{fits}.pt")
        ranks = gather_objects(state)
        for r, other in enumerate(ranks[1:], 1):
            for kind, tensors in state.items():
                for name, value in tensors.items():
                    if not torch.equal(value, other[kind][name]):
                        raise RuntimeError(f"ranks 0 and {r} differ in {kind} {name} after fit")

