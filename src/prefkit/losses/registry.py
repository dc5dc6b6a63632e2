"""The loss registry: name -> pure tensor function, plus combination and input plumbing.

A loss is a plain function. Its *inputs* are the positional-or-keyword parameters
(tensors named with the canonical names, e.g. ``chosen_logps``); its *hyper-parameters*
are the keyword-only parameters (``beta``, ...), whose defaults are read from the
signature. Inputs with a default (``mask=None``) are optional. Every loss returns
``(loss_per_example [B], metrics)`` where ``metrics`` maps a name to a detached ``[B]``
tensor. Nothing is reduced here: the training loop reduces.

Adding a loss is one function plus one ``@register("name")`` line; ``kind`` and
``needs_reference`` are inferred from the argument names when they are not given.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

LossOutput = tuple[Tensor, dict[str, Tensor]]
LossFn = Callable[..., LossOutput]

KINDS: tuple[str, ...] = ("pairwise", "listwise", "unpaired", "sft", "reward")

_REGISTRY: dict[str, LossSpec] = {}


class UnknownLossError(KeyError, ValueError):
    """Raised by :func:`get` / :func:`spec` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown loss"


class MissingInputError(KeyError, ValueError):
    """Raised by :func:`call_loss` when a required input tensor is not available."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing loss input"


class LossSpecError(ValueError):
    """Raised by :func:`parse_loss_spec` / :func:`combine` for a malformed loss spec."""


@dataclass(frozen=True)
class LossSpec:
    """Metadata of a registered (or combined) loss.

    Attributes:
        name: registry name (or the canonical spec string of a combination).
        kind: one of ``"pairwise"``, ``"listwise"``, ``"unpaired"``, ``"sft"``, ``"reward"``
            (reward-model objectives on model scores, see :mod:`.reward`).
        needs_reference: True when the loss reads reference-model log-probs.
        fn: the function itself.
        inputs: required input tensor names, in signature order.
        optional_inputs: input tensor names with a default (e.g. ``mask``).
        hyperparameters: keyword-only hyper-parameters and their defaults.
        summary: first line of the docstring.
    """

    name: str
    kind: str
    needs_reference: bool
    fn: LossFn = field(repr=False, compare=False)
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def all_inputs(self) -> tuple[str, ...]:
        """Required then optional input names."""
        return self.inputs + self.optional_inputs


# --------------------------------------------------------------------------- signatures


def _split_signature(fn: Callable[..., Any]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(required inputs, optional inputs, hyper-parameters with defaults) of ``fn``."""
    required: list[str] = []
    optional: list[str] = []
    hparams: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.KEYWORD_ONLY:
            hparams[p.name] = None if p.default is p.empty else p.default
        elif p.default is p.empty:
            required.append(p.name)
        else:
            optional.append(p.name)
    return required, optional, hparams


def _infer_kind(names: Iterable[str]) -> str:
    names = set(names)
    if "chosen_logps" in names:
        return "pairwise"
    if "labels" in names:
        return "unpaired"
    if names & {"chosen_rewards", "rewards", "predictions", "chosen_embeddings"}:
        return "reward"
    if names & {"scores", "mask"}:
        return "listwise"
    return "sft"


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _make_spec(name: str, fn: LossFn, kind: str | None, needs_reference: bool | None) -> LossSpec:
    required, optional, hparams = _split_signature(fn)
    names = required + optional
    kind = kind or _infer_kind(names)
    if kind not in KINDS:
        raise ValueError(f"loss {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if needs_reference is None:
        needs_reference = any(n.startswith("ref_") for n in required)
    return LossSpec(
        name=name,
        kind=kind,
        needs_reference=bool(needs_reference),
        fn=fn,
        inputs=tuple(required),
        optional_inputs=tuple(optional),
        hyperparameters=hparams,
        summary=_summary(fn),
    )


# --------------------------------------------------------------------------- registry


def register(
    name: str,
    *,
    kind: str | None = None,
    needs_reference: bool | None = None,
    overwrite: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Decorator registering a loss function under ``name``.

    ``kind`` (pairwise/listwise/unpaired/sft/reward) is inferred from the input names when
    omitted; ``needs_reference`` defaults to "has a required ``ref_*`` input".
    Registering an existing name raises ``ValueError`` unless ``overwrite=True``.
    The function gets a ``loss_spec`` attribute and is returned unchanged otherwise.
    """

    def decorator(fn: LossFn) -> LossFn:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"loss {name!r} is already registered")
        s = _make_spec(name, fn, kind, needs_reference)
        _REGISTRY[name] = s
        fn.loss_spec = s  # type: ignore[attr-defined]
        return fn

    return decorator


def _unknown(name: str) -> UnknownLossError:
    known = ", ".join(sorted(_REGISTRY))
    return UnknownLossError(f"unknown loss {name!r}; known losses: {known}")


def get(name: str) -> LossFn:
    """The registered loss function called ``name`` (``UnknownLossError`` if none)."""
    try:
        return _REGISTRY[name].fn
    except KeyError:
        raise _unknown(name) from None


def spec(name: str | Callable[..., Any]) -> LossSpec:
    """The :class:`LossSpec` of a registered name, or of a registered/combined function."""
    if not isinstance(name, str):
        s = getattr(name, "loss_spec", None)
        if s is None:
            raise TypeError(f"{name!r} is neither a loss name nor a registered/combined loss")
        return s
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def available(kind: str | None = None) -> dict[str, LossSpec]:
    """All registered losses (optionally only those of one ``kind``), sorted by name."""
    return {n: s for n, s in sorted(_REGISTRY.items()) if kind is None or s.kind == kind}


# --------------------------------------------------------------------------- calling


def _resolve(fn_or_name: str | LossFn) -> LossFn:
    if isinstance(fn_or_name, str):
        if fn_or_name in _REGISTRY:
            return _REGISTRY[fn_or_name].fn
        if re.search(r"[+*(]", fn_or_name):
            return build_loss(fn_or_name)
        raise _unknown(fn_or_name)
    return fn_or_name


def _display_name(fn: Callable[..., Any]) -> str:
    s = getattr(fn, "loss_spec", None)
    return s.name if s is not None else getattr(fn, "__name__", repr(fn))


def select_inputs(fn_or_name: str | LossFn, available_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``available_inputs`` that the loss accepts.

    ``None`` values count as absent. Raises :class:`MissingInputError` naming the first
    required input that is absent.
    """
    fn = _resolve(fn_or_name)
    required, optional, _ = _split_signature(fn)
    out: dict[str, Any] = {}
    for name in required:
        if available_inputs.get(name) is None:
            have = sorted(k for k, v in available_inputs.items() if v is not None)
            raise MissingInputError(
                f"loss {_display_name(fn)!r} needs input {name!r}, which was not provided "
                f"(required inputs: {required}; provided: {have})"
            )
        out[name] = available_inputs[name]
    for name in optional:
        if available_inputs.get(name) is not None:
            out[name] = available_inputs[name]
    return out


def call_loss(
    fn_or_name: str | LossFn, available_inputs: Mapping[str, Any], **hparams: Any
) -> LossOutput:
    """Call a loss with the inputs it accepts picked out of ``available_inputs``.

    ``fn_or_name`` is a registered name, a spec string such as ``"dpo+0.2*sft"``, a
    registered function or a :func:`combine` result. Extra inputs are ignored; a missing
    required input raises :class:`MissingInputError`; an unknown hyper-parameter raises
    ``TypeError`` listing the accepted ones.
    """
    fn = _resolve(fn_or_name)
    _, _, known = _split_signature(fn)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(
            f"loss {_display_name(fn)!r} got unknown hyper-parameter(s) {unknown}; "
            f"accepted: {sorted(known)}"
        )
    return fn(**select_inputs(fn, available_inputs), **hparams)


# --------------------------------------------------------------------------- combination

Term = tuple[str, float, dict[str, Any]]


def _normalize_terms(terms: Sequence[Sequence[Any]]) -> list[Term]:
    out: list[Term] = []
    for t in terms:
        if isinstance(t, str):
            t = (t, 1.0)
        if len(t) not in (2, 3):
            raise LossSpecError(f"a loss term is (name, weight[, hparams]), got {t!r}")
        name, weight = t[0], float(t[1])
        hp = dict(t[2]) if len(t) == 3 and t[2] else {}
        if not isinstance(name, str):
            name = spec(name).name
        spec(name)  # raises UnknownLossError
        out.append((name, weight, hp))
    if not out:
        raise LossSpecError("a combined loss needs at least one term")
    return out


def format_loss_spec(terms: Sequence[Sequence[Any]]) -> str:
    """Canonical string of terms, inverse of :func:`parse_loss_spec`."""
    parts = []
    for name, weight, hp in _normalize_terms(terms):
        s = name
        if hp:
            s += "(" + ",".join(f"{k}={v}" for k, v in hp.items()) + ")"
        if weight != 1.0:
            s = f"{weight:g}*{s}"
        parts.append(s)
    return "+".join(parts)


def _sft_adapter(context: str) -> LossFn:
    from .sft import sft_loss, sft_on_best, sft_on_chosen, sft_on_desirable

    return {
        "pairwise": sft_on_chosen,
        "listwise": sft_on_best,
        "unpaired": sft_on_desirable,
        "sft": sft_loss,
    }[context]


def combine(terms: Sequence[Sequence[Any]]) -> LossFn:
    """Weighted sum of registered losses, as one loss function.

    ``terms`` is a list of ``(name, weight)`` or ``(name, weight, hparams)``. The result
    accepts the union of the terms' inputs (keyword arguments; its ``__signature__``
    lists them, required if any term requires them) and returns
    ``(sum_i weight_i * loss_i, metrics)``.

    * All non-``sft`` terms must share one kind, which is the kind of the combination.
    * An ``sft`` term adapts to that kind: pairwise -> NLL on the chosen response
      (``chosen_logps``/``chosen_lengths``); listwise -> NLL on the best-scored present
      response; unpaired -> NLL on desirable examples only (needs ``lengths``).
    * ``reward`` losses combine with each other (e.g. ``bt+0.01*reward_centering``) but
      not with ``sft`` (a reward model has no response log-probs).
    * Metrics: the first term's metrics keep their names; every other term's metrics are
      prefixed with ``"<name>/"`` (e.g. ``sft/nll``); with more than one term each term's
      unweighted loss is reported as ``"<name>/loss"`` (e.g. ``dpo/loss``, ``sft/loss``).
    """
    norm = _normalize_terms(terms)
    kinds = {spec(n).kind for n, _, _ in norm if spec(n).kind != "sft"}
    if len(kinds) > 1:
        raise LossSpecError(f"cannot combine losses of different kinds {sorted(kinds)}: {norm}")
    context = kinds.pop() if kinds else "sft"
    if context == "reward" and any(spec(n).kind == "sft" for n, _, _ in norm):
        raise LossSpecError(f"sft cannot be combined with reward-model losses: {norm}")

    bound: list[tuple[str, float, LossFn, dict[str, Any], list[str], list[str]]] = []
    seen: dict[str, int] = {}
    for name, weight, hp in norm:
        s = spec(name)
        fn = _sft_adapter(context) if s.kind == "sft" and name == "sft" else s.fn
        req, opt, known = _split_signature(fn)
        bad = sorted(set(hp) - set(known))
        if bad:
            raise LossSpecError(
                f"loss {name!r} has no hyper-parameter(s) {bad}; accepted: {sorted(known)}"
            )
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}{seen[name]}"
        bound.append((label, weight, fn, hp, req, opt))

    required: list[str] = []
    optional: list[str] = []
    for *_, req, _opt in bound:
        required += [n for n in req if n not in required]
    for *_, opt in bound:
        optional += [n for n in opt if n not in required and n not in optional]

    multi = len(bound) > 1

    def combined(**inputs: Any) -> LossOutput:
        total: Tensor | None = None
        metrics: dict[str, Tensor] = {}
        for i, (label, weight, fn, hp, req, opt) in enumerate(bound):
            args = {k: inputs[k] for k in req}
            args.update({k: inputs[k] for k in opt if inputs.get(k) is not None})
            loss, m = fn(**args, **hp)
            total = weight * loss if total is None else total + weight * loss
            prefix = "" if i == 0 else f"{label}/"
            for k, v in m.items():
                metrics[prefix + k] = v
            if multi:
                metrics[f"{label}/loss"] = loss.detach()
        assert total is not None
        return total, metrics

    # inputs are POSITIONAL_OR_KEYWORD in the advertised signature (keyword-only means
    # "hyper-parameter" in this registry); call the combination with keywords only.
    pk = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, pk) for n in required] + [
        inspect.Parameter(n, pk, default=None) for n in optional
    ]
    combined.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    name = format_loss_spec(norm)
    combined.__name__ = name
    combined.__doc__ = "Weighted sum of losses: " + name
    combined.loss_spec = LossSpec(  # type: ignore[attr-defined]
        name=name,
        kind=context,
        needs_reference=any(spec(n).needs_reference for n, _, _ in norm),
        fn=combined,
        inputs=tuple(required),
        optional_inputs=tuple(optional),
        hyperparameters={},
        summary="Weighted sum of losses: " + name,
    )
    combined.terms = norm  # type: ignore[attr-defined]
    return combined


# --------------------------------------------------------------------------- parsing

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(
    rf"\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\((?P<args>[^()]*)\)\s*)?"
    rf"(?:\*\s*(?P<post>{_NUMBER})\s*)?"
)
_TERM_HELP = "expected terms like 'dpo', '0.2*sft' or 'dpo(beta=0.2)', joined by '+'"


def _parse_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def _parse_args(text: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            raise LossSpecError(f"bad hyper-parameter {item!r} in {where}: expected key=value")
        out[key.strip()] = _parse_value(value)
    return out


def parse_loss_spec(text: str, *, check_names: bool = True) -> list[Term]:
    """Parse ``"dpo+0.2*sft"`` into ``[("dpo", 1.0, {}), ("sft", 0.2, {})]``.

    Grammar: terms joined by ``+``; a term is ``[weight*]name[(key=value, ...)]`` (a
    trailing ``*weight`` is accepted too). Values are parsed as bool/int/float, else
    kept as strings. With ``check_names`` unknown names raise :class:`UnknownLossError`.
    For an ``sft`` term inside a pairwise combination the NLL is on the chosen response
    (see :func:`combine`).
    """
    if not isinstance(text, str) or not text.strip():
        raise LossSpecError(f"empty loss spec {text!r}: {_TERM_HELP}")
    terms: list[Term] = []
    pos = 0
    while True:
        m = _TERM.match(text, pos)
        if m is None or m.end() == pos or m.group("name") is None:
            raise LossSpecError(
                f"invalid loss spec {text!r} at character {pos + 1} ({text[pos:]!r}): {_TERM_HELP}"
            )
        if m.group("weight") and m.group("post"):
            raise LossSpecError(f"invalid loss spec {text!r}: term {m.group(0)!r} has two weights")
        weight = float(m.group("weight") or m.group("post") or 1.0)
        hp = _parse_args(m.group("args") or "", repr(text))
        name = m.group("name")
        if check_names:
            spec(name)
        terms.append((name, weight, hp))
        pos = m.end()
        if pos == len(text):
            return terms
        if text[pos] != "+":
            raise LossSpecError(
                f"invalid loss spec {text!r} at character {pos + 1} ({text[pos:]!r}): {_TERM_HELP}"
            )
        pos += 1


def build_loss(text: str) -> LossFn:
    """``combine(parse_loss_spec(text))``: the callable for a CLI ``--loss`` string."""
    return combine(parse_loss_spec(text))
