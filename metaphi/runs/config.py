"""Run configuration: one validated, serialisable description of a meta-learning run.

pydantic validates every field before any work starts; a bad value is reported with its dotted
path and the allowed values (``config error: learner.name: Input should be 'maml', ...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "matchingnet", "r2d2")
EMBEDDING_LEARNERS = ("protonet", "matchingnet", "r2d2")
# options of the metric / closed-form learners, and the learners that take each
LEARNER_OPTIONS = {"distance": ("protonet",), "scale": EMBEDDING_LEARNERS,
                   "learn_scale": EMBEDDING_LEARNERS, "lam": ("r2d2",),
                   "batchnorm": EMBEDDING_LEARNERS, "population_tasks": EMBEDDING_LEARNERS}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Strict):
    """Where tasks come from and their shape."""

    source: Literal["sinusoid", "omniglot", "folder"] = "sinusoid"
    n_way: int = Field(5, ge=1)
    k_shot: int = Field(10, ge=1)
    q_queries: int = Field(10, ge=1, description="query examples per class (per task for regression)")
    eval_q_queries: int | None = Field(None, ge=1, description="queries at meta-val/test time")
    train_n_way: int | None = Field(None, ge=2, description="ways of meta-train episodes "
                                    "(default n_way; metric learners only)")
    data_dir: str | None = Field(None, description="dataset folder (default: $METAPHI_DATA)")
    meta_train_classes: Literal["train", "trainval"] = Field(
        "train", description="omniglot: meta-train on the split's train classes (meta-validation "
        "chooses φ), or on train+val (Snell et al.'s final models: no meta-validation, φ is the "
        "last step's, so fix `steps` from a train-classes run)")
    resample: Literal["lanczos", "nearest"] = Field(
        "lanczos", description="omniglot: how the 105 px drawings are downsampled, anti-aliased "
        "('lanczos', as Finn et al.'s MAML code) or to binary strokes ('nearest', as Snell et "
        "al.'s ProtoNet code)")
    split_seed: int = 0


class ModelConfig(_Strict):
    """The network whose initialisation (or embedding) is meta-learned."""

    name: Literal["mlp", "conv4"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [40, 40])
    width: int = Field(64, ge=1, description="conv4 filters")
    depth: int = Field(4, ge=1, le=5, description="conv4 blocks")
    in_channels: int = Field(1, ge=1)
    image_size: int = Field(28, ge=4)


class LearnerConfig(_Strict):
    """f_φ and its inner loop."""

    name: Literal[LEARNERS] = "maml"  # type: ignore[valid-type]
    inner_lr: float = Field(0.01, gt=0)
    inner_steps: int = Field(1, ge=1)
    eval_inner_steps: int | None = Field(None, ge=1)
    # None keeps the learner's own default (see its class docstring)
    distance: Literal["sqeuclidean", "cosine"] | None = Field(
        None, description="protonet: distance to the prototypes")
    scale: float | None = Field(
        None, gt=0, description="protonet/matchingnet/r2d2: initial scale of the logits")
    learn_scale: bool | None = Field(
        None, description="protonet/matchingnet/r2d2: meta-learn the logit scale")
    lam: float | None = Field(None, gt=0, description="r2d2: initial ridge penalty λ")
    batchnorm: Literal["episode", "population"] | None = Field(
        None, description="protonet/matchingnet/r2d2: BatchNorm statistics at evaluation: the "
        "episode's own ('episode') or population statistics estimated on meta-train episodes")
    population_tasks: int | None = Field(
        None, ge=1, description="batchnorm=population: meta-train episodes for the estimate")

    @model_validator(mode="after")
    def _options_apply(self) -> "LearnerConfig":
        for field, takers in LEARNER_OPTIONS.items():
            if getattr(self, field) is not None and self.name not in takers:
                raise ValueError(f"learner.{field}: {self.name!r} has no {field} option; it is "
                                 f"for {', '.join(map(repr, takers))} (or leave it unset)")
        return self

    def options(self) -> dict[str, Any]:
        """The options set for this learner, as keyword arguments of its class."""
        return {f: getattr(self, f) for f in LEARNER_OPTIONS if getattr(self, f) is not None}


class OptimConfig(_Strict):
    """The gradient meta-optimizer (outer loop)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(10000, ge=1, description="'step' schedule: steps between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="'step' schedule: decay factor")
    clip_grad_norm: float | None = Field(None, gt=0)


class RunConfig(_Strict):
    """A complete run: tasks, model, learner, meta-optimizer, budget and evaluation."""

    name: str = "run"
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    meta_optimizer: Literal["gradient"] = "gradient"
    loss: Literal["auto", "mse", "mae", "ce"] = "auto"
    steps: int = Field(1000, ge=1, description="outer-loop steps (meta-batches)")
    meta_batch: int = Field(25, ge=1)
    val_every: int = Field(500, ge=1)
    val_tasks: int = Field(200, ge=1)
    test_tasks: int = Field(1000, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    seed: int = 0
    device: str = "auto"
    loader_workers: int | None = Field(
        None, ge=0, description="processes that sample meta-train tasks a few steps ahead "
        "(None: 1 on a GPU, where sampling in the loop leaves the device idle; 0 on a CPU, "
        "where a worker would take a core from the step)")

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.task.source == "sinusoid" and self.learner.name in EMBEDDING_LEARNERS:
            raise ValueError(f"learner.name: {self.learner.name!r} is a classifier; sinusoid "
                             "regression needs one of 'maml', 'fomaml', 'metasgd', 'anil', 'reptile'")
        if self.task.source == "sinusoid" and self.model.name != "mlp":
            raise ValueError("model.name: sinusoid tasks take 1-d inputs; use 'mlp'")
        t = self.task
        if (t.train_n_way not in (None, t.n_way)
                and self.learner.name not in EMBEDDING_LEARNERS):
            raise ValueError(f"task.train_n_way: {self.learner.name!r} has a {t.n_way}-unit "
                             "output layer, so it meta-trains on n_way-way tasks; train_n_way "
                             "is for 'protonet', 'matchingnet', 'r2d2' (or leave it unset)")
        if t.resample != "lanczos" and t.source != "omniglot":
            raise ValueError(f"task.resample: applies to Omniglot's drawings, not to {t.source!r} "
                             "tasks; leave it 'lanczos'")
        if t.meta_train_classes == "trainval" and t.source != "omniglot":
            raise ValueError("task.meta_train_classes: 'trainval' needs a split with a trainval "
                             f"list (source 'omniglot'), not {t.source!r}; leave it 'train'")
        if self.task.source != "sinusoid" and self.model.name != "conv4":
            raise ValueError(f"model.name: {self.task.source} tasks are images; use 'conv4'")
        return self

    @property
    def loss_kind(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "mse" if self.task.source == "sinusoid" else "ce"


class ConfigError(ValueError):
    """A configuration problem, phrased for the user."""


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling (see `metaphi presets --show NAME` for all fields)"
        lines.append(f"  {where}: {msg}{got_s}")
    return "invalid run configuration:\n" + "\n".join(lines)


def validate_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``learner.inner_lr=0.1`` -> (["learner", "inner_lr"], 0.1); values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like field.sub=value (e.g. steps=2000)")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for o in overrides:
        path, value = parse_override(o)
        node = data
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {o!r}: {p!r} is not a section")
        node[path[-1]] = value
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields")
    return data


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
