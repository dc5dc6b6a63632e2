"""One prompt-encoding rule (prefkit.models.encoding, issue 15 item 3): online rollouts on a model
whose tokenizer has a chat template sample from the template; offline training data, rollouts,
reward scoring and the local judge encode the same conversation to the same ids; plain text on
a tokenizer without a template is encoded as before; "never" turns the template off."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.data.records import Comparison, Outcome
from prefkit.judges.local import TransformersJudge
from prefkit.models.encoding import encode_prompt, tokenize_example
from prefkit.models.load import tiny_llama_config
from prefkit.models.tokenizer import train_tokenizer, word_level_tokenizer
from prefkit.rewards.heads import ScalarHead
from prefkit.rewards.model import RewardModel
from prefkit.rewards.scoring import score_groups, tokenize_groups
from prefkit.train.preference_data import records_to_examples
from prefkit.train.rollout import SamplingSettings, TransformersBackend, collect_rollout

TEXTS = ["the quick brown fox jumps over the lazy dog", "which answer is better, A or B?",
         "sort 3 1 2 gives 1 2 3", "a judge compares two responses to a prompt"] * 10
CHAT = [{"role": "system", "content": "be brief"},
        {"role": "user", "content": "which answer is better?"}]


@pytest.fixture(scope="module")
def chat_model():
    """A byte-level BPE tokenizer with prefkit's chat template (it does not write BOS; encoding
    adds it once) and a tiny random Llama."""
    tok = train_tokenizer(TEXTS, vocab_size=300, min_frequency=1)
    config = tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=4,
                               intermediate_size=64, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    return model, tok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _template_ids(tok, messages) -> list[int]:
    """BOS + the template's text, tokenized without added special tokens (by hand)."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return [tok.bos_token_id, *_ids(tok, text + "<|assistant|>\n")]


def _greedy(model, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


@pytest.mark.parametrize("prompt", [CHAT, "which answer is better?"])
def test_rollouts_sample_from_the_chat_template(chat_model, prompt):
    model, tok = chat_model
    messages = CHAT if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    backend = TransformersBackend(SamplingSettings(max_new_tokens=5))
    ro = collect_rollout(backend, model, tok, [prompt], n=1, seed=0, greedy=True)
    want = _template_ids(tok, messages)
    user = _ids(tok, "<|user|>\n") if isinstance(prompt, str) else _ids(tok, "<|system|>\n")
    assert ro.prompt_ids[0] == want
    assert ro.prompt_ids[0][1:1 + len(user)] == user  # starts with the template's tokens
    # and the model was fed exactly those ids: greedy decoding from them by hand
    completion = ro.completion_ids[0][0]
    assert completion == _greedy(model, want, len(completion))[:len(completion)]


def test_never_keeps_plain_text_as_text(chat_model):
    model, tok = chat_model
    text = "which answer is better?"
    plain = tok(text)["input_ids"]  # the tokenizer adds BOS itself
    settings = SamplingSettings(max_new_tokens=3, chat_template="never")
    ro = collect_rollout(TransformersBackend(settings), model, tok, [text], n=1, seed=0)
    assert ro.prompt_ids[0] == plain == encode_prompt(tok, text, chat_template="never")
    example = tokenize_example(tok, text, [" A"], chat_template="never")
    assert example.prompt_ids == plain
    with pytest.raises(ValueError, match="chat_template must be one of auto, never"):
        SamplingSettings(chat_template="always")


@pytest.mark.parametrize("prompt", [CHAT, "which answer is better?"])
def test_offline_online_and_reward_scoring_encode_the_same_ids(chat_model, prompt):
    model, tok = chat_model
    record = Comparison(prompt=prompt, response_a="A is better", response_b="B",
                        outcome=Outcome.A)
    [offline] = records_to_examples([record], tok)
    ro = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=3)), model, tok,
                         [prompt], n=2, seed=1)
    [scored], _ = tokenize_groups(tok, [prompt], [["A is better", "B"]])
    online = ro.prompt_ids[0]
    assert offline.prompt_ids == online == scored.prompt_ids == encode_prompt(tok, prompt)
    # the completion is the assistant turn: content, end of turn, EOS
    assert offline.response_ids[0] == [*_ids(tok, "A is better<|end|>\n"), tok.eos_token_id]
    assert scored.response_ids == offline.response_ids
    # reward scores are read from those ids: a plain forward of prompt + completion
    torch.manual_seed(0)
    rm = RewardModel(model.get_decoder(), ScalarHead(32), tokenizer=tok).eval()
    got = score_groups(rm, [prompt], [["A is better", "B"]])[0]
    single = rm.score([prompt, prompt], ["A is better", "B"])
    with torch.no_grad():
        want = torch.stack([rm.head(rm.backbone(torch.tensor([online + r])).last_hidden_state
                                    [0, -1])["rewards"] for r in offline.response_ids])
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(single, want, atol=1e-5)


def test_local_judge_encodes_messages_through_the_template(chat_model):
    model, tok = chat_model
    judge = TransformersJudge(model, tok, name="tiny", template="pairwise", max_tokens=3,
                              logprobs=None, parse_retries=0)
    completion = judge._generate(CHAT, 0)
    assert completion.prompt_tokens == len(encode_prompt(tok, CHAT)) == len(
        _template_ids(tok, CHAT))


def test_without_a_template_plain_text_is_encoded_as_before():
    words = word_level_tokenizer(["w1", "w2", "w3"])  # has <s> but does not add it
    example = tokenize_example(words, "w1 w2", [" w3"])
    assert example.prompt_ids == words.convert_tokens_to_ids(["w1", "w2"])
    assert example.response_ids == [[words.convert_tokens_to_ids("w3"), words.eos_token_id]]
    # generation puts BOS first (as it always did)
    assert encode_prompt(words, "w1 w2") == [words.bos_token_id, *example.prompt_ids]
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        tokenize_example(words, [{"role": "user", "content": "w1"}], [" w3"])


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_rewards_no_longer_import_train():
    """The rewards <-> train cycle is gone: scoring and the reward model import the encoding
    from prefkit.models."""
    code = ("import sys, prefkit.rewards.model, prefkit.rewards.scoring; "
            "print(sorted(m for m in sys.modules if m.startswith('prefkit.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_training_configs_carry_the_mode(chat_model):
    """``chat_template`` is a field of the preference, reward-model and online configs (YAML /
    ``--set chat_template=never``), checked against its choices, and reaches the encoders."""
    from prefkit.train.config import ConfigError
    from prefkit.train.online import OnlineConfig
    from prefkit.train.preference import PreferenceConfig
    from prefkit.train.preference_data import DataReport
    from prefkit.train.reward import RewardConfig, records_to_rm_examples

    for cls in (PreferenceConfig, RewardConfig, OnlineConfig):
        assert cls().chat_template == "auto" and cls(chat_template="never").chat_template == "never"
        with pytest.raises(ConfigError, match="'always': expected one of auto, never"):
            cls(chat_template="always")
    _, tok = chat_model
    record = Comparison(prompt="which answer is better?", response_a="A", response_b="B",
                        outcome=Outcome.A)
    for mode in ("auto", "never"):
        [rm_example] = records_to_rm_examples([record], tok, kind_needed="pairs", keep_ties=False,
                                              attributes=[], margin_from_strength=False,
                                              report=DataReport(), chat_template=mode)
        [example] = records_to_examples([record], tok, chat_template=mode)
        want = encode_prompt(tok, record.prompt, chat_template=mode)
        assert rm_example.group.prompt_ids == example.prompt_ids == want
