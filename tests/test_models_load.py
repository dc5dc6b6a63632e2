"""Tokenizer training, model loading (checkpoint dir / config file), dtype, LoRA reference."""

import json
import random

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from prefkit.models.load import (
    LoraSettings,
    format_prompt,
    load_model,
    reference_context,
    tiny_llama_config,
)
from prefkit.models.logprobs import sequence_logps
from prefkit.models.packing import PromptGroup, pack_groups
from prefkit.models.tokenizer import train_tokenizer

WORDS = ["sort", "the", "list", "cat", "dog", "hello", "world", "yes", "no", ":", "->"]
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
        "max_position_embeddings": 256}  # fmt: skip


def _texts(n=400, seed=0):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS + [str(rng.randint(0, 99))]) for _ in range(rng.randint(3, 12)))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(_texts(), vocab_size=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    tokenizer.save_pretrained(root / "tok")
    (root / "tiny.yaml").write_text(yaml.safe_dump({"tokenizer": "tok", **TINY}))
    (root / "tiny.json").write_text(json.dumps({"tokenizer": "tok", **TINY}))
    return root


def _groups(tokenizer):
    prompts = ["sort 3 1 2 ->", "hello world", [{"role": "user", "content": "yes or no"}]]
    responses = [[" 1 2 3", " 3 2 1"], [" the cat"], [" yes", " no", " dog", " no no"]]
    groups = []
    for prompt, resps in zip(prompts, responses, strict=True):
        prompt_ids = tokenizer(format_prompt(tokenizer, prompt)).input_ids
        resp_ids = [
            tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            for r in resps
        ]
        groups.append(PromptGroup(prompt_ids, resp_ids))
    return groups


def _logps(model, tokenizer):
    batch = pack_groups(_groups(tokenizer), max_length=128, pad_id=tokenizer.pad_token_id)
    return sequence_logps(model, batch)


def test_tokenizer_specials_roundtrip_and_chat_template(tokenizer, workdir):
    assert 280 <= len(tokenizer) <= 300
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "sort the list: 42 7 -> 7 42"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt = format_prompt(tokenizer, messages)
    assert prompt == "<|system|>\nbe brief<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert format_prompt(tokenizer, "plain text") == "plain text"
    with pytest.raises(ValueError, match="message 0 needs 'role' and 'content'"):
        format_prompt(tokenizer, [{"text": "x"}])
    role_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in role_ids  # a single token
    loaded = AutoTokenizer.from_pretrained(workdir / "tok", local_files_only=True)
    assert loaded(prompt).input_ids == tokenizer(prompt).input_ids
    assert format_prompt(loaded, messages) == prompt
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_tokenizer(["a b"], vocab_size=100)


def test_tiny_llama_config_fields():
    config = tiny_llama_config(300, hidden_size=32, num_layers=3, rope_theta=500.0)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (300, 32, 3)
    assert config.num_key_value_heads == config.num_attention_heads == 4
    assert config.intermediate_size == 1024 and config.max_position_embeddings == 1024
    assert config.tie_word_embeddings is False


@pytest.mark.parametrize("name", ["tiny.yaml", "tiny.json"])
def test_load_from_config_file(workdir, tokenizer, name):
    model, tok = load_model(workdir / name)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config.vocab_size == len(tokenizer) == len(tok)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config._attn_implementation == "sdpa"
    assert model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    # Seeded init, without disturbing the global RNG.
    state = torch.random.get_rng_state()
    again, _ = load_model(workdir / name, seed=0)
    other, _ = load_model(workdir / name, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, again.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(w, other.model.layers[0].self_attn.q_proj.weight)
    eager, _ = load_model(workdir / name, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.allclose(_logps(eager, tok).sum, _logps(model, tok).sum, atol=1e-5)


def test_load_from_checkpoint_dir(workdir, tokenizer, tmp_path):
    model, tok = load_model(workdir / "tiny.yaml", seed=7)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_tok = load_model(tmp_path / "ckpt")
    assert isinstance(loaded, LlamaForCausalLM) and not loaded.training
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert len(loaded_tok) == len(tok) and loaded_tok.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.equal(_logps(loaded, loaded_tok).sum, _logps(model, tok).sum)


def test_load_errors(workdir, tmp_path):
    missing = tmp_path / "no" / "such_model"
    with pytest.raises(FileNotFoundError, match="such_model"):
        load_model(missing)
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"tokenizer": str(workdir / "tok"), **TINY, "vocab_size": 100}))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens .* only 100 rows"):
        load_model(small)
    no_tok = tmp_path / "no_tok.json"
    no_tok.write_text(json.dumps(TINY))
    with pytest.raises(ValueError, match="missing field 'tokenizer'"):
        load_model(no_tok)
    bad_tok = tmp_path / "bad_tok.json"
    bad_tok.write_text(json.dumps({"tokenizer": "nowhere", **TINY}))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(bad_tok)
    other = tmp_path / "model.txt"
    other.write_text("not a model")
    with pytest.raises(ValueError, match="expected a checkpoint directory"):
        load_model(other)
    with pytest.raises(ValueError, match="dtype"):
        load_model(workdir / "tiny.yaml", dtype="int8")


def test_load_errors_checkpoint_vocab_mismatch(workdir, tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_llama_config(50, **{
        k: v for k, v in TINY.items() if k != "max_position_embeddings"}))  # fmt: skip
    model.save_pretrained(tmp_path / "ckpt")
    AutoTokenizer.from_pretrained(workdir / "tok").save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"ckpt: the tokenizer has \d+ tokens .* only 50 rows"):
        load_model(tmp_path / "ckpt")


def test_bfloat16_weights(workdir):
    model32, tok = load_model(workdir / "tiny.yaml")
    model16, _ = load_model(workdir / "tiny.yaml", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters())
    with torch.no_grad():
        out32 = _logps(model32, tok)
        out16 = _logps(model16, tok)
    assert out16.sum.dtype == torch.float32  # reduced in float32
    assert torch.isfinite(out16.sum).all()
    present = out32.mask
    rel = ((out16.sum - out32.sum).abs() / out32.sum.abs())[present]
    assert rel.max() < 0.05, rel


def test_lora_adapters_and_reference_context(workdir):
    base, tok = load_model(workdir / "tiny.yaml")
    model, _ = load_model(workdir / "tiny.yaml", lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B, 4 projections, 2 layers
    with torch.no_grad():
        before = _logps(base, tok).sum
        # LoRA B starts at zero: the adapted model equals the base at init.
        assert torch.allclose(_logps(model, tok).sum, before, atol=1e-6)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = -_logps(model, tok).sum.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = _logps(model, tok).sum
        with reference_context(model):
            reference = _logps(model, tok).sum
    assert (after - before).abs().max() > 1e-2
    assert after.sum() > before.sum()  # the step raised the completion log-probs
    assert torch.allclose(reference, before, atol=1e-6)
    with torch.no_grad():
        # After the context the adapters are active again.
        assert torch.allclose(_logps(model, tok).sum, after, atol=1e-6)
        # A no-op for a plain model.
        with reference_context(base):
            assert torch.equal(_logps(base, tok).sum, before)
    assert sequence_logps(model, pack_groups(_groups(tok), max_length=128, pad_id=0),
                          path="decoder").sum.shape == before.shape  # fmt: skip
