"""Prompt groups of any size: the unit the online loop samples, scores, filters, moves between
processes and trains on. A :class:`SampleGroup` is one prompt with its ``k`` completions (``k``
may differ between prompts); the loop keeps a list of them, flat in group order."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..rollout import Rollout

__all__ = ["PendingScores", "SampleGroup", "as_rollout", "flat", "from_rollout", "score_groups"]


@dataclass
class SampleGroup:
    """One prompt and its completions (:class:`~prefkit.train.rollout.Rollout`'s fields for one
    row), their raw rewards (the source's), ``adjusted`` rewards (plus the algorithm's terms),
    and ReMax's greedy sample's (``greedy_*``)."""

    prompt: Any
    prompt_ids: list[int]
    prompt_truncated: bool
    completions: list[str]
    completion_ids: list[list[int]]
    truncated: torch.Tensor
    empty: torch.Tensor
    stopped: torch.Tensor
    raw: torch.Tensor | None = None
    adjusted: torch.Tensor | None = None
    greedy_raw: torch.Tensor | None = None
    greedy_adjusted: torch.Tensor | None = None
    greedy_length: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.completion_ids)

    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(c) for c in self.completion_ids], dtype=torch.float32)


def from_rollout(ro: Rollout, sizes: Sequence[int]) -> list[SampleGroup]:
    """Prompt ``i`` of a rollout with its first ``sizes[i]`` completions."""
    cut = ro.prompt_truncated
    return [SampleGroup(prompt=ro.prompts[i], prompt_ids=ro.prompt_ids[i],
                        prompt_truncated=bool(cut[i]) if cut is not None else False,
                        completions=ro.completions[i][:k], completion_ids=ro.completion_ids[i][:k],
                        truncated=ro.truncated[i, :k], empty=ro.empty[i, :k],
                        stopped=ro.stopped[i, :k])
            for i, k in enumerate(sizes)]


def flat(groups: Sequence[SampleGroup], attr: str) -> torch.Tensor:
    """A per-sample field of every group, concatenated (``"lengths"`` for the lengths)."""
    parts = [g.lengths() if attr == "lengths" else getattr(g, attr) for g in groups]
    return torch.cat(parts) if parts else torch.zeros(0)


def score_groups(groups: Sequence[SampleGroup], reward: Callable,
                 check: Callable[[torch.Tensor, Rollout], None],
                 counts: Counter | None = None) -> torch.Tensor:
    """Score every group with ``reward(prompts, completions, prompt_ids, completion_ids) ->
    [P, k]``: one call per group size (one call when all groups have the same size); each
    call's ``[P, k]`` result is passed to ``check`` with its rows as a rollout, and a source's
    ``status_counts()`` (when it has one) is added to ``counts``. Returns the flat rewards
    (:class:`PendingScores` with every group submitted at once)."""
    pending = PendingScores(reward)
    pending.submit(groups)
    return pending.gather(check, counts)


class PendingScores:
    """Rewards of groups added chunk by chunk (:meth:`submit`: one call per group size of the
    chunk), collected by :meth:`gather`. A source that computes in the background (it has
    ``submit(prompts, completions, prompt_ids, completion_ids)`` returning a handle whose
    ``result()`` is the ``[P, k]`` rewards, as
    :class:`~prefkit.rewards.sources.ExecutedReward`) goes on scoring while the caller does
    other work (generates the next chunk); any other source is called at once.

    :meth:`gather` ends exactly as scoring all the groups at once: the calls' rows are put back
    in group order, then ``check`` sees one ``[P, k]`` tensor per group size (sizes in order of
    first appearance, rows in group order), and ``counts`` gets the source's ``status_counts()``
    of each call, so it holds their sum. A per-sample reward's value does not depend on which
    call scored it, so the rewards do not depend on the chunks."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.groups: list[SampleGroup] = []
        self.calls: list[tuple[list[int], Any]] = []
        self.wait_seconds = 0.0

    def submit(self, chunk: Sequence[SampleGroup]) -> None:
        """Start scoring ``chunk``'s groups (they follow the groups submitted before)."""
        base = len(self.groups)
        self.groups.extend(chunk)
        background = callable(getattr(self.reward, "submit", None))
        for idx in _size_classes(chunk):
            ro = as_rollout([chunk[i] for i in idx])
            args = (ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
            call = self.reward.submit(*args) if background else _Scored(self.reward, args)
            self.calls.append(([base + i for i in idx], call))

    def gather(self, check: Callable[[torch.Tensor, Rollout], None],
               counts: Counter | None = None) -> torch.Tensor:
        """Wait for every submitted call (in submission order; the seconds spent waiting are
        added to :attr:`wait_seconds`), check and count (class docs); returns the flat rewards
        of every submitted group, in group order."""
        rows: list[torch.Tensor | None] = [None] * len(self.groups)
        start = time.perf_counter()
        for idx, call in self.calls:
            raw = call.result().float()
            # a background handle's result() leaves its counts on the source
            _add_counts(counts, call if isinstance(call, _Scored) else self.reward)
            for i, row in zip(idx, raw, strict=True):
                rows[i] = row
        self.wait_seconds += time.perf_counter() - start
        self.calls = []
        for idx in _size_classes(self.groups):
            check(torch.stack([rows[i] for i in idx]),  # type: ignore[misc]
                  as_rollout([self.groups[i] for i in idx]))
        return torch.cat(rows) if rows else torch.zeros(0)  # type: ignore[arg-type]


class _Scored:
    """A call of a source without ``submit``, made at once: its rewards and the source's
    ``status_counts()`` right after it (the next call replaces them on the source)."""

    def __init__(self, reward: Any, args: tuple) -> None:
        self._raw = reward(*args)
        self._counts = reward.status_counts() if hasattr(reward, "status_counts") else None

    def result(self) -> torch.Tensor:
        return self._raw

    def status_counts(self) -> dict:
        return self._counts or {}


def _size_classes(groups: Sequence[SampleGroup]) -> list[list[int]]:
    """The indices of the groups of each size, sizes in order of first appearance."""
    classes: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        classes.setdefault(g.size, []).append(i)
    return list(classes.values())


def _add_counts(counts: Counter | None, reward: Any) -> None:
    """Add the source's ``status_counts()`` (of its last collected call), when it has them."""
    if counts is not None and hasattr(reward, "status_counts"):
        counts.update({str(s): int(n) for s, n in reward.status_counts().items()})


def as_rollout(groups: Sequence[SampleGroup]) -> Rollout:
    """The groups as a :class:`~prefkit.train.rollout.Rollout`: ``[P, k]`` flags when every
    group has ``k`` completions, else flat ``[N]`` flags (groups of different sizes)."""
    same = len({g.size for g in groups}) <= 1

    def flags(attr: str) -> torch.Tensor:
        parts = [getattr(g, attr) for g in groups]
        if not parts:
            return torch.zeros(0, 0, dtype=torch.bool)
        return torch.stack(parts) if same else torch.cat(parts)

    return Rollout(prompts=[g.prompt for g in groups], prompt_ids=[g.prompt_ids for g in groups],
                   completions=[g.completions for g in groups],
                   completion_ids=[g.completion_ids for g in groups],
                   truncated=flags("truncated"), empty=flags("empty"), stopped=flags("stopped"),
                   prompt_truncated=torch.tensor([g.prompt_truncated for g in groups],
                                                 dtype=torch.bool))
