"""Train (QAT / distillation) one composed lowbit job: ``python train.py +experiment=demo_sst2``."""

import hydra
from omegaconf import DictConfig

from lowbit.cli import train_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    return train_main(cfg)


if __name__ == "__main__":
    main()
