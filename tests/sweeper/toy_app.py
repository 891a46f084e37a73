"""Toy Hydra app for the lowbit_optuna sweeper tests.

Every call appends JSON lines to the file named by $TOY_LOG:
``{"event": "start", ...params}`` on entry and ``{"event": "done", ...}`` on success.
Kill switch: $TOY_KILL_ON_CALL=N SIGKILLs the whole (sweeper) process on the N-th call,
right after logging "start" -- simulating an interrupted sweep (or a dead worker, with several).
Events carry the sweeper process id (``pid``); ``sleep`` makes a call take that many seconds.
"""

import fcntl
import json
import math
import os
import signal
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def _log(event: dict) -> int:
    """Append an event; return the number of "start" events logged before this one (atomic across
    processes: several sweeper workers may share one log)."""
    path = os.environ.get("TOY_LOG")
    if not path:
        return 0
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n_started = sum(1 for line in f if line.strip() and json.loads(line)["event"] == "start")
        f.write(json.dumps(event) + "\n")
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)
    return n_started


def extra_space(cfg: DictConfig, trial) -> None:
    """custom_search_space hook: an extra (new) key plus a conditional parameter."""
    trial.suggest_int("+z", 10, 12)
    if trial.params["opt"] == "adam":
        trial.suggest_float("+beta", 0.8, 0.99)


@hydra.main(version_base="1.3", config_path="conf", config_name="toy")
def main(cfg: DictConfig):
    params = {"x": cfg.x, "y": cfg.y, "opt": cfg.opt, "job_num": HydraConfig.get().job.num, "pid": os.getpid()}
    params.update({k: cfg[k] for k in ("z", "beta") if k in cfg})
    call = _log({"event": "start", **params}) + 1

    if os.environ.get("TOY_KILL_ON_CALL") and int(os.environ["TOY_KILL_ON_CALL"]) == call:
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.sleep:
        time.sleep(float(cfg.sleep))
    if cfg.fail_on_call is not None and int(cfg.fail_on_call) == call:
        raise ValueError(f"toy failure on call {call} (x={cfg.x})")

    if cfg.mode == "multi":
        value = [float(cfg.x), float(cfg.y)]
    else:
        value = (float(cfg.x) - 0.3) ** 2 + 0.01 * int(cfg.y) + (0.1 if cfg.opt == "sgd" else 0.0)
    if cfg.nan_on_call is not None and int(cfg.nan_on_call) == call:
        value = math.nan

    _log({"event": "done", **params, "value": value})
    return value


if __name__ == "__main__":
    main()
