"""A local transformers model as a judge (no server): the same templates, strict parsing and
retries as the HTTP judge (:class:`~prefkit.judges.text.TextJudge`), generation by
:class:`prefkit.models.serving.ModelServer` -- what ``prefkit serve-model`` runs, so a model
judges the same way in process and behind the API.

With ``logprobs=N`` (default 5) the verdict is soft: ``p_first`` comes from the verdict
letter's token alternatives (:func:`~prefkit.judges.text.soft_p_first`): the model's own
probabilities of ``A`` / ``B`` / ``C`` at the position where it wrote its verdict.

The chat messages are encoded by the rule training and rollouts use
(:func:`prefkit.models.encoding.encode_prompt`): through the tokenizer's chat template, with the
generation prompt and BOS once, when it has one -- the judge sees a conversation as the same ids
a policy trained on it would -- else they are joined as ``"role: content"`` lines ending in
``"assistant:"`` (:func:`~prefkit.models.serving.plain_chat_prompt`); ``prompt_format="plain"``
sends the template's text with no roles as raw text, never templated (models without chat
training, e.g. the lab's).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..models.encoding import has_chat_template
from ..models.serving import APIError, ModelServer, plain_chat_prompt
from .templates import JudgeTemplate
from .text import CallError, Completion, TextJudge

__all__ = ["TransformersJudge"]


class TransformersJudge(TextJudge):
    """``TransformersJudge(model, tokenizer, name=..., template=..., ...)``, or
    :meth:`from_pretrained` (a checkpoint folder or a tiny-model file; the lab's model through
    :func:`prefkit.specs.judge_from_spec`, ``hf:lab:TASK``). Requests run one at a time in a
    worker thread (the model is used under a lock)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str,
                 template: str | JudgeTemplate | None = None, task: str = "compare",
                 temperature: float = 0.0, max_tokens: int = 256, top_p: float | None = None,
                 seed: int = 0, logprobs: int | None = 5, prompt_format: str = "chat",
                 parse_retries: int = 2):
        super().__init__(template, task=task, parse_retries=parse_retries)
        if prompt_format not in ("chat", "plain"):
            raise ValueError(f"prompt_format {prompt_format!r}: expected chat or plain")
        self.server = ModelServer(model, tokenizer, default_max_tokens=max_tokens)
        self.name = name
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.seed = seed
        self.logprobs = logprobs
        self.prompt_format = prompt_format

    @classmethod
    def from_pretrained(cls, spec: str, **options: Any) -> TransformersJudge:
        """The model of ``spec``: a checkpoint folder or tiny-model file
        (:func:`prefkit.models.load.load_model`). The lab's base model (``lab:TASK``) is a spec
        of the layer above: :func:`prefkit.specs.judge_from_spec` (``hf:lab:TASK``)."""
        if spec.startswith("lab:"):
            raise ValueError(f"{spec!r} names the lab's base model: build this judge with "
                             f"prefkit.specs.judge_from_spec('hf:{spec}')")
        from ..models.load import load_model

        model, tokenizer = load_model(spec)
        options.setdefault("name", f"hf:{spec}")
        return cls(model.eval(), tokenizer, **options)

    def backend_config(self) -> dict[str, Any]:
        return {"backend": "transformers", "name": self.name, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed,
                "logprobs": self.logprobs, "prompt_format": self.prompt_format}

    def _prompt(self, messages: list[dict[str, str]]) -> Any:
        if self.prompt_format == "plain":
            return "\n\n".join(m["content"] for m in messages) + "\n"
        if has_chat_template(self.server.tokenizer):
            return messages
        return plain_chat_prompt(messages)

    def _generate(self, messages: list[dict[str, str]], attempt: int) -> Completion:
        prompt = self._prompt(messages)
        try:
            gen = self.server.generate(
                [prompt], n=1, max_tokens=self.max_tokens, default_tokens=None,
                temperature=self.temperature, top_p=self.top_p, seed=self.seed + attempt,
                stops=[], top_logprobs=self.logprobs)
        except APIError as exc:
            raise CallError(f"bad request {exc.status}", exc.message) from None
        [choice] = gen.choices
        top = None
        if choice.alternatives is not None:
            top = [(piece, dict(alternatives)) for piece, alternatives
                   in zip(choice.pieces, choice.alternatives, strict=True)]
        return Completion(text=choice.text, prompt_tokens=len(gen.prompt_ids[0]),
                          completion_tokens=len(choice.ids), top_logprobs=top,
                          finish_reason=choice.finish_reason)

    async def complete(self, messages: list[dict[str, str]], attempt: int) -> Completion:
        return await asyncio.to_thread(self._generate, messages, attempt)
