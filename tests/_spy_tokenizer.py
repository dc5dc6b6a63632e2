"""Shared by the bounded-tokenization tests: a small vocabulary, a plain chat template and a
tokenizer wrapper that records the longest text it was given."""

from __future__ import annotations

WORDS = [f"w{i}" for i in range(30)] + ["user", "assistant", "system"]
TEMPLATE = ("{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}")


class Spy:
    """A tokenizer that records the longest string it was asked to tokenize."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.longest = 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max(self.longest, len(text))
        return self._tok(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)
