"""Reward sources for online training: one interface for every way of scoring a sample.

A reward source is called on one rollout's groups and returns ``[P, G]`` float32 rewards:

    source(prompts: list[str], completions: list[list[str]],
           prompt_ids: list[list[int]], completion_ids: list[list[list[int]]]) -> Tensor[P, G]

Text and token ids are both given, so a source can use whichever it needs (a reward model
that shares the policy's tokenizer scores the exact sampled ids; a Python function reads
text). Sources:

* :class:`FunctionReward` -- any ``fn(prompt, completion) -> float`` (gold / verifiable rewards:
  exact match, unit tests, the lab's gold reward).
* :class:`ExecutedReward` -- the same per-sample function (``fn(prompt, completion[,
  reference])``) run in worker processes with a per-call timeout
  (:class:`~prefkit.rewards.executor.RewardExecutor`): a hanging or crashing reward becomes a
  ``timeout`` / ``error`` status with a configured value and the run goes on.
* :class:`ModelReward` -- a :class:`~prefkit.rewards.RewardModel` (or anything with its
  ``forward(PackedBatch) -> RewardOutput`` interface, e.g. :class:`~prefkit.rewards.ImplicitReward`,
  the implicit reward ``beta * log pi/pi_ref`` of a DPO policy); each prompt is computed once
  for its G responses (prefix-shared rows). ``field="rewards_min"`` scores ensembles
  conservatively.
* :class:`PairwiseJudgeReward` -- a judge of pairs, ``judge(prompt, a, b) -> P(a beats b)``
  (or an outcome 1 / 0.5 / 0): each response's reward is its mean win probability against the
  other responses of its group (a round robin; G >= 2).

:class:`RewardShaping` post-processes any source: a length penalty, normalization (per batch
or with running moments) and clipping -- in that order.

Spec strings (``rm:PATH``, ``gold:TASK``, ``judge:CONFIG`` ...) are resolved into these sources
by :func:`prefkit.specs.reward_from_spec`, in the layer above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..losses import rl
from ..models.packing import PromptGroup
from .executor import RewardExecutor, RewardHandle
from .scoring import packed_outputs

#: ``RewardShaping.normalize`` values (also ``OnlineConfig.reward_normalization``).
REWARD_NORMALIZATIONS = ("none", "batch", "running")

__all__ = [
    "BTPreference",
    "ExecutedReward",
    "FunctionReward",
    "GPMPreference",
    "ModelReward",
    "PairwiseJudgeReward",
    "RewardShaping",
    "RewardSource",
]


class RewardSource(Protocol):
    """``source(prompts, completions, prompt_ids, completion_ids) -> [P, G]`` rewards."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[Sequence[str]],
                 prompt_ids: Sequence[Sequence[int]],
                 completion_ids: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor: ...


def _check_shape(prompts: Sequence[Any], completions: Sequence[Sequence[Any]]) -> int:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion groups")
    sizes = {len(c) for c in completions}
    if len(sizes) > 1:
        raise ValueError(f"every prompt needs the same number of completions, got {sorted(sizes)}")
    return sizes.pop() if sizes else 0


@dataclass
class FunctionReward:
    """``fn(prompt, completion) -> float`` on text, applied to every sample."""

    fn: Callable[[str, str], float]
    name: str = "function"

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None
                 ) -> torch.Tensor:
        g = _check_shape(prompts, completions)
        values = [[float(self.fn(p, c)) for c in cs] for p, cs in zip(prompts, completions,
                                                                      strict=True)]
        return torch.tensor(values, dtype=torch.float32).reshape(len(prompts), g)


@dataclass
class ModelReward:
    """A reward model over prefix-shared packed rows (module docstring).

    ``same_tokenizer=True`` (default) scores the sampled token ids directly: exact, and no
    re-tokenization -- right when the reward model was trained with the policy's tokenizer (as in
    the lab). Otherwise each text is re-tokenized with ``tokenizer`` as ``prompt + separator +
    completion``.

    ``max_length``: tokens of ``prompt + completion`` the model scores (the prompt keeps its
    last tokens: :func:`~prefkit.rewards.scoring.fit_group`); None: the model's
    ``max_position_embeddings``, at most :data:`~prefkit.rewards.scoring.DEFAULT_MAX_LENGTH`.
    ``truncated`` counts the prompts and completions it had to cut so far.
    """

    model: Any
    tokenizer: Any = None
    same_tokenizer: bool = True
    separator: str = " "
    field: str = "rewards"
    batch_size: int = 16
    name: str = "reward_model"
    max_length: int | None = None
    truncated: int = 0

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None
                 ) -> torch.Tensor:
        g = _check_shape(prompts, completions)
        if self.same_tokenizer and prompt_ids is not None and completion_ids is not None:
            out = torch.zeros(len(prompts), g)
            for idx, o in self._outputs(prompt_ids, completion_ids):
                values = getattr(o, self.field)
                if values is None:
                    raise ValueError(f"the reward model has no output {self.field!r}")
                out[idx] = values[:, :g].float().cpu()
            return out
        from .scoring import score_prompt_groups, tokenize_groups

        if self.field != "rewards":
            raise ValueError("field other than 'rewards' needs same_tokenizer=True")
        tokenizer = self._tok()
        if tokenizer is None:
            raise ValueError("scoring text needs the reward model's tokenizer")
        texts = [[self.separator + c for c in cs] for cs in completions]
        groups, report = tokenize_groups(tokenizer, list(prompts), texts,
                                         max_length=self._max_length())
        self.truncated += report.prompts + report.responses
        return score_prompt_groups(self.model, groups, pad_id=self._pad(),
                                   batch_size=self.batch_size)[0][:, :g]

    def _max_length(self) -> int:
        from .scoring import default_max_length

        return self.max_length if self.max_length is not None else default_max_length(self.model)

    def _outputs(self, prompt_ids, completion_ids):
        """``(indices, RewardOutput)`` per packed batch of the sampled ids (one prefix-shared
        group per prompt; an empty completion is scored as EOS), fitted to the budget."""
        from .scoring import fit_group

        budget = self._max_length()
        groups = []
        for p, cs in zip(prompt_ids, completion_ids, strict=True):
            group, prompt_cut, n_cut = fit_group(
                PromptGroup(list(p), [list(c) or [self._eos()] for c in cs]), budget)
            self.truncated += prompt_cut + n_cut
            groups.append(group)
        return packed_outputs(self.model, groups, pad_id=self._pad(), batch_size=self.batch_size)

    def _tok(self):
        return self.tokenizer or getattr(self.model, "tokenizer", None)

    def _pad(self) -> int:
        tok = self._tok()
        return 0 if tok is None or tok.pad_token_id is None else int(tok.pad_token_id)

    def _eos(self) -> int:
        tok = self._tok()
        if tok is None or tok.eos_token_id is None:
            raise ValueError("an empty completion can only be scored as EOS: give a tokenizer")
        return int(tok.eos_token_id)


def _win_probability(value: Any, first: str, second: str) -> float:
    """A judge's answer as P(first beats second): a float in [0, 1], or a comparison record
    with ``chosen`` and ``outcome`` (the lab's annotators: a tie counts 0.5; so does a record
    comparing an answer with itself, whose ``chosen`` cannot tell the two apart)."""
    if hasattr(value, "outcome") and hasattr(value, "chosen"):
        if value.outcome.is_tie or first.strip() == second.strip():
            return 0.5
        return 1.0 if str(value.chosen).strip() == first.strip() else 0.0
    if not isinstance(value, int | float):
        raise TypeError(f"a judge must return P(a beats b) as a float, got {type(value).__name__}")
    p = float(value)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"a judge returned {p}, not a probability in [0, 1]")
    return p


@dataclass
class PairwiseJudgeReward:
    """Round-robin win rate in the group under a pairwise judge (module docstring).

    ``judge(prompt, a, b)`` returns ``P(a beats b)`` (1, 0.5 and 0 for hard verdicts). With
    ``symmetric=True`` each pair is judged in both orders and averaged (position-bias
    correction): ``p = (judge(a, b) + 1 - judge(b, a)) / 2``.
    """

    judge: Callable[[str, str, str], float]
    symmetric: bool = True
    name: str = "judge"

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None
                 ) -> torch.Tensor:
        g = _check_shape(prompts, completions)
        if g < 2:
            raise ValueError("a pairwise judge needs at least 2 completions per prompt")
        out = torch.zeros(len(prompts), g)
        for i, (prompt, cs) in enumerate(zip(prompts, completions, strict=True)):
            for a in range(g):
                for b in range(a + 1, g):
                    p = _win_probability(self.judge(prompt, cs[a], cs[b]), cs[a], cs[b])
                    if self.symmetric:
                        q = _win_probability(self.judge(prompt, cs[b], cs[a]), cs[b], cs[a])
                        p = 0.5 * (p + 1.0 - q)
                    out[i, a] += p
                    out[i, b] += 1.0 - p
        return out / (g - 1)


@dataclass
class RewardShaping:
    """Post-processing of raw rewards ``[P, G]`` (lengths ``[P, G]`` in tokens):

    1. ``length_penalty``: ``r - length_penalty * length`` (a per-token cost);
    2. ``normalize``: ``"none"``, ``"batch"`` (``(r - mean) / std`` over the batch) or
       ``"running"`` (the same with running moments over all batches so far, as OpenRLHF's
       reward normalization);
    3. ``clip``: ``r`` clipped to ``[-clip, clip]``.
    """

    length_penalty: float = 0.0
    normalize: str = "none"
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.normalize not in REWARD_NORMALIZATIONS:
            raise ValueError(f"normalize must be none, batch or running, got {self.normalize!r}")
        self.moments = rl.RunningMoments()

    def __call__(self, rewards: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> torch.Tensor:
        r = rewards.float()
        if self.length_penalty:
            if lengths is None:
                raise ValueError("length_penalty needs the completion lengths")
            r = rl.length_penalty(r, lengths, coef=self.length_penalty)
        if self.normalize == "batch" and r.numel() > 1:
            r = rl.whiten(r)
        elif self.normalize == "running":
            self.moments.update(r)
            r = (r - self.moments.mean) / (self.moments.std + 1e-8)
        if self.clip is not None:
            r = r.clamp(-self.clip, self.clip)
        return r


@dataclass
class GPMPreference(ModelReward):
    """A general preference between the two samples of each prompt from a GPM reward model
    (:class:`~prefkit.rewards.heads.GPMHead`): column 0 of the ``[P, 2]`` output is
    ``P(sample 0 beats sample 1) = sigmoid(scale * <R e0, e1>)`` and column 1 its complement --
    the preference signal of ``online_ipo`` (it can be intransitive, which no scalar reward is).
    Scores the sampled ids (the GPM must share the policy's tokenizer)."""

    name: str = "gpm"

    def __call__(self, prompts, completions, prompt_ids, completion_ids) -> torch.Tensor:
        g = _check_shape(prompts, completions)
        if g != 2:
            raise ValueError(f"a general preference compares 2 samples per prompt, got {g}")
        probs = torch.zeros(len(prompts))
        for idx, out in self._outputs(prompt_ids, completion_ids):
            e = out.embeddings.float()
            with torch.no_grad():
                probs[idx] = torch.sigmoid(self.model.head.logit(e[:, 0], e[:, 1])).cpu()
        return torch.stack([probs, 1.0 - probs], dim=1)


@dataclass
class BTPreference:
    """A scalar reward source as a preference between two samples: ``P(0 beats 1) =
    sigmoid((r0 - r1) / temperature)`` (Bradley-Terry) in column 0, its complement in column 1
    -- lets ``online_ipo`` run on an ordinary reward model."""

    source: Callable
    temperature: float = 1.0
    name: str = "bt_preference"

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None
                 ) -> torch.Tensor:
        r = self.source(prompts, completions, prompt_ids, completion_ids).float()
        if r.shape[1] != 2:
            raise ValueError(f"a preference compares 2 samples per prompt, got {r.shape[1]}")
        p = torch.sigmoid((r[:, 0] - r[:, 1]) / self.temperature)
        return torch.stack([p, 1.0 - p], dim=1)


@dataclass
class ExecutedReward:
    """``fn(prompt, completion) -> float`` (or ``fn(prompt, completion, reference)`` when
    ``references`` maps each prompt to its reference answer; ``arguments`` names another order,
    e.g. ``("reference", "completion")`` for the verifiable checkers) run through a
    :class:`~prefkit.rewards.executor.RewardExecutor`: ``workers`` processes, ``timeout``
    seconds per call; a call that times out scores ``timeout_value``, one that fails
    (exception, crash, non-finite value) ``error_value`` -- both required, so a failure is never
    silently a 0. ``fn``: a top-level function, a picklable callable or ``"module:function"``
    (checked here, imported in the workers). The function may return a result with ``.value``
    and ``.status`` (the verifiable checkers); :meth:`status_counts` gives the counts of the
    last call (ok / wrong / unparsed / timeout / error), which the online loop logs.

    ``submit(...)`` starts scoring and returns a handle whose ``result()`` is the ``[P, G]``
    tensor, so scoring can overlap the generation of the next group. :meth:`close` (or ``with``)
    stops the workers; they start on first use.
    """

    fn: Callable | str
    timeout_value: float
    error_value: float
    workers: int = 2
    timeout: float = 10.0
    references: Mapping[str, Any] | None = None
    arguments: tuple[str, ...] | None = None
    name: str = "executed"
    _executor: RewardExecutor | None = field(default=None, init=False, repr=False,
                                             compare=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.fn, str):
            from ..importing import import_function

            import_function(self.fn)  # a clear ValueError now, not an error status per call
        if self.arguments is None:
            self.arguments = ("prompt", "completion") + (
                ("reference",) if self.references is not None else ())
        self.arguments = tuple(self.arguments)
        unknown = set(self.arguments) - {"prompt", "completion", "reference"}
        if unknown or not self.arguments:
            raise ValueError(f"arguments must name prompt, completion and/or reference, got "
                             f"{self.arguments!r}")
        if "reference" in self.arguments and self.references is None:
            raise ValueError("arguments name 'reference' but no references were given")
        self.executor()  # validates workers, timeout and the failure values

    def executor(self) -> RewardExecutor:
        """The executor (built on first use, started with the first call)."""
        if self._executor is None:
            self._executor = RewardExecutor(self.workers, self.timeout,
                                            timeout_value=self.timeout_value,
                                            error_value=self.error_value)
        return self._executor

    def submit(self, prompts, completions, prompt_ids=None, completion_ids=None
               ) -> ExecutedHandle:
        """Start scoring every sample; ``.result()`` of the handle is the ``[P, G]`` rewards."""
        g = _check_shape(prompts, completions)
        calls = []
        for p, cs in zip(prompts, completions, strict=True):
            known = {"prompt": p}
            if "reference" in self.arguments:
                if p not in self.references:
                    raise ValueError(f"reward {self.name!r}: no reference answer for prompt "
                                     f"{p[:80]!r}")
                known["reference"] = self.references[p]
            for c in cs:
                known["completion"] = c
                calls.append(tuple(known[a] for a in self.arguments))
        return ExecutedHandle(self, self.executor().submit(self.fn, calls), (len(prompts), g))

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None
                 ) -> torch.Tensor:
        return self.submit(prompts, completions, prompt_ids, completion_ids).result()

    def status_counts(self) -> dict[str, int]:
        """Samples per status in the last collected call."""
        return dict(self._counts)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> ExecutedReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ExecutedHandle:
    """Scoring in progress (:meth:`ExecutedReward.submit`): ``result()`` waits and returns the
    ``[P, G]`` float32 rewards; ``results()`` the per-sample
    :class:`~prefkit.rewards.executor.RewardResult` s, row-major."""

    source: ExecutedReward
    handle: RewardHandle
    shape: tuple[int, int]

    def done(self) -> bool:
        return self.handle.done()

    def results(self):
        out = self.handle.result()
        self.source._counts = self.handle.status_counts()
        return out

    def result(self) -> torch.Tensor:
        values = [r.value for r in self.results()]
        return torch.tensor(values, dtype=torch.float32).reshape(self.shape)
