"""Constitutional-AI-style critique and revision: preference pairs from a principles file
(Bai et al., "Constitutional AI: Harmlessness from AI Feedback", arXiv 2212.08073, the
supervised critique -> revision stage).

For each (prompt, response) and a principle drawn for it (seeded, so a re-run draws the same):

1. **critique**: the model is asked how the response falls short of the principle;
2. **revision**: the model is asked to rewrite the response to address the critique;
3. a :class:`~prefkit.data.records.Comparison` with the revision as ``response_a`` (chosen)
   and the original as ``response_b``, annotator kind ``judge``, ``metadata`` holding the
   principle and the critique (``rationale`` too).

Any text model with a ``complete(messages, attempt)`` method does the writing: the HTTP judge
(:class:`~prefkit.judges.http.OpenAIJudge`) or a local one
(:class:`~prefkit.judges.local.TransformersJudge`). The prompts are two Jinja2 files (blocks
``system`` and ``user``; variables ``prompt``, ``response``, ``principle``, ``critique``)
users can replace. An empty revision, a revision equal to the original, or a failed call gives
no pair; each is counted with its reason.

A principles file is Markdown or text: each ``- `` / ``* `` bullet is a principle, or, with no
bullets, each non-empty line that is not a heading.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.records import Annotator, AnnotatorKind, Comparison, Outcome, text_content
from .templates import TEMPLATE_DIR, chat_messages
from .text import CallError

__all__ = ["DEFAULT_PROMPTS", "Revision", "read_principles", "revise_all", "revision_records"]

DEFAULT_PROMPTS = {"critique": TEMPLATE_DIR / "critique.txt.j2",
                   "revision": TEMPLATE_DIR / "revision.txt.j2"}


def read_principles(path: str | Path) -> list[str]:
    """The principles in ``path`` (module docstring); ``ValueError`` naming the file when
    there are none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"principles {path}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    bullets = [line[2:].strip() for line in lines if line[:2] in ("- ", "* ")]
    found = bullets or [line for line in lines if line and not line.startswith("#")]
    found = [p for p in found if p]
    if not found:
        raise ValueError(f"principles {path}: no principle found (expected '- ' bullets or "
                         "one principle per line)")
    return found


def _prompt_sources(prompts: dict[str, Path]) -> dict[str, str]:
    """The critique and revision templates' text, read once; each must have a user block."""
    sources = {}
    for name, path in prompts.items():
        source = Path(path).read_text(encoding="utf-8")
        if "block user" not in source:
            raise ValueError(f"prompt template {path}: needs a {{% block user %}}")
        sources[name] = source
    return sources


@dataclass(frozen=True)
class Revision:
    """One item's outcome: ``status`` ok / failed / unchanged / empty."""

    index: int
    principle: str
    critique: str | None
    revision: str | None
    status: str
    reason: str | None = None


def _principle(principles: Sequence[str], seed: int, prompt: str, response: str) -> str:
    digest = hashlib.sha256(f"{seed}\0{prompt}\0{response}".encode()).digest()
    return principles[random.Random(digest).randrange(len(principles))]


async def _revise_one(writer: Any, index: int, prompt: str, response: str, principle: str,
                      sources: dict[str, str], gate: asyncio.Semaphore) -> Revision:
    values = {"prompt": prompt, "response": response, "principle": principle}
    async with gate:
        try:
            critique = (await writer.complete(chat_messages(sources["critique"], values),
                                              0)).text
            values["critique"] = critique.strip()
            revised = (await writer.complete(chat_messages(sources["revision"], values),
                                             0)).text
        except CallError as exc:
            return Revision(index, principle, None, None, "failed", str(exc))
    revised = revised.strip()
    if not revised:
        return Revision(index, principle, values["critique"], None, "empty",
                        "the revision is empty")
    if revised == response.strip():
        return Revision(index, principle, values["critique"], revised, "unchanged",
                        "the revision equals the response")
    return Revision(index, principle, values["critique"], revised, "ok")


def revise_all(writer: Any, items: Sequence[tuple[Any, Any]], principles: Sequence[str], *,
               seed: int = 0, concurrency: int = 8,
               prompts: dict[str, Path] | None = None) -> list[Revision]:
    """Critique and revise every ``(prompt, response)`` (module docstring), at most
    ``concurrency`` at a time."""
    from .base import run_sync

    if not hasattr(writer, "complete"):
        raise ValueError("revising needs a text model (http:MODEL@URL, hf:PATH or a config "
                         "file of one); this judge only gives verdicts")
    if not principles:
        raise ValueError("no principles")
    sources = _prompt_sources({**DEFAULT_PROMPTS, **(prompts or {})})

    async def main() -> list[Revision]:
        gate = asyncio.Semaphore(concurrency)
        jobs = []
        for i, (prompt, response) in enumerate(items):
            p, r = text_content(prompt), text_content(response)
            jobs.append(_revise_one(writer, i, p, r, _principle(principles, seed, p, r),
                                    sources, gate))
        return list(await asyncio.gather(*jobs))

    return run_sync(main())


def revision_records(items: Sequence[tuple[Any, Any]], revisions: Sequence[Revision],
                     label: str) -> list[Comparison]:
    """The preference pairs of the ``ok`` revisions (module docstring)."""
    annotator = Annotator(label, AnnotatorKind.JUDGE)
    out = []
    for revision in revisions:
        if revision.status != "ok":
            continue
        prompt, response = items[revision.index]
        out.append(Comparison(
            prompt=prompt, response_a=revision.revision or "", response_b=response,
            outcome=Outcome.A, rationale=revision.critique, annotator=annotator,
            metadata={"method": "constitutional_revision", "principle": revision.principle,
                      "critique": revision.critique, "judge": label}))
    return out

