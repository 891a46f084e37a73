"""Train (QAT / distillation) one composed lowbit job: ``python train.py +experiment=demo_sst2``."""

import sys

import hydra
from omegaconf import DictConfig

from lowbit.cli import preflight, train_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    return train_main(cfg)


if __name__ == "__main__":
    preflight(sys.argv[1:])  # composition errors as one line, before Hydra
    main()
