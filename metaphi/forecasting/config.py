"""Forecasting settings as pydantic models, with the run config's errors.

Every value is checked before any data is read or any model fitted; a bad one is a
:class:`metaphi.runs.config.ConfigError` that names the field (or the command-line option) and
what it accepts, in the same layout as a run config's errors::

    invalid forecast settings:
      --max-series: Input should be greater than or equal to 1 (got 0)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..runs.config import ConfigError, error_lines

META_CHOICES = ("fforma", "neural")
FALLBACKS = ("error", "mean")
BACKENDS = ("local", "dask")


def format_errors(err: ValidationError, title: str,
                  name: Callable[[str], str] = lambda field: field) -> str:
    """``title`` and one line per problem, as run configs report them
    (:func:`metaphi.runs.config.error_lines`), fields named through ``name``."""
    return f"invalid {title}:\n" + "\n".join(error_lines(err, rename=name))


class Settings(BaseModel):
    """A strict settings model: unknown fields are errors, assignments are validated, and a
    bad value raises :class:`ConfigError` naming the field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    title: ClassVar[str] = "settings"

    @staticmethod
    def field_name(field: str) -> str:
        """How errors name a field (the command-line option, for options)."""
        return field

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_errors(e, self.title, self.field_name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(format_errors(e, self.title, self.field_name)) from None

    def updated(self, **changes: Any):
        """A validated copy with ``changes``."""
        return type(self)(**{**self.model_dump(), **changes})


class ForecastOptions(Settings):
    """The options of ``metaphi forecast`` (one-shot, ``fit`` and ``predict``); each field is the
    command-line option of the same name (``max_series`` is ``--max-series``)."""

    title: ClassVar[str] = "forecast settings"

    @staticmethod
    def field_name(field: str) -> str:
        return "--" + field.replace("_", "-")

    horizon: int | None = Field(None, ge=1, description="forecast horizon h")
    freq: str | None = Field(None, description="pandas offset alias of the series' frequency")
    season_length: int | None = Field(None, ge=1, description="overrides the one --freq implies")
    methods: list[str] | None = Field(None, description="base forecasters (None: the default "
                                      "pool); 'all' and 'default' name the pools")
    meta: list[Literal["fforma", "neural", "none"]] = Field(default_factory=lambda: ["fforma"])
    stack: bool = False
    future: bool = False
    holdout_origins: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    max_series: int | None = Field(None, ge=1)
    plot_series: int = Field(6, ge=0)
    neural_steps: int | None = Field(None, ge=1)
    ensemble: bool = False
    nbeats_g: int | None = Field(None, ge=1)
    fforma_error: Literal["owa", "smape", "mape"] = "owa"
    neural_loss: list[Literal["mae", "smape", "mape", "mase"]] | None = None
    cache_dir: str | None = None
    fallback: Literal["error", "mean"] = Field(
        "error", description="too few series for FFORMA: stop with an error, or use the mean "
        "of the base forecasters instead")
    backend: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    n_jobs: int = Field(-1, description="processes for the base forecasters and the neural ensemble's "
                        "members (-1: all cores)")
    chunk_size: int = Field(500, ge=1, description="series per unit of resumable work")

    @field_validator("freq")
    @classmethod
    def _freq(cls, v: str | None) -> str | None:
        if v is not None:
            from .freq import to_offset

            try:
                to_offset(v)
            except ValueError as e:
                raise ValueError(str(e).removeprefix("--freq: ")) from None
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            from .base import resolve_methods

            resolve_methods(v)
        return v

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("give a number of processes >= 1, or -1 for all cores")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ForecastOptions":
        if self.backend == "dask" and not self.dask_address:
            raise ValueError("--backend dask needs the scheduler's address (--dask-address "
                             "tcp://HOST:8786)")
        if self.dask_address and self.backend != "dask":
            raise ValueError("--dask-address is only used with --backend dask")
        return self

    @classmethod
    def from_args(cls, values: dict[str, Any]) -> "ForecastOptions":
        """Validate parsed command-line values; errors name the options (``--max-series``)."""
        return cls(**{k: v for k, v in values.items() if k in cls.model_fields})
