"""What every judge takes and returns: :class:`JudgeRequest` in, :class:`Judgment` out.

One interface for every source of AI feedback -- an LLM behind an OpenAI-compatible server, a
local transformers model, a reward model, the lab's simulated judges, any Python callable --
with three tasks:

- ``compare``: two responses to a prompt, shown in the order given (``responses[0]`` first):
  a verdict ``first`` / ``second`` / ``tie`` and ``p_first``, the probability that the first
  response is better (a tie counts one half; a hard verdict gives 1, 0.5 or 0, a judge with
  log-probs or a reward model a soft value);
- ``grade``: one response on a scale (``score``), optionally against a reference answer or a
  rubric;
- ``rank``: K responses, best first, as tiers of indices (``[[2], [0, 1]]``: 2 best, 0 and 1
  tied).

A judgment's ``status`` is ``ok``, ``unparsed`` (the judge answered, but not in the expected
form, after every retry) or ``failed`` (no usable answer: a timeout, an HTTP error, a broken
body -- ``reason`` says which). An unparsed or failed judgment has no verdict, score or ranking:
it is never counted as a loss, a tie or a minimum score, and every report counts it
(:func:`status_counts`).

A judge is any object with an ``async judge(request) -> Judgment`` method and a ``config()``
dictionary (what the answers depend on: model, template, sampling settings -- the cache key's
judge part). :func:`judge_all` runs many requests with a concurrency bound, through a cache
when one is given.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

Task = Literal["compare", "grade", "rank"]
TASKS: tuple[str, ...] = ("compare", "grade", "rank")
STATUSES: tuple[str, ...] = ("ok", "unparsed", "failed")
VERDICTS: tuple[str, ...] = ("first", "second", "tie")


@dataclass(frozen=True)
class JudgeRequest:
    """One question for a judge. ``responses`` in the order shown (compare: 2, grade: 1, rank:
    K >= 2); ``reference``: a reference answer (reference-guided grading and comparison);
    ``rubric``: grading criteria (Prometheus-style); ``models``: the models that wrote the
    responses, when known (self-preference checks; never shown to the judge)."""

    task: Task
    prompt: str
    responses: tuple[str, ...]
    reference: str | None = None
    rubric: str | None = None
    models: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: expected one of {', '.join(TASKS)}")
        object.__setattr__(self, "responses", tuple(self.responses))
        n = len(self.responses)
        expected = {"compare": n == 2, "grade": n == 1, "rank": n >= 2}[self.task]
        if not expected:
            need = {"compare": "2", "grade": "1", "rank": "at least 2"}[self.task]
            raise ValueError(f"a {self.task} request needs {need} responses, got {n}")
        for i, text in enumerate((self.prompt, *self.responses)):
            if not isinstance(text, str):
                what = "prompt" if i == 0 else f"responses[{i - 1}]"
                raise TypeError(f"{what}: expected a string, got {type(text).__name__}")
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
            if len(self.models) != n:
                raise ValueError(f"models: expected {n} names, got {len(self.models)}")

    def swapped(self) -> JudgeRequest:
        """The same comparison with the two responses in the other order."""
        if self.task != "compare":
            raise ValueError("only a compare request can be swapped")
        models = None if self.models is None else self.models[::-1]
        return replace(self, responses=self.responses[::-1], models=models)

    def content(self) -> dict[str, Any]:
        """What the judge is shown (the cache key's request part: ``models`` excluded)."""
        return {"task": self.task, "prompt": self.prompt, "responses": list(self.responses),
                "reference": self.reference, "rubric": self.rubric}


@dataclass(frozen=True)
class Judgment:
    """A judge's answer to one :class:`JudgeRequest` (module docstring for the fields' rules).

    ``raw``: the judge's text (every attempt's last); ``rationale``: the explanation it gave
    before its verdict, when the template asks for one; ``prompt_tokens`` /
    ``completion_tokens``: as reported by the backend (summed over attempts); ``latency_s``:
    wall time over all attempts; ``attempts``: requests made (0 for a cache hit); ``cached``:
    served from the cache."""

    task: Task
    status: str = "ok"
    verdict: str | None = None
    p_first: float | None = None
    score: float | None = None
    ranking: list[list[int]] | None = None
    rationale: str | None = None
    raw: str | None = None
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: expected one of {', '.join(STATUSES)}")
        if self.status != "ok":
            if self.verdict is not None or self.score is not None or self.ranking is not None:
                raise ValueError(f"a {self.status} judgment carries no verdict, score or "
                                 "ranking")
            return
        if self.task == "compare":
            if self.verdict not in VERDICTS:
                raise ValueError(f"verdict {self.verdict!r}: expected first, second or tie")
            if self.p_first is None:
                object.__setattr__(self, "p_first",
                                   {"first": 1.0, "second": 0.0, "tie": 0.5}[self.verdict])
            elif not 0.0 <= self.p_first <= 1.0:
                raise ValueError(f"p_first {self.p_first}: expected a probability")
        elif self.task == "grade" and self.score is None:
            raise ValueError("an ok grade judgment needs a score")
        elif self.task == "rank" and not self.ranking:
            raise ValueError("an ok rank judgment needs a ranking")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judgment:
        return cls(**data)

    @classmethod
    def failed(cls, task: Task, reason: str, **fields: Any) -> Judgment:
        return cls(task=task, status="failed", reason=reason, **fields)

    @classmethod
    def unparsed(cls, task: Task, reason: str, **fields: Any) -> Judgment:
        return cls(task=task, status="unparsed", reason=reason, **fields)


@runtime_checkable
class Judge(Protocol):
    """A source of judgments (module docstring)."""

    name: str

    def config(self) -> dict[str, Any]:
        """Everything the answers depend on, JSON-serializable (the cache key's judge part)."""
        ...

    async def judge(self, request: JudgeRequest) -> Judgment:
        ...


def judge_label(judge: Judge) -> str:
    """A short readable name of a judge (annotator ids, report keys): ``http:MODEL``,
    ``lab:NAME``, the reward spec, ``jury(a,b,c)``."""
    config = judge.config()
    backend = config.get("backend")
    if backend == "jury":
        members = getattr(judge, "members", [])
        return f"jury-{config.get('aggregate')}({','.join(judge_label(m) for m in members)})"
    if backend == "http":
        return f"http:{config.get('model')}"
    if backend == "simulated":
        return f"lab:{config.get('name')}"
    if backend in ("reward", "genrm"):
        return str(config.get("spec"))
    return str(config.get("name") or getattr(judge, "name", backend))


def cache_key(judge_config: dict[str, Any], request: JudgeRequest) -> str:
    """SHA-256 of the judge's configuration and what the judge is shown, in that order: any
    change of model, template, sampling setting, prompt, response or response order changes
    it."""
    blob = orjson.dumps({"judge": judge_config, "request": request.content()},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class JudgmentCache(Protocol):
    """What :func:`judge_all` needs of a cache (:class:`prefkit.judges.cache.SQLiteCache`)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]: ...

    def put(self, key: str, judgment: Judgment) -> None: ...


async def ajudge_all(judge: Judge, requests: Sequence[JudgeRequest], *,
                     cache: JudgmentCache | None = None, concurrency: int = 8,
                     on_done: Callable[[int, Judgment], None] | None = None
                     ) -> list[Judgment]:
    """Every request's judgment, in order. At most ``concurrency`` requests in flight (a
    backend may bound itself further). With a ``cache``: hits are returned with
    ``cached=True`` and ``attempts=0`` and make no call; ``ok`` and ``unparsed`` answers are
    stored (a re-run gives the same counts), ``failed`` ones are not (a re-run tries again).
    ``on_done(index, judgment)`` is called as each finishes (progress bars)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    config = judge.config()
    label = judge_label(judge)
    keys = [cache_key(config, r) for r in requests] if cache is not None else []
    hits = cache.get_many(keys) if cache is not None else {}
    out: list[Judgment | None] = [None] * len(requests)
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        if cache is not None and keys[index] in hits:
            found = replace(hits[keys[index]], cached=True, attempts=0)
        else:
            async with gate:
                try:
                    found = await judge.judge(requests[index])
                except Exception as exc:  # a judge's bug must not lose the other answers
                    found = Judgment.failed(requests[index].task,
                                            f"{type(exc).__name__}: {exc}")
            if cache is not None and found.status != "failed":
                cache.put(keys[index], replace(found, extra={**found.extra, "judge": label}))
        out[index] = found
        if on_done is not None:
            on_done(index, found)

    await asyncio.gather(*(one(i) for i in range(len(requests))))
    return [j for j in out if j is not None]


def judge_all(judge: Judge, requests: Sequence[JudgeRequest], **options: Any
              ) -> list[Judgment]:
    """:func:`ajudge_all` from synchronous code (runs its own event loop)."""
    return run_sync(ajudge_all(judge, requests, **options))


def run_sync(coro: Awaitable[Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    raise RuntimeError("judge_all was called inside a running event loop: await "
                       "ajudge_all(...) instead")


def status_counts(judgments: Iterable[Judgment]) -> dict[str, int]:
    """``{"ok": n, "unparsed": n, "failed": n}`` (every key present)."""
    counts = Counter(j.status for j in judgments)
    return {s: counts.get(s, 0) for s in STATUSES}


def failure_reasons(judgments: Iterable[Judgment]) -> dict[str, int]:
    """How many judgments were not ok, by reason (the part before the first colon)."""
    counts = Counter((j.reason or "unknown").split(":")[0] for j in judgments if not j.ok)
    return dict(counts.most_common())


class FunctionJudge:
    """Any Python callable as a judge: ``fn(request) -> Judgment``, or for ``compare`` a float
    P(first better) in [0, 1], for ``grade`` a score, for ``rank`` a list of indices best first
    (or of tiers). ``name`` goes into the cache key: give a new one when the function changes.
    """

    def __init__(self, fn: Callable[[JudgeRequest], Any], name: str = "function"):
        self.fn = fn
        self.name = name

    def config(self) -> dict[str, Any]:
        return {"backend": "function", "name": self.name}

    async def judge(self, request: JudgeRequest) -> Judgment:
        value = self.fn(request)
        if isinstance(value, Judgment):
            return value
        return judgment_from_value(request, value)


def judgment_from_value(request: JudgeRequest, value: Any) -> Judgment:
    """A plain value as a judgment (see :class:`FunctionJudge`)."""
    if request.task == "compare":
        p = float(value)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"a compare judge returned {p}, not a probability in [0, 1]")
        verdict = "first" if p > 0.5 else "second" if p < 0.5 else "tie"
        return Judgment(task="compare", verdict=verdict, p_first=p)
    if request.task == "grade":
        return Judgment(task="grade", score=float(value))
    tiers = [list(t) if isinstance(t, list | tuple) else [int(t)] for t in value]
    return Judgment(task="rank", ranking=[[int(i) for i in t] for t in tiers])
