from lowbit.data.glue import DATA_DIR_ENV, GLUEDataModule, read_jsonl, resolve_data_dir
from lowbit.data.metrics import compute_metrics
from lowbit.data.tasks import GLUE_TASKS, GlueTask

__all__ = ["DATA_DIR_ENV", "GLUEDataModule", "GLUE_TASKS", "GlueTask", "compute_metrics", "read_jsonl",
           "resolve_data_dir"]
