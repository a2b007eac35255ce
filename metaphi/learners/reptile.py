"""Reptile (Nichol et al., 2018): move φ towards the weights adapted on each task."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from ..registry import register_learner
from ..tasks.task import Task, stack_tasks
from .base import MODEL_PREFIX, Adapted, mean_stats, train_mode
from .functional import LossSpec, Params
from .maml import MAML, InnerLoopOptions


class ReptileOptions(InnerLoopOptions):
    name: str = "reptile"
    inner_steps: int = Field(5, ge=1, description="SGD steps on the whole task (support and "
                             "query) per meta-gradient")


@register_learner("reptile", options=ReptileOptions)
class Reptile(MAML):
    """Reptile. The meta-gradient is ``φ - θ_task`` averaged over tasks, where θ_task is the
    result of ``inner_steps`` SGD steps on the task's support *and* query data (as in the
    paper: Reptile trains on the whole task). Adaptation at test time uses the support set.

    Args:
        model: the network whose initialisation is φ.
        loss: as :class:`MAML`.
        inner_lr: inner SGD step size.
        inner_steps: inner steps per task for the meta-gradient.
        eval_inner_steps: inner steps on the support set in evaluation mode.
        batched: as :class:`MAML`.
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "ce", inner_lr: float = 0.01,
                 inner_steps: int = 5, eval_inner_steps: int | None = None,
                 batched: bool | None = None) -> None:
        super().__init__(model, loss, inner_lr, inner_steps, first_order=True,
                         eval_inner_steps=eval_inner_steps, batched=batched)

    def meta_grads(self, tasks: list[Task], params: Params | None = None,
                   normalize_by: float | None = None) -> tuple[Params, dict[str, float]]:
        """Reptile's pseudo-gradient ``(φ - θ_task) / n`` summed over tasks; the stats are the
        query loss and metric after adapting on the support set (evaluation steps)."""
        params = self.meta_params() if params is None else params
        n = float(normalize_by) if normalize_by is not None else max(len(tasks), 1)
        with train_mode(self):
            if self.use_batched(tasks):
                return self._batched_meta_grads(tasks, params, n)

            def one(learner: "Reptile", task: Task) -> tuple[Params, float, float]:
                with torch.no_grad():
                    loss, metric = learner.episode(task, params, create_graph=False)
                x = torch.cat([task.support_x, task.query_x])
                y = torch.cat([task.support_y, task.query_y])
                return (learner.fast_weights(x, y, params, learner.inner_steps, False),
                        float(loss), float(metric))

            per_task = self.map_tasks(one, tasks, list(params.values()))
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for fast, _, _ in per_task:  # task order: the sum does not depend on thread timing
            for k in fast:
                total[MODEL_PREFIX + k] += (params[MODEL_PREFIX + k].detach() - fast[k]) / n
        return total, mean_stats([(loss, metric) for _, loss, metric in per_task])

    def _batched_meta_grads(self, tasks: list[Task], params: Params,
                            n: float) -> tuple[Params, dict[str, float]]:
        batch = stack_tasks(tasks)
        with torch.no_grad():
            losses, metrics = self.batched_episodes(batch, params, create_graph=False,
                                                    steps=self.eval_inner_steps)
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        fast = self.batched_adapt(x, y, params, self.inner_steps, second_order=False)
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for k, v in fast.items():
            total[MODEL_PREFIX + k] = (params[MODEL_PREFIX + k].detach() - v.detach()).sum(0) / n
        return total, {"loss": float(losses.detach().mean()), "metric": float(metrics.mean())}

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None, *,
              create_graph: bool | None = None, steps: int | None = None) -> Adapted:
        # Reptile's adaptation is never differentiated; its support-set adaptation always
        # runs the evaluation steps (meta-training adapts on the whole task instead).
        steps = self.eval_inner_steps if steps is None else int(steps)
        return super().adapt(support_x, support_y, params, create_graph=False, steps=steps)
