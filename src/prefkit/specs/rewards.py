"""``--reward SPEC``: a reward source (:mod:`prefkit.rewards.sources`) from a spec string (it
was ``prefkit.rewards.sources.reward_from_spec``; ``gold:`` names a lab task and ``judge:`` a
judge, both layers above ``rewards``, so the string is resolved here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["reward_from_spec"]


def _same_vocab(a: Any, b: Any) -> bool:
    try:
        return a is b or a.get_vocab() == b.get_vocab()
    except AttributeError:
        return False


def parse_gym_spec(text: str, spec: str) -> tuple[str, int, int]:
    """``TASK[:N[:SEED]]`` (a reasoning-gym task, N entries drawn with SEED; defaults
    :data:`~prefkit.rewards.verifiable.gym.DEFAULT_ENTRIES` and 0) as ``(task, n, seed)``;
    ``spec`` names the whole option in the error."""
    from ..rewards.verifiable.gym import DEFAULT_ENTRIES

    task, *numbers = text.split(":") if text else [""]
    if not task or len(numbers) > 2 or not all(x.isdigit() for x in numbers):
        raise ValueError(f"{spec!r}: expected a reasoning-gym spec TASK[:N[:SEED]] (N and SEED "
                         "non-negative integers), e.g. rg:chain_sum:64:0")
    n = int(numbers[0]) if numbers else DEFAULT_ENTRIES
    seed = int(numbers[1]) if len(numbers) > 1 else 0
    return task, max(n, 1), seed


def _verifiable(spec: str, arg: str, prompts: str | None) -> Callable:
    """``verifiable:KIND[:ARG]`` (:mod:`prefkit.rewards.verifiable.kinds`); references from the
    prompts file ``prompts`` (its ``answer`` / ``reference`` / ``tests`` / ``solution`` field);
    ``rg:TASK[:N[:SEED]]``: a reasoning-gym task (:func:`~prefkit.rewards.verifiable.gym.
    gym_reward_for`)."""
    from ..rewards.verifiable.kinds import verifiable_reward
    from ..rewards.verifiable.source import read_references

    kind, _, rest = arg.partition(":")
    if kind == "rg":
        from ..rewards.verifiable.gym import gym_reward_for

        task, n, seed = parse_gym_spec(rest, spec)
        if prompts is not None and prompts.startswith("rg:"):  # --prompts rg:TASK[:N[:SEED]]
            p_task, p_n, p_seed = parse_gym_spec(prompts[3:], prompts)
            if p_task != task:
                raise ValueError(f"reward {spec!r} checks reasoning-gym task {task!r} but the "
                                 f"prompts {prompts!r} are of task {p_task!r}")
            if rest == task:  # no N/SEED in the reward: the prompts' draw
                n, seed = p_n, p_seed
            return gym_reward_for(task, n=n, seed=seed)
        return gym_reward_for(task, n=n, seed=seed, prompts_path=prompts)
    references = None
    if kind not in ("regex",):
        if prompts is None or prompts.startswith("lab:"):
            raise ValueError(f"reward {spec!r} needs reference answers: a prompts file whose "
                             "rows have an 'answer' (or 'reference', 'tests', 'solution') field")
        references = read_references(prompts)
    return verifiable_reward(kind, rest, references=references)


def reward_from_spec(spec: str, *, tokenizer: Any = None, prompts: str | None = None,
                     workers: int = 0, timeout: float = 10.0,
                     failure_value: float | None = None) -> Callable:
    """A reward source from a CLI string:

    * ``rm:PATH`` -- a saved :class:`~prefkit.rewards.RewardModel` (sampled ids scored directly
      when its tokenizer is the policy's, else re-tokenized text); a GPM model becomes a
      :class:`~prefkit.rewards.sources.GPMPreference` (for ``online_ipo``);
    * ``implicit:POLICY[,REFERENCE]`` -- the implicit reward of a DPO policy;
    * ``gold:TASK`` -- a lab task's gold reward;
    * ``python:module:function`` (or ``python:FILE.py:function``) --
      ``function(prompt, completion) -> float``; the working folder is searched too;
    * ``judge:CONFIG`` -- a pairwise judge (:func:`prefkit.specs.judge_from_spec`: an
      LLM behind an OpenAI-compatible server, a lab judge, a jury ...): each sample's
      round-robin win rate in its group, judged in both orders
      (:class:`prefkit.judges.reward_source.JudgeReward`; RLAIF);
    * ``verifiable:math`` / ``exact`` / ``choice`` / ``json`` / ``code`` -- a checker against
      each prompt's reference answer, read from the prompts file ``prompts`` (a path, as
      ``--prompts``); ``verifiable:regex:PATTERN`` (no reference); ``verifiable:rg:TASK[:N[:SEED]]``
      -- a reasoning-gym task (:mod:`prefkit.rewards.verifiable`; statuses counted in
      ``status_counts()``); with ``--prompts rg:TASK:N:SEED`` it checks those prompts.

    ``workers > 0`` runs a ``python:`` reward in that many worker processes
    (:class:`~prefkit.rewards.sources.ExecutedReward`): a call longer than ``timeout`` seconds
    is killed; a timed-out or failed call scores ``failure_value`` (required then).
    """
    from ..rewards.sources import FunctionReward, GPMPreference, ModelReward

    kind, _, arg = spec.partition(":")
    if not arg:
        raise ValueError(f"reward {spec!r}: expected KIND:ARGUMENT (rm:PATH, implicit:POLICY, "
                         "gold:TASK, python:module:function, judge:CONFIG or "
                         "verifiable:KIND)")
    if kind == "rm":
        from ..rewards.model import RewardModel

        model = RewardModel.from_pretrained(arg)
        same = tokenizer is None or _same_vocab(model.tokenizer, tokenizer)
        if getattr(model, "head_kind", None) == "gpm":
            if not same:
                raise ValueError(f"reward {spec!r}: a GPM preference needs the policy's tokenizer")
            return GPMPreference(model)
        return ModelReward(model, model.tokenizer, same_tokenizer=same)
    if kind == "implicit":
        from ..rewards.implicit import ImplicitReward

        policy, _, ref = arg.partition(",")
        model = ImplicitReward.from_paths(policy, ref or None)
        return ModelReward(model, model.tokenizer,
                           same_tokenizer=tokenizer is None or _same_vocab(model.tokenizer,
                                                                           tokenizer))
    if kind == "gold":
        from ..lab.tasks import get_task

        task = get_task(arg)
        return FunctionReward(task.gold_reward, name=f"gold:{arg}")
    if workers and kind != "python":
        raise ValueError(f"reward {spec!r}: reward_workers applies to python: rewards only (the "
                         "verifiable: checkers have their own time limits)")
    if kind == "python" and workers:
        from ..rewards.sources import ExecutedReward

        if failure_value is None:
            raise ValueError(f"reward {spec!r} with reward_workers={workers}: set "
                             "reward_failure_value, the reward of a call that times out or "
                             "fails (no default: a failure is never silently 0)")
        return ExecutedReward(arg, workers=workers, timeout=timeout, timeout_value=failure_value,
                              error_value=failure_value, name=arg)
    if kind == "python":
        from ..importing import import_function

        return FunctionReward(import_function(arg), name=arg)
    if kind == "judge":
        from ..judges.reward_source import JudgeReward
        from .judges import judge_from_spec

        return JudgeReward(judge_from_spec(arg), name=spec)
    if kind == "verifiable":
        return _verifiable(spec, arg, prompts)
    raise ValueError(f"reward {spec!r}: unknown kind {kind!r} (rm, implicit, gold, python, "
                     "judge or verifiable)")
