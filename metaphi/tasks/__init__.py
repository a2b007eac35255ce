"""Tasks (support + query sets), task sources and samplers, and sources built from sources:
mixtures of domains, task augmentation, Meta-Dataset episodes, regression families."""
from .augment import MLTI, Affine, Rotate, permute_labels
from .class_lists import ClassLists
from .combinators import MapSource, MixtureSource, build_splits
from .fewshot import (ClassIndex, DatasetData, FewShotSource, ImageFolderData, LabelledData,
                      TensorData, as_labelled, fewshot_splits, load_image, split_classes)
from .prefetch import meta_batches
from .sinusoid import SinusoidSource
from .sources import TaskSource, fixed_tasks, sample_batch, sample_tasks, task_rng
from .regression import FAMILIES, FunctionSource
from .task import Task, stack_tasks, unstack_tasks
from .variable import VariableEpisodeSource

__all__ = ["ClassIndex", "DatasetData", "FewShotSource", "ImageFolderData", "LabelledData",
           "TensorData", "as_labelled", "fewshot_splits", "load_image", "split_classes",
           "meta_batches", "SinusoidSource", "TaskSource", "fixed_tasks", "sample_batch", "sample_tasks",
           "task_rng", "Task", "stack_tasks", "unstack_tasks", "MLTI", "Affine", "Rotate",
           "permute_labels", "ClassLists", "MapSource", "MixtureSource", "build_splits",
           "FAMILIES", "FunctionSource", "VariableEpisodeSource"]
