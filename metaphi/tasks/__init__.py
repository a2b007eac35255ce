"""Tasks (support + query sets), task sources and samplers."""
from .fewshot import (ClassIndex, DatasetData, FewShotSource, ImageFolderData, LabelledData,
                      TensorData, as_labelled, fewshot_splits, load_image, split_classes)
from .prefetch import meta_batches
from .sinusoid import SinusoidSource
from .sources import TaskSource, fixed_tasks, sample_batch, sample_tasks, task_rng
from .task import Task, stack_tasks, unstack_tasks

__all__ = ["ClassIndex", "DatasetData", "FewShotSource", "ImageFolderData", "LabelledData",
           "TensorData", "as_labelled", "fewshot_splits", "load_image", "split_classes",
           "meta_batches", "SinusoidSource", "TaskSource", "fixed_tasks", "sample_batch", "sample_tasks",
           "task_rng", "Task", "stack_tasks", "unstack_tasks"]
