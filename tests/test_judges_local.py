"""The local transformers judge: the model's own greedy text is what gets parsed, unparsable text
is retried and counted, and the verdict token's alternatives become p_first."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.judges.base import JudgeRequest, judge_all
from prefkit.judges.local import TransformersJudge
from prefkit.lab.tasks import SortTask
from prefkit.models.generate import sample
from prefkit.models.load import tiny_llama_config
from prefkit.models.serving import Choice, Generation
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.specs import judge_from_config


@pytest.fixture(scope="module")
def tiny():
    task = SortTask()
    tok = word_level_tokenizer([*task.vocabulary(), "[[A]]", "[[B]]"], add_bos=True)
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    return model, tok, task


def test_greedy_text_is_parsed_and_unparsable_text_counted(tiny):
    model, tok, task = tiny
    judge = TransformersJudge(model, tok, name="tiny", template="pairwise_tie", max_tokens=6,
                              prompt_format="plain", parse_retries=1)
    rng = random.Random(0)
    requests = [JudgeRequest("compare", task.sample_prompt(rng), ("1 2 3", "3 2 1"))
                for _ in range(4)]
    out = judge_all(judge, requests)
    for request, judgment in zip(requests, out, strict=True):
        prompt = judge._prompt(judge.template.messages(request))
        [[greedy]] = sample(model, tok, [prompt], k=1, max_new_tokens=6, temperature=0.0)
        assert judgment.raw == greedy
        # a random tiny model does not write a verdict: unparsed after 1 + 1 attempts, never a
        # verdict; its tokens are counted
        if "[[A]]" not in greedy and "[[B]]" not in greedy:
            assert judgment.status == "unparsed" and judgment.attempts == 2
            assert judgment.verdict is None and judgment.completion_tokens > 0


def test_verdict_token_alternatives_give_p_first(tiny, monkeypatch):
    model, tok, _ = tiny
    judge = TransformersJudge(model, tok, name="tiny", template="pairwise", logprobs=3)

    def fake_generate(prompts, **kwargs):
        assert kwargs["top_logprobs"] == 3
        pieces = ["B is better. ", "[[", "A", "]]"]
        alternatives = [[("B", 0.0)], [("[[", 0.0)],
                        [("A", math.log(0.7)), ("B", math.log(0.2)), ("x", math.log(0.1))],
                        [("]]", 0.0)]]
        choice = Choice(0, [5, 6, 7, 8], "".join(pieces), pieces, pieces, [(0, 0)] * 4,
                        "stop", alternatives=alternatives)
        return Generation([choice], [[1, 2, 3]])

    monkeypatch.setattr(judge.server, "generate", fake_generate)
    [j] = judge_all(judge, [JudgeRequest("compare", "p", ("a", "b"))])
    assert j.verdict == "first" and j.p_first == pytest.approx(0.7 / 0.9)
    assert (j.prompt_tokens, j.completion_tokens) == (3, 4)


def test_config_and_errors(tiny, tmp_path):
    model, tok, _ = tiny
    a = TransformersJudge(model, tok, name="tiny", template="pairwise")
    b = TransformersJudge(model, tok, name="tiny", template="pairwise", temperature=0.7)
    assert a.config() != b.config() and a.config()["backend"] == "transformers"
    with pytest.raises(ValueError, match="prompt_format"):
        TransformersJudge(model, tok, name="x", prompt_format="xml")
    with pytest.raises(ValueError, match="model: required"):
        judge_from_config({"backend": "hf"})
