"""prefkit.models.generate.sample: K completions per prompt, reproducible for any batch size."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.lab.tasks import SortTask
from prefkit.models.generate import encode_prompt, gumbel_noise, sample
from prefkit.models.load import tiny_llama_config
from prefkit.models.tokenizer import word_level_tokenizer


@pytest.fixture(scope="module")
def lm():
    task = SortTask()
    tok = word_level_tokenizer(task.vocabulary())
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        # a large EOS bias makes some completions stop early, others run to the cap
        with torch.no_grad():
            model.lm_head.weight.mul_(4.0)
    rng = random.Random(0)
    prompts = [task.sample_prompt(rng) for _ in range(12)]  # 3-5 numbers: mixed lengths
    return model.eval(), tok, prompts


def test_k_completions_reproducible_and_seed_dependent(lm):
    model, tok, prompts = lm
    a = sample(model, tok, prompts, k=3, max_new_tokens=8, seed=1)
    assert len(a) == len(prompts) and all(len(group) == 3 for group in a)
    assert a == sample(model, tok, prompts, k=3, max_new_tokens=8, seed=1)
    assert a != sample(model, tok, prompts, k=3, max_new_tokens=8, seed=2)
    assert len({c for group in a for c in group}) > len(prompts)  # samples differ


def test_batch_size_independence(lm):
    model, tok, prompts = lm
    ref = sample(model, tok, prompts, k=4, max_new_tokens=8, seed=7, batch_size=64)
    for bs in (5, 16):
        assert sample(model, tok, prompts, k=4, max_new_tokens=8, seed=7, batch_size=bs) == ref
    # batch size 1: no padding at all
    one = sample(model, tok, prompts[:3], k=4, max_new_tokens=8, seed=7, batch_size=1)
    assert one == ref[:3]


def test_return_ids_match_texts_and_exclude_prompt(lm):
    model, tok, prompts = lm
    texts, ids = sample(model, tok, prompts, k=2, max_new_tokens=6, seed=3, return_ids=True)
    eos = tok.eos_token_id
    for text_group, id_group in zip(texts, ids, strict=True):
        for text, row in zip(text_group, id_group, strict=True):
            assert 1 <= len(row) <= 6
            assert eos not in row[:-1]  # cut at the first EOS ...
            assert row[-1] == eos or len(row) == 6  # ... or at the length cap
            assert text == tok.decode(row, skip_special_tokens=True).strip()
    assert any(row[-1] == eos for g in ids for row in g)


def test_greedy_matches_unpadded_argmax_decoding(lm):
    model, tok, prompts = lm
    greedy = sample(model, tok, prompts[:4], k=2, max_new_tokens=5, temperature=0)
    assert all(g[0] == g[1] for g in greedy)
    # top_k=1 sampling is greedy too
    assert sample(model, tok, prompts[:4], k=2, max_new_tokens=5, top_k=1, seed=9) == greedy
    for prompt, group in zip(prompts[:4], greedy, strict=True):
        ids = encode_prompt(tok, prompt)
        assert ids[0] == tok.bos_token_id
        out = []
        with torch.no_grad():
            for _ in range(5):
                nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        assert group[0] == tok.decode(out, skip_special_tokens=True).strip()


def test_sampling_follows_the_model_distribution(lm):
    model, tok, _ = lm
    prompt = "sort: 3 1 2"
    with torch.no_grad():
        logits = model(torch.tensor([encode_prompt(tok, prompt)])).logits[0, -1]
    probs = torch.softmax(logits / 2.0, -1)
    _, ids = sample(model, tok, [prompt], k=3000, max_new_tokens=1, temperature=2.0,
                    seed=0, batch_size=3000, return_ids=True)
    counts = torch.bincount(torch.tensor([row[0] for row in ids[0]]), minlength=len(probs))
    freq = counts.double() / 3000
    assert (freq - probs.double()).abs().max() < 0.04


def test_gumbel_noise_is_standard_gumbel_and_pure():
    rows = torch.arange(2000)
    g = gumbel_noise(5, rows, 3, 50)
    assert g.shape == (2000, 50)
    assert g.mean().item() == pytest.approx(0.5772, abs=0.02)  # Euler-Mascheroni
    assert g.var().item() == pytest.approx(torch.pi**2 / 6, abs=0.05)
    assert torch.equal(gumbel_noise(5, rows[7:9], 3, 50), g[7:9])
    assert not torch.equal(gumbel_noise(6, rows, 3, 50), g)
    assert not torch.equal(gumbel_noise(5, rows, 4, 50), g)


def test_bad_arguments(lm):
    model, tok, prompts = lm
    with pytest.raises(ValueError):
        sample(model, tok, prompts, k=0)
    with pytest.raises(ValueError):
        sample(model, tok, prompts, temperature=-1.0)
    with pytest.raises(ValueError):
        sample(model, tok, prompts, top_k=0)
