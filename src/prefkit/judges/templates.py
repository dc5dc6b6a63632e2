"""Judge prompt templates: Jinja2 files that users can copy and override.

A template is a Jinja2 file with two blocks, ``system`` and ``user`` (the chat messages; for a
completions API they are joined by a blank line), and a few top-level settings::

    {%- set parser = "abc" -%}            (required: see prefkit.judges.parse.PARSERS)
    {%- set scale = [1, 10] -%}           (grading: the valid score range)
    {%- set needs = ["reference"] -%}     (request fields that must be present)

The blocks see ``prompt``, ``responses`` (in the order shown), ``reference``, ``rubric`` and
``k`` (the number of responses). Autoescaping is off (this is text for a model, not HTML) and an
unknown variable is an error. Built in (``src/prefkit/judges/templates/*.j2``):

========================  =========================================================  ========
name                      what                                                        parser
========================  =========================================================  ========
``pairwise``              which of two responses is better, no ties (AlpacaEval-like)  ab
``pairwise_tie``          the same with ties (MT-Bench pair-v2-like)                 abc
``pairwise_reference``    pairwise with ties against a reference answer              abc
``single``                one response graded 1-10 (MT-Bench single-v1-like)         score
``single_reference``      graded 1-10 against a reference answer                     score
``rubric_absolute``       rubric grading 1-5 with feedback (Prometheus-like)        result_score
``rubric_relative``       two responses compared on a rubric (Prometheus-like)       result_ab
``rank``                  K responses ranked, ties allowed                           ranking
========================  =========================================================  ========

``load_template(NAME)`` loads a built-in one, ``load_template(PATH)`` a file of yours (start
from a built-in: ``prefkit judge template NAME > mine.j2``). The template's SHA-256 is part of
the judge's configuration, so editing a template invalidates its cached judgments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import JudgeRequest
from .parse import PARSERS, TASK_OF, Parsed, parse

TEMPLATE_DIR = Path(__file__).parent / "templates"
BUILTIN_TEMPLATES: tuple[str, ...] = (
    "pairwise", "pairwise_tie", "pairwise_reference", "single", "single_reference",
    "rubric_absolute", "rubric_relative", "rank",
)
DEFAULT_TEMPLATE = {"compare": "pairwise_tie", "grade": "single", "rank": "rank"}
"""The template each task uses when none is named."""

_SAMPLE = {"prompt": "", "responses": ["", ""], "reference": "", "rubric": "", "k": 2}


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False)


@dataclass(frozen=True)
class JudgeTemplate:
    """A loaded template (module docstring)."""

    name: str
    source: str
    parser: str
    scale: tuple[float, float] | None
    needs: tuple[str, ...]

    @property
    def task(self) -> str:
        return TASK_OF[self.parser]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def messages(self, request: JudgeRequest) -> list[dict[str, str]]:
        """The chat messages for ``request`` (``system`` left out when the block is empty)."""
        if request.task != self.task:
            raise ValueError(f"template {self.name!r} answers {self.task} requests, got a "
                             f"{request.task} request")
        for name in self.needs:
            if not getattr(request, name):
                raise ValueError(f"template {self.name!r} needs a {name} for every request")
        return chat_messages(self.source, {
            "prompt": request.prompt, "responses": list(request.responses),
            "reference": request.reference, "rubric": request.rubric,
            "k": len(request.responses)})

    def prompt_text(self, request: JudgeRequest) -> str:
        """The messages as one prompt (completions APIs)."""
        return "\n\n".join(m["content"] for m in self.messages(request))

    def parse(self, text: str, request: JudgeRequest) -> Parsed:
        return parse(self.parser, text, scale=self.scale, k=len(request.responses))


def chat_messages(source: str, values: dict[str, Any]) -> list[dict[str, str]]:
    """The ``system`` and ``user`` blocks of the Jinja2 template ``source`` rendered with
    ``values``, as chat messages (an empty block left out); the compiled template is cached."""
    template = _compiled(source)
    out = []
    for role in ("system", "user"):
        if role in template.blocks:
            text = "".join(template.blocks[role](template.new_context(values))).strip()
            if text:
                out.append({"role": role, "content": text})
    return out


@lru_cache(maxsize=64)
def _compiled(source: str) -> Any:
    return _environment().from_string(source)


def template_from_source(source: str, name: str = "custom") -> JudgeTemplate:
    """A template from its text; errors name ``name`` and what is wrong."""
    import jinja2

    try:
        template = _compiled(source)
        module = template.make_module(dict(_SAMPLE))
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f", line {line}" if line else ""
        raise ValueError(f"template {name}{where}: {exc}") from None
    if "user" not in template.blocks:
        raise ValueError(f"template {name}: needs a {{% block user %}} (the judge's message)")
    parser = getattr(module, "parser", None)
    if parser not in PARSERS:
        raise ValueError(f"template {name}: {{% set parser = ... %}} must be one of "
                         f"{', '.join(PARSERS)}, got {parser!r}")
    scale = getattr(module, "scale", None)
    if scale is not None:
        if len(scale) != 2 or not float(scale[0]) < float(scale[1]):
            raise ValueError(f"template {name}: scale must be [low, high] with low < high, "
                             f"got {scale!r}")
        scale = (float(scale[0]), float(scale[1]))
    needs = tuple(getattr(module, "needs", ()) or ())
    for field in needs:
        if field not in ("reference", "rubric"):
            raise ValueError(f"template {name}: needs may list reference and rubric, got "
                             f"{field!r}")
    return JudgeTemplate(name=name, source=source, parser=parser, scale=scale, needs=needs)


def load_template(name_or_path: str | Path) -> JudgeTemplate:
    """A built-in template by name (:data:`BUILTIN_TEMPLATES`) or a template file."""
    text = str(name_or_path)
    if text in BUILTIN_TEMPLATES:
        path = TEMPLATE_DIR / f"{text}.j2"
        return template_from_source(path.read_text(encoding="utf-8"), name=text)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"template {text!r}: not a built-in template "
                         f"({', '.join(BUILTIN_TEMPLATES)}) and no such file")
    return template_from_source(path.read_text(encoding="utf-8"), name=str(path))
