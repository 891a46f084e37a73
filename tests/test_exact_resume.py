"""Exact resume: a run killed with SIGKILL at a random step (mid-epoch, in any stage) and resumed ends with the
same final metrics and weights as the uninterrupted run, bit for bit (CPU, same seed), with length-grouped batches.

The run combines every kind of method state: the float fine-tune stage (its own checkpoints), a frozen teacher
(distillation), EMA activation observers (8-bit EMA activations), pruning masks and their schedule, the
optimizer and LR schedule, the data order and the RNG (dropout). ``LOWBIT_RESUME_LOOPS=10`` repeats the
kill/resume cycle (the issue asks for 10 passes in a row once, locally).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN = ["model=tiny", "logger=none", "callbacks=default", "~callbacks.progress_bar",
       "callbacks.last_checkpoint.every_n_train_steps=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "trainer.max_epochs=3", "data.max_train_samples=48", "data.max_eval_samples=16", "data.batch_size=8",
       "seed=42", "finetune.epochs=1", "distillation=kd_logits", "quantizer=uniform", "bit_assignment.bits=4",
       "pruning=magnitude", "pruning.final_sparsity=0.5", "pruning.final_warmup=0.2", "ckpt_path=auto",
       "data.group_by_length=true", "data.length_group_batches=2"]  # grouped order: also replayed on resume
STEPS_FINETUNE, STEPS_MAIN = 6, 18  # 48 / 8 = 6 batches per epoch


def _cmd(run_dir: Path, tmp_path: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path}/cache"]


def _env() -> dict[str, str]:
    # one thread: the same kernels (and float reduction order) in every process
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def _step_of(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - not written yet
        return None


def _final(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # best.ckpt too: it is what deploy, export and a later table row read; a resumed run must not leave it stale
    versioned = sorted(p.name for p in run_dir.rglob("best-v*.ckpt"))
    assert not versioned, f"a resumed run wrote versioned best checkpoints {versioned}: best.ckpt is stale"
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return summary, state, best


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_ref")
    run_dir = tmp / "run"
    result = subprocess.run(_cmd(run_dir, tmp), check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _final(run_dir)


def _kill_at(run_dir: Path, tmp_path: Path, stage: str, step: int) -> None:
    """Start the run and SIGKILL it once ``stage``'s last.ckpt has reached ``step`` (mid-epoch)."""
    ckpt = run_dir / ("finetune" if stage == "finetune" else "") / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cmd(run_dir, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        reached = _step_of(ckpt) if ckpt.is_file() else None
        if reached is not None and reached >= step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _one_cycle(rng: random.Random, tmp_path: Path, uninterrupted) -> str:
    stage = rng.choice(["finetune", "main"])
    steps = STEPS_FINETUNE if stage == "finetune" else STEPS_MAIN
    step = rng.choice([s for s in range(1, steps) if s % 6 != 0])  # mid-epoch
    run_dir = tmp_path / f"run_{stage}_{step}_{rng.random():.6f}"
    _kill_at(run_dir, tmp_path, stage, step)
    _resume_and_compare(run_dir, tmp_path, uninterrupted, f"in {stage} at step {step}")
    return f"{stage}@{step}"


def _resume_and_compare(run_dir: Path, tmp_path: Path, uninterrupted, where: str) -> None:
    result = subprocess.run(_cmd(run_dir, tmp_path), check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary, state, best = _final(run_dir)
    ref_summary, ref_state, ref_best = uninterrupted
    assert summary.keys() == ref_summary.keys()
    differ = {k: (summary[k], ref_summary[k]) for k in summary if summary[k] != ref_summary[k]}
    assert not differ, f"killed {where}: summary differs: {differ}"
    different = [k for k in state if not torch.equal(state[k], ref_state[k])]
    assert not different, f"killed {where}: {len(different)} tensors differ, e.g. {different[:3]}"
    different = [k for k in best if not torch.equal(best[k], ref_best[k])]
    assert not different, f"killed {where}: best.ckpt: {len(different)} tensors differ, e.g. {different[:3]}"


# The cases that failed before a fix (bf8b154/da286b0; best.ckpt: this commit) run in every suite; the other two
# (~16 s each) with LOWBIT_RESUME_ALL_BOUNDARIES=1, to keep `make test` inside its 15 minutes on 2 cores.
_ALL_BOUNDARIES = pytest.mark.skipif(not os.environ.get("LOWBIT_RESUME_ALL_BOUNDARIES"),
                                     reason="set LOWBIT_RESUME_ALL_BOUNDARIES=1 to run every epoch-boundary case")


@pytest.mark.parametrize(("kind", "n", "where"), [
    ("epoch_end", 1, "after the fine-tune stage's last epoch"),
    # best.ckpt was written after this epoch-end last.ckpt (Lightning saved it at the train epoch's end), so the
    # resumed run forgot the epoch's best and left a wrong best.ckpt (79 tensors differed before the fix)
    ("epoch_end", 2, "after the main stage's first epoch"),
    ("epoch_end", 4, "after the main stage's last epoch"),
    ("batch_end", 6, "after the fine-tune stage's last step, before its validation"),
    pytest.param("batch_end", 12, "after the main stage's first epoch's last step, before its validation",
                 marks=_ALL_BOUNDARIES),
    pytest.param("batch_end", 24, "after the main stage's last step, before its validation", marks=_ALL_BOUNDARIES),
    # best.ckpt written, the epoch-end last.ckpt not: the resumed run redoes the epoch's last step and validation
    # and must rewrite best.ckpt (Lightning's version counter wrote best-v1.ckpt, leaving best.ckpt stale)
    ("best_save", 2, "after the main stage's first best.ckpt, before its epoch-end checkpoint")])
def test_kill_right_after_an_epoch_boundary_checkpoint_and_resume_is_exact(tmp_path, uninterrupted, kind, n, where):
    """Killed after an epoch's last step (before its validation: no checkpoint there, the previous step's is
    resumed), after the validation's best.ckpt, or after the epoch-end checkpoint (written after the validation). What the next RNG draw must be
    differs: the validation's loader, the next epoch's loader, or, after a stage's last epoch, whatever follows
    ``fit`` (the next stage's dropout)."""
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after_save.py"), kind, str(n),
                             *_cmd(run_dir, tmp_path)[2:]], check=False, cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == 9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert not (run_dir / "summary.json").exists()
    _resume_and_compare(run_dir, tmp_path, uninterrupted, where)


def test_kill_at_a_random_step_and_resume_is_exact(tmp_path, uninterrupted):
    loops = int(os.environ.get("LOWBIT_RESUME_LOOPS", "1"))
    rng = random.Random(int(os.environ.get("LOWBIT_RESUME_SEED", str(time.time_ns()))))
    done = [_one_cycle(rng, tmp_path, uninterrupted) for _ in range(loops)]
    print("exact resume after SIGKILL at:", ", ".join(done))
