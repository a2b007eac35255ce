"""metaphi: meta-learning on PyTorch.

Tasks (support + query sets) come from task sources; a learner f_φ adapts to a support set;
cross-task training updates the meta-parameters φ (``meta_params``) on the mean query loss.
"""
__version__ = "0.1.0"

from .learners import ANIL, FOMAML, MAML, Learner, MetaSGD, Reptile  # noqa: E402
from .tasks import FewShotSource, SinusoidFamily, Task, fewshot_splits  # noqa: E402

__all__ = ["ANIL", "FOMAML", "MAML", "Learner", "MetaSGD", "Reptile", "FewShotSource",
           "SinusoidFamily", "Task", "fewshot_splits", "__version__"]
