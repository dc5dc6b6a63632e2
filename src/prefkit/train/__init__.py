"""Training: the one accelerate-based loop (:func:`fit`) and its configuration."""

from .config import (
    ConfigError,
    LoopConfig,
    config_from_dict,
    config_help,
    load_config,
    parse_overrides,
)
from .loop import (
    Callback,
    FitResult,
    NonFiniteLossError,
    StepOutput,
    build_dataloader,
    fit,
    make_accelerator,
)

__all__ = [
    "Callback",
    "ConfigError",
    "FitResult",
    "LoopConfig",
    "NonFiniteLossError",
    "StepOutput",
    "build_dataloader",
    "config_from_dict",
    "config_help",
    "fit",
    "load_config",
    "make_accelerator",
    "parse_overrides",
]
