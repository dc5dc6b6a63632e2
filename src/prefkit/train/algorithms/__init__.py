"""Online algorithms as registered parts (:mod:`.registry`): one module per algorithm or family,
each a small :class:`~.registry.Algorithm` subclass with ``@register("name")``. Importing this
package registers the built-in ones, in this order: ppo, reinforce, rloo, grpo, dr_grpo, remax,
online_dpo, online_ipo, raft, dapo, gspo, reinforce_pp."""

from __future__ import annotations

import importlib

from .registry import (
    DEFAULT_ALGORITHM,
    NAMES,
    Algorithm,
    OnlineContext,
    RolloutData,
    available_algorithms,
    get_algorithm,
    per_group,
    register,
    unregister,
)

__all__ = ["DEFAULT_ALGORITHM", "NAMES", "Algorithm", "OnlineContext", "RolloutData",
           "available_algorithms", "get_algorithm", "per_group", "register", "unregister"]

#: the built-in modules, imported in this order (the registration order: the historic names first)
BUILTIN = ("ppo", "critic_free", "pairs", "raft", "dapo", "gspo", "reinforce_pp")
for _module in BUILTIN:
    importlib.import_module(f".{_module}", __name__)
