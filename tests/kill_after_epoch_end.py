"""Runs ``train.py`` with the given arguments and exits the process abruptly (``os._exit``, as a SIGKILL
would: no cleanup, no final checkpoint) right after the N-th epoch-end ``last.ckpt`` of the job is written,
counting every stage's epochs in order. Used by test_exact_resume.py: a poll cannot stop a run at that exact
point (after the epoch's validation, before anything else), a kill there is the case it must resume exactly.

    python tests/kill_after_epoch_end.py N train.py-overrides...
"""

import os
import runpy
import sys
from pathlib import Path

from lowbit import checkpointing

after = int(sys.argv[1])
saves = 0
epoch_end = checkpointing.LastCheckpoint.on_train_epoch_end


def on_train_epoch_end(self, trainer, pl_module):
    global saves
    epoch_end(self, trainer, pl_module)
    saves += 1
    if saves == after:
        os._exit(9)


checkpointing.LastCheckpoint.on_train_epoch_end = on_train_epoch_end
train_py = Path(__file__).resolve().parents[1] / "train.py"
sys.argv = [str(train_py), *sys.argv[2:]]
runpy.run_path(str(train_py), run_name="__main__")
