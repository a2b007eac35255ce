"""metaphi: meta-learning on PyTorch.

Tasks (support + query sets) come from task sources; a learner f_φ adapts to a support set;
cross-task training updates the meta-parameters φ (``meta_params``) on the mean query loss::

    from metaphi import MAML, SinusoidSource, mlp, sample_tasks
"""
__version__ = "0.1.0"

from .learners import (ANIL, FOMAML, IMAML, MAML, R2D2, Adapted, Learner,  # noqa: E402
                       MAMLpp, MatchingNet, MetaSGD, ProtoNet, Reptile)
from .models import conv4, conv4_features, mlp  # noqa: E402
from .registry import (register_backbone, register_learner, register_meta_optimizer,  # noqa: E402
                       register_source)
from .tasks import (FewShotSource, SinusoidSource, Task, fewshot_splits, fixed_tasks,  # noqa: E402
                    sample_tasks)

__all__ = ["ANIL", "FOMAML", "IMAML", "MAML", "MAMLpp", "R2D2", "Adapted", "Learner",
           "MatchingNet", "MetaSGD", "ProtoNet", "Reptile", "conv4", "conv4_features", "mlp", "register_backbone",
           "register_learner", "register_meta_optimizer", "register_source", "FewShotSource",
           "SinusoidSource", "Task", "fewshot_splits", "fixed_tasks", "sample_tasks",
           "__version__"]
