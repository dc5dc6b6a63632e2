"""The registry of online algorithms: an algorithm is a class with one ``@register`` line.

An :class:`Algorithm` declares what the shared loop (:mod:`prefkit.train.online`) must do for
it, and nothing else:

* its rollouts: ``value_head`` (PPO's critic), ``greedy_baseline`` (ReMax's greedy sample per
  prompt), :meth:`needs_reference` (reference log-probs), :meth:`needs_old` (a no-grad "old"
  forward before the update), :meth:`group_sizes` (samples per prompt; groups may differ in
  size), :meth:`adjust_rewards` (per-sample reward terms such as DAPO's overlong penalty) and
  :meth:`keep_groups` (dynamic sampling: groups dropped and refilled);
* its defaults for the ``"auto"`` settings: ``kl_in``, ``aggregation``, ``clip_eps_high``;
* :meth:`check` (what the config must satisfy, as :class:`~prefkit.train.config.ConfigError`);
* :meth:`targets` -- advantages or other per-sample targets from the scored rollout (the maths
  lives in :mod:`prefkit.losses.rl`) -- and :meth:`loss` -- one micro-batch's loss.

Adding an algorithm: a module with one subclass and ``@register("name")`` (plus one test); the
loop, the config's ``algo`` choices and the CLI's ``--algo`` pick it up from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from ...losses import rl

if TYPE_CHECKING:
    from ..loop import StepOutput

__all__ = ["DEFAULT_ALGORITHM", "NAMES", "Algorithm", "OnlineContext", "RolloutData",
           "available_algorithms", "get_algorithm", "register"]

_REGISTRY: dict[str, Algorithm] = {}
DEFAULT_ALGORITHM = "grpo"
"""``OnlineConfig.algo``'s default."""
_A = TypeVar("_A", bound=type)


class OnlineContext(Protocol):
    """What an algorithm may read from the running loop."""

    cfg: Any  #: the OnlineConfig
    kl_ctl: Any  #: the KL controller (``.value`` is the current coefficient)
    kl_in: str  #: "reward" or "loss" (resolved)
    kl_kind: str  #: the KL estimator (resolved)
    aggregation: str  #: the loss aggregation (resolved)
    needs_old: bool
    needs_reference: bool

    def global_mean(self, x: torch.Tensor) -> float:
        """Mean of ``x`` over every process's entries."""

    def global_totals(self, x: torch.Tensor) -> tuple[float, float]:
        """(sum, count) of ``x`` over every process."""


@dataclass
class RolloutData:
    """One process's scored rollout, what :meth:`Algorithm.targets` reads. Samples are flat in
    group order (group ``p`` holds ``sizes[p]`` of them); per-group tensors are ``[G_p, T_p]``.

    ``scores [N]``: shaped rewards; ``baseline [P]``: the shaped reward of each prompt's greedy
    sample (``greedy_baseline`` algorithms) else None; ``old``/``ref``/``values``: per-token
    log-probs of the sampling policy / the reference and PPO's values (zeros / None when not
    computed); ``masks``: valid completion tokens; ``seq_kl [N]``: summed k1 KL to the reference
    (0 when not measured)."""

    sizes: list[int]
    scores: torch.Tensor
    baseline: torch.Tensor | None
    old: list[torch.Tensor]
    ref: list[torch.Tensor]
    values: list[torch.Tensor | None]
    masks: list[torch.Tensor]
    seq_kl: torch.Tensor

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat ``[N, ...]`` tensor as one tensor per group."""
        return list(torch.split(flat, self.sizes))

    def uniform(self) -> bool:
        return len(set(self.sizes)) <= 1


def per_group(fn: Any, flat: torch.Tensor, sizes: Sequence[int], **kw: Any) -> torch.Tensor:
    """Apply a ``[P, G] -> [P, G]`` function (e.g. :func:`prefkit.losses.rl.grpo`) to flat
    samples of groups of ``sizes``: one call on the ``[P, G]`` view when all groups have the same
    size, else one call per group (its ``[1, G_p]`` row). Returns ``[N]``."""
    if len(set(sizes)) <= 1 and len(sizes):
        return fn(flat.view(len(sizes), sizes[0]), **kw).reshape(-1)
    rows = torch.split(flat, list(sizes))
    out = []
    for p, row in enumerate(rows):
        extra = {k: (v[p:p + 1] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        out.append(fn(row[None], **extra)[0])
    return torch.cat(out) if out else flat.new_zeros(0)


class Algorithm:
    """Base of every online algorithm (module docstring). Subclasses set the class attributes
    and override the hooks they need; the defaults are a critic-free policy-gradient method
    sampling ``num_generations`` per prompt."""

    name: str = ""
    summary: str = ""
    value_head: bool = False
    greedy_baseline: bool = False
    kl_in: str = "reward"
    aggregation: str = "token_mean"
    clip_eps_high: float | None = None
    min_generations: int = 1
    dynamic_sampling: bool = False  #: default of OnlineConfig.dynamic_sampling (None)
    overlong_fraction: float = 0.0  #: default overlong_buffer = this x max_new_tokens

    # ---- config
    def check(self, cfg: Any) -> None:
        """Raise ConfigError for settings this algorithm cannot run with."""
        from ..config import ConfigError

        g = cfg.num_generations
        if g < self.min_generations:
            raise ConfigError(f"{self.name} needs at least {self.min_generations} responses per "
                              f"prompt (group size G={g}); set num_generations >= "
                              f"{self.min_generations}")

    # ---- rollouts
    def needs_reference(self, cfg: Any) -> bool:
        """Reference log-probs are computed (default: when the KL coefficient is > 0)."""
        return cfg.kl_coef > 0

    def needs_old(self, cfg: Any, kl_in: str) -> bool:
        """A no-grad forward gives the sampling policy's log-probs before the update: needed
        when the update is off-policy (several epochs / minibatches) or a KL penalty goes into
        the reward; otherwise the update's own forward equals them."""
        return (cfg.ppo_epochs > 1 or cfg.num_minibatches > 1
                or (kl_in == "reward" and cfg.kl_coef > 0))

    def group_sizes(self, cfg: Any, prompts: Sequence[Any], iteration: int) -> list[int]:
        """Samples per prompt of a sampling round (``prompts``: the round's GLOBAL prompt list,
        the same on every process). Default: ``num_generations`` each. Groups of other sizes
        are sampled as ``max(sizes)`` per prompt and cut, so the samples stay a pure function of
        the seed, the iteration and the global row."""
        return [cfg.num_generations] * len(prompts)

    def adjust_rewards(self, cfg: Any, raw: torch.Tensor, lengths: torch.Tensor,
                       truncated: torch.Tensor) -> torch.Tensor:
        """Per-sample reward terms added before shaping (flat ``[N]``): the soft overlong
        penalty when ``overlong_buffer`` resolves to > 0
        (:func:`prefkit.losses.rl.overlong_penalty`)."""
        buffer = cfg.resolved_overlong_buffer()
        if not buffer:
            return raw
        return raw + rl.overlong_penalty(lengths, max_length=cfg.max_new_tokens, buffer=buffer)

    def keep_groups(self, cfg: Any, rewards: list[torch.Tensor]) -> list[bool] | None:
        """Dynamic sampling: which groups (their adjusted rewards) enter the batch; the loop
        samples more prompts until the batch is full. When ``dynamic_sampling`` resolves to
        true: the groups whose rewards are not all equal (:func:`prefkit.losses.rl.
        varied_groups`); else None (no filtering)."""
        if not cfg.resolved_dynamic_sampling():
            return None
        return [bool(rl.varied_groups(r[None])[0]) for r in rewards]

    # ---- update
    def targets(self, ctx: OnlineContext, data: RolloutData) -> dict[str, list[torch.Tensor]]:
        """Per-group training targets (``{"adv": [[G_p, T_p], ...]}``, ...), collated with the
        group's tokens into the micro-batches :meth:`loss` reads."""
        return {}

    def loss(self, ctx: OnlineContext, logps: torch.Tensor, values: torch.Tensor | None,
             batch: dict[str, Any]) -> StepOutput:
        """One micro-batch's loss: ``logps [B, T]`` of the policy being trained, PPO's
        ``values [B, T]`` (else None), the collated ``batch`` (``mask``, ``old``, ``ref``,
        ``scores`` flat ``[B]``, ``sizes``, and the :meth:`targets` keys)."""
        raise NotImplementedError


def register(name: str, *, summary: str = ""):
    """Class decorator: register an :class:`Algorithm` subclass (one instance) as ``name``."""
    def deco(cls: _A) -> _A:
        if name in _REGISTRY:
            raise ValueError(f"online algorithm {name!r} is already registered")
        inst = cls()
        inst.name = name
        inst.summary = summary or (cls.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = inst
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove an algorithm (tests that register their own)."""
    _REGISTRY.pop(name, None)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``; ValueError listing the names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown online algorithm {name!r}; available: "
                         f"{', '.join(_REGISTRY)}") from None


def available_algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm, in registration order."""
    return dict(_REGISTRY)


class _Names(Sequence[str]):
    """The registered names, live (a config's ``choices``: an algorithm registered later, e.g.
    in a user's module, is accepted)."""

    def __getitem__(self, i):  # type: ignore[override]
        return list(_REGISTRY)[i]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


NAMES: Sequence[str] = _Names()
