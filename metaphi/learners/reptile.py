"""Reptile (Nichol et al., 2018): move φ towards the weights adapted on each task."""
from __future__ import annotations

import torch
from torch import Tensor

from ..tasks.task import Task, stack_tasks
from .functional import Params
from .maml import MAML


class Reptile(MAML):
    """Reptile. The meta-gradient is ``φ - θ_task`` averaged over tasks, where θ_task is the
    result of ``inner_steps`` SGD steps on the task's support *and* query data (as in the
    paper: Reptile trains on the whole task). Adaptation at test time uses the support set.
    """

    def __init__(self, model, loss: str = "ce", inner_lr: float = 0.01, inner_steps: int = 5,
                 eval_inner_steps: int | None = None, batched: bool | None = None) -> None:
        super().__init__(model, loss, inner_lr, inner_steps, first_order=True,
                         eval_inner_steps=eval_inner_steps, batched=batched)

    def outer_grads(self, tasks: list[Task], params: Params | None = None,
                    scale: float = 1.0) -> tuple[Params, dict[str, float]]:
        params = self.meta_params() if params is None else params
        n = max(len(tasks), 1) if scale == 1.0 else scale
        if self.use_batched(tasks):
            return self._batched_outer_grads(tasks, params, n)
        def one(learner: "Reptile", task: Task) -> tuple[dict, float, float]:
            with torch.no_grad():
                loss, metric = learner.episode(task, params)
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            return (learner.adapt_steps(x, y, params, learner.inner_steps, create_graph=False),
                    float(loss), float(metric))

        per_task = self.map_tasks(one, tasks, list(params.values()))
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for fast, _, _ in per_task:  # task order: the sum does not depend on thread timing
            for k in fast:
                total["model." + k] += (params["model." + k].detach() - fast[k]) / n
        return total, {"loss": sum(r[1] for r in per_task) / len(tasks),
                       "metric": sum(r[2] for r in per_task) / len(tasks)}

    def _batched_outer_grads(self, tasks: list[Task], params: Params,
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
            total["model." + k] = (params["model." + k].detach() - v.detach()).sum(0) / n
        return total, {"loss": float(losses.detach().mean()), "metric": float(metrics.mean())}

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Params | None = None,
              create_graph: bool = False) -> Params:
        # Reptile's adaptation is never differentiated.
        return self.adapt_steps(support_x, support_y, params, self.eval_inner_steps, False)
