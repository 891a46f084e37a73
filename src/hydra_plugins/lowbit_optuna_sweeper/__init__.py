"""lowbit's Hydra sweeper plugin for Optuna >= 4 (``hydra/sweeper=lowbit_optuna``).

Kept import-light on purpose: Hydra imports every module of the
``hydra_plugins`` namespace on start-up, so optuna is only imported when a
sweep actually runs (see ``_impl.py``).
"""

__version__ = "0.1.0"
