"""The reference-cache key: every input that changes the reference log-probs changes the key
(weights, architecture settings, dtype, token ids, truncation, chat template, the reference
model, active adapters); what leaves them unchanged (the folder a model sits in, a LoRA policy's
own adapters when they are switched off for the reference, train/eval mode) keeps it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch
from torch import nn

from prefkit.lab.wordworld import build_word_world
from prefkit.models.load import LoraSettings, apply_lora, load_model, reference_context
from prefkit.models.packing import PromptGroup
from prefkit.train.fingerprint import cache_key, hash_groups, hash_weights
from prefkit.train.preference import PreferenceConfig, train_preference


def _llama(seed=0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def _logits(model, ids=(3, 7, 5, 9, 11, 2)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


# ---------------------------------------------------------------- weights and architecture


def test_one_changed_weight_changes_the_key_in_float32_and_bfloat16():
    model = _llama()
    base = hash_weights(model)
    assert hash_weights(_llama()) == base  # same seed, same weights
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    assert hash_weights(model) != base
    half = _llama().to(torch.bfloat16)
    assert hash_weights(half) != base  # dtype
    before = hash_weights(half)
    with torch.no_grad():
        half.lm_head.weight[0, 0] += 0.5
    assert hash_weights(half) != before


@pytest.mark.parametrize(
    "change",
    [{"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},
     {"rms_norm_eps": 1e-3}, {"hidden_act": "gelu"}],
)
def test_architecture_settings_without_weights_change_the_key(change):
    # rotary frequencies live in a non-persistent buffer, activations and epsilons only in the
    # config: the weights are the same, the log-probs are not
    plain, other = _llama(), _llama(**change)
    for a, b in zip(plain.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(_logits(plain), _logits(other))
    assert hash_weights(other) != hash_weights(plain)


def test_the_folder_mode_and_grad_flags_do_not_change_the_key(tmp_path):
    model = _llama()
    model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"))
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b"))
    assert a.config.name_or_path != b.config.name_or_path
    assert hash_weights(a) == hash_weights(b) == hash_weights(model)
    model.train()
    model.lm_head.weight.requires_grad_(False)
    assert hash_weights(model) == hash_weights(a)


def test_a_wrapper_module_is_looked_through():
    class Wrapped(nn.Module):  # as DDP / accelerate wrap a model in ``.module``
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    model = _llama()
    assert hash_weights(Wrapped(model)) == hash_weights(model)


# ---------------------------------------------------------------- LoRA


def test_a_lora_policy_keys_as_its_base_whatever_its_adapters():
    # with reference "auto" the reference is the base model (adapters disabled)
    base = _llama()
    want = hash_weights(base)
    policy = apply_lora(_llama(), LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    with reference_context(policy):
        assert torch.allclose(_logits(policy), _logits(base), atol=1e-6)
    assert hash_weights(policy) == want


def test_active_adapters_loaded_from_a_folder_are_part_of_the_key(tmp_path):
    # a saved LoRA policy used as a (separate) reference computes WITH its adapters: two such
    # policies on one base must not share a cache entry, nor share the base model's
    from prefkit.models.load import save_model

    folder = _world(tmp_path / "base")["model"]
    keys = []
    for i in range(2):
        policy, tok = load_model(folder, lora=LoraSettings(r=4, alpha=8), seed=i)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.add_(0.05 * (i + 1))
        save_model(policy, tok, tmp_path / f"policy{i}")
        loaded, _ = load_model(tmp_path / f"policy{i}")
        keys.append(hash_weights(loaded))
    base, _ = load_model(folder)
    assert keys[0] != keys[1]
    assert hash_weights(base) not in keys


# ---------------------------------------------------------------- token ids


def _g(prompt, *responses):
    return PromptGroup(list(prompt), [list(r) for r in responses])


def test_every_token_and_every_boundary_is_in_the_key():
    base = [_g([5, 6, 7], [8, 9], [10]), _g([5], [11])]
    variants = {
        "prompt id": [_g([5, 6, 4], [8, 9], [10]), _g([5], [11])],
        "response id": [_g([5, 6, 7], [8, 9], [12]), _g([5], [11])],
        "prompt/response boundary": [_g([5, 6], [7, 8, 9], [7, 10]), _g([5], [11])],
        "response boundary": [_g([5, 6, 7], [8], [9, 10]), _g([5], [11])],
        "group order": [_g([5], [11]), _g([5, 6, 7], [8, 9], [10])],
        "one response fewer": [_g([5, 6, 7], [8, 9]), _g([5], [11])],
        "one group fewer": [_g([5, 6, 7], [8, 9], [10])],
    }
    key = hash_groups(base)
    assert hash_groups([_g([5, 6, 7], [8, 9], [10]), _g([5], [11])]) == key
    for what, groups in variants.items():
        assert hash_groups(groups) != key, what


def test_separator_bytes_inside_token_ids_cannot_forge_another_layout():
    # a token id whose 8 bytes spell seven response separators and a group end: the old
    # byte stream of [prompt=[t]] equalled that of [7 empty responses] + [an empty group]
    forged = int.from_bytes(b"|||||||\n", "little")
    one = [_g([forged])]
    other = [_g([], *([[]] * 7)), _g([])]
    assert hash_groups(one) != hash_groups(other)


# ---------------------------------------------------------------- the key itself


def test_cache_key_parts_and_settings():
    key = cache_key("w", "g", settings={"dtype": "float32", "layout": "packed-v1"})
    assert cache_key("w", "g", settings={"layout": "packed-v1", "dtype": "float32"}) == key
    assert cache_key("w", "g", settings={"dtype": "bfloat16", "layout": "packed-v1"}) != key
    assert cache_key("w", "g", settings={"dtype": "float32", "layout": "packed-v2"}) != key
    assert cache_key("g", "w", settings={"dtype": "float32", "layout": "packed-v1"}) != key
    # parts are delimited: moving characters between parts is another key
    assert cache_key("ab", "c") != cache_key("a", "bc")


# ---------------------------------------------------------------- end to end (train preference)


def _world(folder, seed=0):
    with contextlib.redirect_stderr(io.StringIO()):
        return build_word_world(folder, n_train=8, n_eval=1, prompt_len=6, seed=seed)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp")
    _world(folder)
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    chat = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    return folder


def _ref_key(world, tmp_path, **kw):
    cfg = dict(model=str(world / "model"), data=str(world / "pairs.jsonl"),
               output_dir=str(tmp_path / "out"), max_steps=1, batch_size=8,
               save_steps=0, save_final=False, progress=False, overwrite=True,
               reference_cache=str(tmp_path / "cache"), shuffle=False, seed=0)
    cfg.update(kw)
    return train_preference(PreferenceConfig(**cfg)).reference["key"]


def _with_template(world, name, template):
    folder = world / name
    if not folder.exists():
        shutil.copytree(world / "model", folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


TEMPLATE_A = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
TEMPLATE_B = "{% for m in messages %}<s> {{ m['content'] }} {% endfor %}"


def test_end_to_end_inputs_that_change_the_reference_change_the_key(world, tmp_path):
    plain = _ref_key(world, tmp_path)
    assert _ref_key(world, tmp_path, loss="ipo", beta=0.3) == plain  # the loss is no input
    assert _ref_key(world, tmp_path, max_prompt_length=3) != plain  # truncation
    assert _ref_key(world, tmp_path, dtype="bfloat16") != plain
    other = world / "other"
    if not other.exists():
        _world(other, seed=1)
    assert _ref_key(world, tmp_path, reference=str(other / "model")) != plain
    copy = world / "copy"
    if not copy.exists():
        shutil.copytree(world / "model", copy)
    assert _ref_key(world, tmp_path, reference=str(copy)) == plain  # content, not the path
    chat = str(world / "chat.jsonl")
    a = _ref_key(world, tmp_path, model=_with_template(world, "tpl_a", TEMPLATE_A), data=chat)
    b = _ref_key(world, tmp_path, model=_with_template(world, "tpl_b", TEMPLATE_B), data=chat)
    assert a != b
