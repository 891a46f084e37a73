"""Runs ``train.py`` with the given arguments and exits the process abruptly (``os._exit``, as a SIGKILL
would: no cleanup, no final checkpoint) right after the N-th call of a ``LastCheckpoint`` hook, counting
every stage in order: ``epoch_end`` (the epoch-end checkpoint, written after the epoch's validation) or
``batch_end`` (after a training step, whether or not it wrote a checkpoint; after an epoch's last step that
is before the epoch's validation), or after the N-th ``ModelCheckpoint.on_validation_end`` of training
(``best_save``: the epoch's best.ckpt written, its epoch-end last.ckpt not yet). Used by test_exact_resume.py: a poll of the checkpoint file cannot stop a
run at those exact points.

    python tests/kill_after_save.py {epoch_end,batch_end,best_save} N train.py-overrides...
"""

import os
import runpy
import sys
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint

from lowbit import checkpointing

kind, after = sys.argv[1], int(sys.argv[2])
owner = ModelCheckpoint if kind == "best_save" else checkpointing.LastCheckpoint
name = {"epoch_end": "on_train_epoch_end", "batch_end": "on_train_batch_end", "best_save": "on_validation_end"}[kind]
hook = getattr(owner, name)
calls = 0


def counted(self, trainer, *args):
    global calls
    hook(self, trainer, *args)
    if kind == "best_save" and (trainer.sanity_checking or trainer.state.fn != "fit"):
        return  # only the validations of fit, whose best.ckpt is written here
    calls += 1
    if calls == after:
        os._exit(9)


setattr(owner, name, counted)
train_py = Path(__file__).resolve().parents[1] / "train.py"
sys.argv = [str(train_py), *sys.argv[3:]]
runpy.run_path(str(train_py), run_name="__main__")
