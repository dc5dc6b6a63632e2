"""Check a loss spec (``"dpo"``, ``"ipo(beta=0.5)"``, ``"dpo+0.2*sft"``) before any work.

:func:`prefkit.losses.parse_loss_spec` checks the grammar and the loss names, and
:func:`prefkit.losses.combine` the hyper-parameter names; the VALUES of hyper-parameters reach
the loss function only at the first training step (``ipo(beta=abc)`` used to be a
``TypeError`` after the model had loaded). :func:`check_loss_spec` checks all of it when a
config is built: known names, known hyper-parameters, the value's type (that of the loss's own
default: number, true/false or text), numbers finite and in range, and the loss kind the
trainer can use. Ranges by hyper-parameter name (the conventions every registered loss follows):

* ``beta`` (inverse temperature / scale of the implicit reward) > 0;
* ``label_smoothing`` (an assumed label-flip rate) in [0, 0.5);
* ``f_alpha`` (f-DPO's alpha divergence) in (0, 1); ``theta`` (Rao-Kupper ties) > 1;
* ``delta`` (BCO's reward shift) any finite number;
* every other number (weights, coefficients, margins) >= 0.
"""

from __future__ import annotations

import math
from typing import Any

from .. import losses
from .config import Bounds, ConfigError

__all__ = ["POLICY_KINDS", "check_loss_spec"]

#: Loss kinds a policy trainer can optimize (``reward`` objectives train reward models).
POLICY_KINDS = ("pairwise", "listwise", "unpaired", "sft")

_BOUNDS = {
    "beta": Bounds(0, low_open=True),
    "label_smoothing": Bounds(0, 0.5, high_open=True),
    "f_alpha": Bounds(0, 1, low_open=True, high_open=True),
    "theta": Bounds(1, low_open=True),
    "delta": Bounds(),
}
_DEFAULT_BOUNDS = Bounds(0)
_CHOICES = {"divergence": ("reverse_kl", "forward_kl", "js", "alpha")}


def _problem(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` is not a valid value of hyper-parameter ``name`` (None when it is)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "expected a number"
        bounds = _BOUNDS.get(name, _DEFAULT_BOUNDS)
        if not math.isfinite(value) or not bounds.contains(value):
            return f"expected a finite number {bounds.describe()}"
        return None
    if isinstance(default, str):
        choices = _CHOICES.get(name)
        if not isinstance(value, str):
            return "expected text"
        if choices and value not in choices:
            return f"expected one of {', '.join(choices)}"
    return None


def check_loss_spec(text: str, *, field: str = "loss", kinds: tuple[str, ...] | None = None,
                    trained: str = "policies") -> list[tuple[str, float, dict]]:
    """Parse and check loss spec ``text`` (module docstring); return its terms
    ``[(name, weight, hyper-parameters)]``. ``kinds``: the loss kinds the caller can train (the
    combined kind must be one of them; ``trained`` names what the caller trains, for the
    message). Raises :class:`ConfigError` naming ``field``, the term,
    the hyper-parameter, its value and what is expected."""
    where = f"{field}={text!r}"
    try:
        terms = losses.parse_loss_spec(text)
        combined = losses.combine(terms)
    except ValueError as exc:  # LossSpecError, UnknownLossError
        raise ConfigError(f"invalid {where}: {exc}") from None
    for name, _, hparams in terms:
        defaults = losses.spec(name).hyperparameters
        for key, value in hparams.items():
            problem = _problem(key, value, defaults.get(key))
            if problem:
                raise ConfigError(f"invalid {where}: hyper-parameter {key}={value!r} of "
                                  f"{name!r}: {problem}")
    kind = combined.loss_spec.kind
    if kinds is not None and kind not in kinds:
        if kind == "reward":
            raise ConfigError(f"invalid {where}: {combined.loss_spec.name!r} is a reward-model "
                              "objective: train reward models with `prefkit rm train` "
                              "(prefkit.train.reward)")
        known = sorted(n for k in kinds for n in losses.available(k))
        raise ConfigError(f"invalid {where}: a {kind} loss; {trained} train with: "
                          f"{', '.join(known)}")
    return terms
