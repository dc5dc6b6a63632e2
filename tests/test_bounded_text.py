"""Bounded tokenization of user text (issue 12, item 2): a prompt of any size is tokenized
through a window of characters proportional to the token budget, and the kept tokens equal
the tail (prompt) or head (response) of the whole text's tokenization."""

from __future__ import annotations

import random

import pytest
import torch

from _spy_tokenizer import TEMPLATE, WORDS, Spy
from prefkit.models.bounded import bound_text, model_max_length, text_window
from prefkit.models.generate import encode_prompt, encode_prompt_truncated
from prefkit.models.load import tiny_llama_config
from prefkit.models.tokenizer import train_tokenizer, word_level_tokenizer


@pytest.fixture(scope="module")
def words():
    tok = word_level_tokenizer(WORDS)
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def bpe():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "x1", "y22", "!", "?"])
                      for _ in range(30)) for _ in range(200)]
    return train_tokenizer(texts, vocab_size=300)


def _long_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS[:30]) for _ in range(n_words))


def test_encode_prompt_keeps_bos_and_the_last_tokens_of_a_huge_prompt(words):
    text = _long_text(400_000)  # ~1.3 MB
    spy = Spy(words)
    # plain text as text (the fixture's chat template would wrap it: "auto")
    ids, cut = encode_prompt_truncated(spy, text, 64, chat_template="never")
    assert cut and len(ids) == 64
    assert ids[0] == words.bos_token_id
    tail = text.split()[-63:]
    assert ids[1:] == words.convert_tokens_to_ids(tail)
    assert spy.longest < 64 * 64  # a window of characters, never the whole 1.3 MB
    # short prompts: unchanged, not flagged
    short = "w1 w2 w3"
    assert encode_prompt_truncated(words, short, 64) == (encode_prompt(words, short), False)
    assert encode_prompt(words, short, max_length=3, chat_template="never") == [
        words.bos_token_id, *words.convert_tokens_to_ids(["w2", "w3"])]
    # "auto": the one user message through the template, its last tokens kept
    assert encode_prompt(words, short, max_length=3) == [
        words.bos_token_id, *words.convert_tokens_to_ids(["w3", "assistant"])]


def test_bpe_tail_equals_the_tail_of_the_full_tokenization(bpe):
    rng = random.Random(3)
    text = " ".join(rng.choice(["alpha", "beta", "gamma!", "delta?", "x1", "y22"])
                    for _ in range(20_000))
    full = bpe(text, add_special_tokens=False)["input_ids"]
    for budget in (1, 7, 100, 513):
        window, cut = text_window(bpe, text, budget, keep="tail")
        assert cut and text.endswith(window) and len(window) < len(text)
        ids = bpe(window, add_special_tokens=False)["input_ids"]
        assert ids[-budget:] == full[-budget:]
        head, cut = text_window(bpe, text, budget, keep="head")
        assert cut and text.startswith(head)
        assert bpe(head, add_special_tokens=False)["input_ids"][:budget] == full[:budget]
    assert text_window(bpe, "alpha beta", 100, keep="tail") == ("alpha beta", False)


def test_conversation_contents_are_bounded_from_the_kept_side(words):
    big = _long_text(50_000)
    messages = [{"role": "system", "content": big}, {"role": "user", "content": "w1 w2"},
                {"role": "assistant", "content": big}, {"role": "user", "content": "w3 w4"}]
    kept, cut = bound_text(words, messages, 10, keep="tail")
    assert cut and [m["role"] for m in kept] == ["system", "user", "assistant", "user"]
    assert kept[3]["content"] == "w3 w4" and kept[1]["content"] == "" == kept[0]["content"]
    assert big.endswith(kept[2]["content"]) and len(kept[2]["content"]) < 1000
    ids, cut = encode_prompt_truncated(words, messages, 12)
    full = words(words.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert cut and ids == [words.bos_token_id, *full[-11:]]
    head, cut = bound_text(words, [{"role": "assistant", "content": big},
                                   {"role": "user", "content": "w1"}], 5, keep="head")
    assert cut and big.startswith(head[0]["content"]) and head[1]["content"] == ""
    assert bound_text(words, messages[1:2], 10, keep="tail") == (messages[1:2], False)


def test_conversational_prompt_goes_through_the_chat_template(words):
    messages = [{"role": "user", "content": "w1 w2"}]
    expected = [words.bos_token_id, *words.convert_tokens_to_ids(["user", "w1", "w2",
                                                                  "assistant"])]
    assert encode_prompt(words, messages) == expected
    plain = word_level_tokenizer(WORDS)  # no chat template
    with pytest.raises(ValueError, match="chat template"):
        encode_prompt(plain, messages)


def test_model_max_length_reads_the_config_and_caps_it():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(40, hidden_size=16, num_layers=1, num_heads=2,
                                               intermediate_size=32, max_position_embeddings=96))
    assert model_max_length(model, cap=4096) == 96
    assert model_max_length(model, cap=64) == 64
    assert model_max_length(torch.nn.Linear(2, 2), cap=512) == 512  # no config: the cap
