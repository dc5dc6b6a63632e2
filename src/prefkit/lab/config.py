"""The settings of one lab run (:class:`LabConfig`), checked in full when the config is built.

Every field is validated in ``__post_init__`` -- before the lab loads or trains anything -- so a
bad value is an immediate :class:`~prefkit.train.config.ConfigError` naming the setting, the
value and what is expected (``invalid LabConfig.k=1: expected an integer >= 2``); an unknown
method lists the known ones (:func:`known_methods`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..train.config import ConfigError

__all__ = ["ONLINE_METHODS", "QUICK", "LabConfig", "check_method", "known_methods"]

ONLINE_METHODS = ("ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax", "online_dpo",
                  "online_ipo", "online_raft", "rlaif", "dapo", "gspo", "reinforce_pp")
"""Online methods (:func:`prefkit.train.online.train_online` against the proxy reward model --
on a verifiable task (:mod:`prefkit.lab.verifiable_tasks`) against the task's checker instead;
``rlaif``: online DPO against a jury of the lab's simulated LLM judges)."""


def known_methods() -> list[str]:
    """Every method name the lab runs: the direct losses of :mod:`prefkit.losses` that train a
    policy (combinations such as ``dpo+0.2*sft`` and arguments such as ``ipo(beta=0.5)`` work
    too), ``raft`` and the online methods."""
    from .. import losses
    from ..train.loss_spec import POLICY_KINDS

    direct = sorted(n for n, s in losses.available().items() if s.kind in POLICY_KINDS)
    return [*direct, "raft", *ONLINE_METHODS]


def check_method(method: Any) -> None:
    """Raise :class:`ConfigError` naming ``LabConfig.methods`` unless ``method`` is a lab
    method: ``raft``, an online method, or a loss spec that trains a policy. A loss spec is
    checked by :func:`prefkit.train.loss_spec.check_loss_spec` -- the rule `prefkit train
    preference --loss` follows: grammar, names, hyper-parameter names, types and ranges
    (``ipo(beta=abc)`` and ``ipo(beta=-1)`` are refused here, not at the first training
    step)."""
    from .. import losses
    from ..train.loss_spec import POLICY_KINDS, check_loss_spec

    known = f"known methods: {', '.join(known_methods())}"
    if not isinstance(method, str):
        raise ConfigError(f"invalid LabConfig.methods: {method!r} is not a name; {known}")
    if method in ONLINE_METHODS or method == "raft":
        return
    try:
        names = [name for name, _, _ in losses.parse_loss_spec(method, check_names=False)]
    except losses.LossSpecError:
        names = []  # a grammar error: check_loss_spec below names it
    unknown = [name for name in names if name not in losses.available()]
    if unknown:
        which = "" if unknown == [method] else f" (no loss named {unknown[0]!r})"
        raise ConfigError(f"invalid LabConfig.methods: unknown method {method!r}{which}; "
                          f"{known}")
    terms = check_loss_spec(method, field="LabConfig.methods")
    kind = losses.combine(terms).loss_spec.kind
    if kind not in POLICY_KINDS:
        raise ConfigError(f"invalid LabConfig.methods: {method!r} is a {kind}-model loss, not "
                          f"a way to align a policy; {known}")


def _int(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"an integer >= {minimum}")


def _number(positive: bool) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                and (v > 0 if positive else v >= 0))

    return ok, "a finite number " + ("> 0" if positive else ">= 0")


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_prompts": _int(1), "k": _int(2), "n_eval": _int(2), "pool_size": _int(1),
    "best_of_n": _int(1), "steps": _int(1), "batch_size": _int(1), "rm_steps": _int(1),
    "rl_iterations": _int(1), "rl_prompts_per_iteration": _int(1), "rl_generations": _int(2),
    "curve_every": _int(0), "curve_prompts": _int(1), "seed": _int(0),
    "eval_samples": _int(1),
    "learning_rate": _number(True), "rm_learning_rate": _number(True),
    "raft_learning_rate": _number(True), "rl_learning_rate": _number(True),
    # temperature 0 (greedy) would give K identical samples (no pairs) and is not a valid
    # OnlineConfig.temperature: refused here, before any work
    "beta": _number(True), "rating_min_gap": _number(False), "temperature": _number(True),
    "pool_scale": _number(False), "overopt_length_bias": _number(False),
    "kl_coef": _number(False),
    "training_flips": (lambda v: isinstance(v, bool), "true or false"),
    "genrm": (lambda v: isinstance(v, bool), "true or false"),
    "feedback": (lambda v: v in ("pairs", "ratings"), "pairs or ratings"),
    "workdir": (lambda v: isinstance(v, str) and bool(v.strip()), "a folder name"),
    "cache_dir": (lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
                  "a folder name or null (default: <workdir>/cache)"),
    "overopt_ns": (lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v),
        "a list of integers >= 1"),
}


@dataclass
class LabConfig:
    """One lab run (:mod:`prefkit.lab.pipeline`); every value is checked on construction."""

    task: str = "sort"
    workdir: str = "lab-runs"
    cache_dir: str | None = None  # SFT models and reference log-probs; default workdir/cache
    n_prompts: int = 256
    k: int = 4
    n_eval: int = 256
    feedback: str = "pairs"  # "pairs" (the pool compares 2 samples) or "ratings" (see below)
    rating_min_gap: float = 0.1  # ratings -> pairs: the smallest score gap that makes a pair
    temperature: float = 1.0
    pool_size: int = 6
    pool_scale: float = 0.3
    training_flips: bool = False
    methods: list[str] = field(default_factory=lambda: ["dpo", "rpo", "ipo", "simpo", "kto",
                                                        "lipo", "raft", "grpo", "ppo", "rloo"])
    best_of_n: int = 8
    steps: int = 120
    batch_size: int = 16
    learning_rate: float = 1e-5  # direct losses (larger rates over-optimize: see QUICK)
    rm_learning_rate: float = 1e-4
    raft_learning_rate: float = 1e-4
    beta: float = 0.1
    rm_steps: int = 150
    overopt_length_bias: float = 1.0  # 0 turns the over-optimization stage off
    overopt_ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    rl_iterations: int = 12  # online methods (ppo, grpo, ...): rollout/update iterations
    rl_prompts_per_iteration: int = 32
    rl_generations: int = 4
    rl_learning_rate: float = 1e-4
    kl_coef: float = 0.05
    curve_every: int = 20  # offline methods: gold / proxy / KL on curve_prompts every N steps
    curve_prompts: int = 64
    eval_samples: int = 8  # verifiable tasks: samples per held-out prompt for the accuracy
    genrm: bool = False  # also train a generative RM; compare it with the BT RM
    seed: int = 0

    def __post_init__(self) -> None:
        from .tasks import TASKS

        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"invalid LabConfig.{key}={getattr(self, key)!r}: {expected}")

        if self.task not in TASKS:
            raise bad("task", f"expected one of {', '.join(TASKS)}")
        for key, (ok, expected) in _CHECKS.items():
            if not ok(getattr(self, key)):
                raise bad(key, f"expected {expected}")
        if not isinstance(self.methods, list) or not self.methods:
            raise bad("methods", "expected a non-empty list of methods (known methods: "
                      f"{', '.join(known_methods())})")
        seen: set[str] = set()
        for method in self.methods:
            if method in seen:
                raise bad("methods", f"{method!r} is listed twice")
            seen.add(method)
            check_method(method)


QUICK = dict(n_prompts=128, n_eval=128,
             methods=["dpo", "rpo", "kto", "lipo", "raft", "grpo", "ppo"], steps=120,
             rm_steps=80, best_of_n=8, rl_iterations=10)
"""Overrides for a run of well under two minutes (the tests' config).

Finding on the sort task: the direct losses need a small learning rate. At 1e-5 (120 steps)
DPO, RPO, IPO and SimPO all beat SFT (DPO: gold 0.58 -> 0.66, win rate 0.59, KL 0.26); at 1e-4
plain DPO and SimPO over-optimize -- answers three times longer, gold below zero, KL 20-37 --
probably because pushing down the rejected answers (filler words, then EOS) also pushes down the
EOS that ends the chosen ones, while DPO + NLL on the chosen answers (``rpo``) still improves."""
