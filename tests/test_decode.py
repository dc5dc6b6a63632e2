"""prefkit.models.decode: the static-KV-cache decode loop gives the tokens of the former
``generate`` path (and of a plain uncached recomputation), log-probs equal a teacher-forced
forward, EOS / length / padding rules, backends and fallbacks."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, StaticCache

from prefkit.lab.tasks import SortTask
from prefkit.models.decode import (
    DecodeSettings,
    GenerateBackend,
    Generation,
    GenerationBackend,
    StaticCacheBackend,
    get_backend,
    gumbel_noise,
    sampling_scores,
    static_decode_unsupported,
)
from prefkit.models.generate import encode_prompt, sample
from prefkit.models.load import LoraSettings, apply_lora, tiny_llama_config
from prefkit.models.prefix_attention import (
    SharedPrefixCache,
    equal_groups,
    shared_prefix_attention,
)
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.models.vllm_backend import row_seed, vllm_unavailable
from prefkit.train.rollout import SamplingSettings, TransformersBackend, collect_rollout

CASES = [dict(), dict(temperature=0.7), dict(top_p=0.8), dict(top_k=3),
         dict(temperature=0.0), dict(min_new_tokens=4), dict(temperature=1.3, top_k=5, top_p=0.9)]


def _model(tok, attn="sdpa", layers=2, seed=0):
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=layers, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
        with torch.no_grad():  # a large EOS bias: some rows stop early, others hit the cap
            model.lm_head.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def world():
    task = SortTask()
    tok = word_level_tokenizer(task.vocabulary())
    rng = random.Random(0)
    prompts = [task.sample_prompt(rng) for _ in range(10)]  # 3-5 numbers: mixed lengths
    rows = [encode_prompt(tok, p) for p in prompts for _ in range(3)]
    return tok, prompts, rows, {"sdpa": _model(tok, "sdpa"), "eager": _model(tok, "eager")}


def _settings(tok, **kw):
    return DecodeSettings(**{"max_new_tokens": 10, "eos_id": tok.eos_token_id,
                             "pad_id": tok.pad_token_id, **kw})


def _reference(model, prompt, s: DecodeSettings, seed: int, row: int) -> list[int]:
    """The rule written out plainly: ONE row, no padding, no cache -- the whole sequence is
    recomputed at every step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for t in range(s.max_new_tokens):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()[None]
            if t < s.min_new_tokens:
                logits[:, s.eos_id] = float("-inf")
            if s.temperature == 0:
                nxt = int(logits.argmax())
            else:
                nxt = int(sampling_scores(logits, torch.tensor([row]), t, seed=seed,
                                          temperature=s.temperature, top_k=s.top_k,
                                          top_p=s.top_p).argmax())
            out.append(nxt)
            if nxt == s.eos_id:
                break
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_static_loop_equals_generate_for_every_setting(world, attn):
    """Exact token equality with the former path (Hugging Face generate + the rule as a
    logits processor) for several seeds, temperatures, top-k, top-p, greedy and
    min_new_tokens; batch size 7 splits the rows into chunks of different widths (and splits
    prompts' samples: copied cache rows), 30 keeps every prompt's 3 samples together
    (prompt-shared attention)."""
    tok, _, rows, models = world
    model = models[attn]
    for seed, batch_size in ((0, 7), (5, 30)) if attn == "sdpa" else ((1, 7), (1, 30)):
        for case in CASES:
            s = _settings(tok, batch_size=batch_size, **case)
            new = StaticCacheBackend().generate(model, rows, s, seed=seed, row_offset=3)
            old = GenerateBackend().generate(model, rows, s, seed=seed, row_offset=3)
            assert new.ids == old.ids, (seed, case)
    assert any(len(r) < 10 for r in new.ids) and any(len(r) == 10 for r in new.ids)


def test_first_argmax_is_argmax_with_ties_nan_and_infinities():
    """The decode loop picks tokens with ``max(-1).indices``; it must be ``argmax(-1)``: the
    first of tied maxima, the first NaN, a row of -inf, +inf entries."""
    from prefkit.models.decode import _first_argmax

    x = torch.randn(5, 4099, generator=torch.Generator().manual_seed(0))
    x[0, 5] = x[0, 9] = 99.0
    x[1, 7] = x[1, 3] = float("nan")
    x[2] = float("-inf")
    x[3, 4098] = x[3, 2] = float("inf")
    assert torch.equal(_first_argmax(x), x.argmax(-1))
    assert _first_argmax(x)[:4].tolist() == [5, 3, 0, 2]


def test_static_loop_equals_plain_uncached_rule(world):
    tok, _, rows, models = world
    for case in (dict(), dict(top_p=0.8, min_new_tokens=3), dict(temperature=0.0)):
        s = _settings(tok, **case)
        got = StaticCacheBackend().generate(models["sdpa"], rows[:9], s, seed=4, row_offset=11)
        for r, prompt in enumerate(rows[:9]):
            assert got.ids[r] == _reference(models["sdpa"], prompt, s, 4, 11 + r), (case, r)


def test_sample_default_backend_is_the_static_loop_with_the_same_texts(world, monkeypatch):
    tok, prompts, _, models = world
    model = models["sdpa"]
    calls = []
    original = StaticCacheBackend._chunk
    monkeypatch.setattr(StaticCacheBackend, "_chunk",
                        lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    new = sample(model, tok, prompts, k=3, max_new_tokens=8, seed=2, return_ids=True)
    assert calls  # the default went through the static loop
    old = sample(model, tok, prompts, k=3, max_new_tokens=8, seed=2, return_ids=True,
                 backend="transformers")
    assert new == old


@pytest.mark.parametrize("backend", ["prefkit", "transformers"])
def test_logprobs_equal_a_teacher_forced_forward(world, backend):
    tok, _, rows, models = world
    model = models["sdpa"]
    s = _settings(tok, batch_size=8, temperature=0.8, top_k=6)
    gen = get_backend(backend).generate(model, rows, s, seed=9, logprobs=True)
    assert gen.logprobs is not None and len(gen.logprobs) == len(rows)
    with torch.no_grad():
        for prompt, ids, lps in zip(rows, gen.ids, gen.logprobs, strict=True):
            assert len(lps) == len(ids)
            logits = model(torch.tensor([prompt + ids])).logits[0].float()
            full = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
            want = full.gather(-1, torch.tensor(ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(lps), want, atol=1e-5, rtol=0)


def test_eos_length_and_min_new_tokens(world):
    tok, _, rows, models = world
    model, eos = models["sdpa"], tok.eos_token_id
    free = StaticCacheBackend().generate(model, rows, _settings(tok), seed=0).ids
    for r in free:
        assert 1 <= len(r) <= 10 and eos not in r[:-1]
        assert r[-1] == eos or len(r) == 10  # cut at the first EOS or at the cap
    assert min(len(r) for r in free) < 4  # the EOS bias ends some rows early ...
    held = StaticCacheBackend().generate(model, rows, _settings(tok, min_new_tokens=4),
                                         seed=0).ids
    assert all(len(r) >= 4 and eos not in r[:3] for r in held)  # ... min_new_tokens holds it
    full = StaticCacheBackend().generate(model, rows, _settings(tok, min_new_tokens=10),
                                         seed=0).ids
    assert all(len(r) == 10 and eos not in r for r in full)
    no_eos = StaticCacheBackend().generate(model, rows, _settings(tok, eos_id=None), seed=0).ids
    assert all(len(r) == 10 for r in no_eos)  # without an EOS id no row finishes early
    assert any(eos in r for r in no_eos)  # ... although some sampled the model's EOS
    # generate too (left alone it would stop at the model's own EOS)
    assert GenerateBackend().generate(model, rows, _settings(tok, eos_id=None), seed=0).ids \
        == no_eos


def test_padding_rows_and_finished_rows_do_not_change_a_row(world):
    """Every row of a padded batch (short prompts left-padded, finished rows fed pad tokens
    while others go on) equals the row decoded alone, for any batch size."""
    tok, _, rows, models = world
    s = _settings(tok, batch_size=64)
    batch = StaticCacheBackend().generate(models["sdpa"], rows, s, seed=6).ids
    for bs in (1, 4):
        assert StaticCacheBackend().generate(models["sdpa"], rows, DecodeSettings(
            **{**s.__dict__, "batch_size": bs}), seed=6).ids == batch
    widths = {len(r) for r in rows}
    assert len(widths) > 1  # the batch really was padded


def _forwards(model, fn):
    """``fn()`` with every model forward's input shape, cache and attention implementation
    recorded."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((tuple(kwargs["input_ids"].shape), kwargs["cache"],
                     module.config._attn_implementation))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return fn(), seen
    finally:
        handle.remove()


def test_one_token_per_forward_each_prompt_prefix_stored_once(world):
    """rows[:6] is 2 prompts x 3 samples: ONE prefill forward over the 2 distinct prompts on a
    StaticCache of the prompt width, then one forward of ONE token per row per step, every one
    on the same SharedPrefixCache whose prefix is the prefill's keys (2 rows, not 6) and whose
    own slots hold the 6 rows' generated keys; the model's config is never touched."""
    tok, _, rows, models = world
    model = models["sdpa"]
    gen, seen = _forwards(model, lambda: StaticCacheBackend().generate(
        model, rows[:6], _settings(tok, min_new_tokens=10), seed=1))
    width = max(len(r) for r in rows[:6])
    assert rows[0] == rows[2] != rows[3] == rows[5]
    assert seen[0][0] == (2, width) and seen[0][2] == "sdpa"
    prefill = seen[0][1]
    assert isinstance(prefill, StaticCache) and prefill.layers[0].max_cache_len == width
    assert [(shape, impl) for shape, _, impl in seen[1:]] == [((6, 1), "sdpa")] * 9
    shared = seen[1][1]
    assert isinstance(shared, SharedPrefixCache) and all(c is shared for _, c, _ in seen[1:])
    layer = shared.layers[0]
    assert layer.prefix_keys is prefill.layers[0].keys and layer.prefix_keys.shape[0] == 2
    assert layer.keys.shape[0] == 6 and layer.keys.shape[2] == 10 and layer.group == 3
    assert model.config._attn_implementation == "sdpa"
    assert all(len(r) == 10 for r in gen.ids)


def test_prompts_with_unequal_sample_counts_copy_their_cache_rows(world):
    """rows[:5] is one prompt x 3 + one x 2 (a chunk boundary splits a group): the prefill's
    cache rows are copied to the samples, one StaticCache of prompt width + max_new_tokens,
    model's own attention with a 4D mask -- the same tokens as generate."""
    tok, _, rows, models = world
    model = models["sdpa"]
    s = _settings(tok, min_new_tokens=10)
    gen, seen = _forwards(model, lambda: StaticCacheBackend().generate(model, rows[:5], s,
                                                                       seed=1))
    width = max(len(r) for r in rows[:5])
    assert seen[0][0] == (2, width)
    assert [(shape, impl) for shape, _, impl in seen[1:]] == [((5, 1), "sdpa")] * 9
    cache = seen[0][1]
    assert isinstance(cache, StaticCache) and all(c is cache for _, c, _ in seen)
    assert cache.layers[0].max_cache_len == width + 10
    keys = cache.layers[0].keys
    assert keys.shape[0] == 5
    assert torch.equal(keys[0, :, :width], keys[2, :, :width])  # one prompt's samples
    assert not torch.equal(keys[0, :, :width], keys[3, :, :width])
    assert gen.ids == GenerateBackend().generate(model, rows[:5], s, seed=1).ids


def test_rows_in_any_order_are_grouped_and_put_back(world):
    """Samples of a prompt need not be adjacent: rows interleaved across prompts give, row for
    row, the tokens generate gives (the sampling rule keys on each row's global index)."""
    tok, _, rows, models = world
    mixed = [rows[i] for i in (0, 3, 6, 1, 4, 7, 2, 5, 8)]  # 3 prompts x 3, interleaved
    s = _settings(tok, top_p=0.9)
    got = StaticCacheBackend().generate(models["sdpa"], mixed, s, seed=3, row_offset=2)
    assert got.ids == GenerateBackend().generate(models["sdpa"], mixed, s, seed=3,
                                                 row_offset=2).ids


def _native_or_skip():
    from prefkit.models import native

    why = native.native_unavailable()
    if why is not None:
        pytest.skip(why)


def _shared_prefix_case(heads, kv_heads, group, dim, dtype=torch.float32):
    """A SharedPrefixCache layer of 3 prompts (two left-padded) whose rows wrote own slots
    0..2 and read 5 (slots 3 and 4 closed by the bias), and a query."""
    g = torch.Generator().manual_seed(0)
    prompts, width, new, step = 3, 5, 6, 2
    prompt_mask = torch.ones(prompts, width, dtype=torch.bool)
    prompt_mask[1, :2] = False
    prompt_mask[2, :4] = False
    prefill = type("Prefilled", (), {})()
    prefill.layers = [type("Layer", (), {})()]
    prefill.layers[0].keys = torch.randn(prompts, kv_heads, width, dim, generator=g).to(dtype)
    prefill.layers[0].values = torch.randn(prompts, kv_heads, width, dim, generator=g).to(dtype)
    cache = SharedPrefixCache(prefill, prompt_mask, group, new)
    layer = cache.layers[0]
    for t in range(step + 1):  # rows write their own slots 0..step
        cache.set_step(t, view=step + 3)
        layer.update(torch.randn(prompts * group, kv_heads, 1, dim, generator=g).to(dtype),
                     torch.randn(prompts * group, kv_heads, 1, dim, generator=g).to(dtype))
    query = torch.randn(prompts * group, heads, 1, dim, generator=g).to(dtype)
    return query, layer, prompt_mask, step


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("heads,kv_heads,group,dim",
                         [(4, 4, 2, 8), (4, 2, 5, 20), (6, 1, 2, 8), (2, 2, 4, 64)])
def test_shared_prefix_attention_equals_attention_over_the_concatenated_keys(
        impl, heads, kv_heads, group, dim):
    """Both implementations (the C++ operator's fused passes and the library products) against
    float64 sdpa on each row's own copy of its prompt's keys followed by its generated keys, pad
    slots of left-padded prompts and the own slots after the step masked, grouped-query heads
    repeated; groups not a multiple of the operator's 4-row blocks, head sizes not a multiple
    of its 16 lanes."""
    from prefkit.models import prefix_attention

    if impl == "native":
        _native_or_skip()
    query, layer, prompt_mask, step = _shared_prefix_case(heads, kv_heads, group, dim)
    if impl == "native":
        assert prefix_attention._native_applies(query, layer)
        got, _ = shared_prefix_attention(None, query, layer, layer, scaling=0.3)
    else:
        got, _ = prefix_attention.shared_prefix_attention_reference(query, layer, 0.3)
    prompts = prompt_mask.shape[0]
    owner = torch.arange(prompts).repeat_interleave(group)
    keys = torch.cat([layer.prefix_keys[owner], layer.keys[:, :, :step + 1]], 2)
    values = torch.cat([layer.prefix_values[owner], layer.values[:, :, :step + 1]], 2)
    rep = heads // kv_heads
    visible = torch.cat([prompt_mask[owner], torch.ones(prompts * group, step + 1,
                                                        dtype=torch.bool)], 1)
    want = torch.nn.functional.scaled_dot_product_attention(
        query.double(), keys.repeat_interleave(rep, 1).double(),
        values.repeat_interleave(rep, 1).double(), attn_mask=visible[:, None, None, :],
        scale=0.3)
    assert got.shape == (prompts * group, 1, heads, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.transpose(1, 2), atol=2e-6, rtol=1e-5)


def test_shared_prefix_attention_takes_the_library_path_outside_the_operators_domain():
    """float64 operands and operands asking for a gradient go through the library products
    (the C++ operator is float32, without autograd); its own checks refuse what it cannot run."""
    from prefkit.models import prefix_attention

    _native_or_skip()
    query, layer, _, _ = _shared_prefix_case(4, 2, 2, 8, torch.float64)
    assert not prefix_attention._native_applies(query, layer)
    got, _ = shared_prefix_attention(None, query, layer, layer, scaling=0.3)
    want, _ = prefix_attention.shared_prefix_attention_reference(query, layer, 0.3)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    query, layer, _, _ = _shared_prefix_case(4, 2, 2, 8)
    query.requires_grad_(True)
    assert not prefix_attention._native_applies(query, layer)
    got, _ = shared_prefix_attention(None, query, layer, layer, scaling=0.3)
    got.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    op = torch.ops.prefkit_native.shared_prefix_attention
    q = query.detach()
    args = (layer.prefix_keys, layer.prefix_values, layer.prefix_bias, layer.keys, layer.values,
            layer.own_bias)
    with pytest.raises(RuntimeError, match="query must be a float32 CPU tensor"):
        op(q.double(), *args, 2, 5, 0.3)
    with pytest.raises(RuntimeError, match="6 rows are not 3 prompts x 3"):
        op(q, *args, 3, 5, 0.3)
    with pytest.raises(RuntimeError, match="view 7 or own_bias outside the 6 own slots"):
        op(q, *args, 2, 7, 0.3)


def test_prompt_shared_decode_runs_the_cpp_operator_with_the_library_paths_tokens(world,
                                                                                monkeypatch):
    """An eager decode of prompts x samples loads the C++ operators, calls the attention
    operator once per layer and step and the sampler's hash once per step; with the operators
    unloaded (the library products, the tensor hash) the tokens are the same."""
    from prefkit.models import native

    _native_or_skip()
    tok, _, rows, models = world
    model = models["sdpa"]
    grouped = [r for r in rows[:6] for _ in range(3)]
    s = _settings(tok, batch_size=18, min_new_tokens=10)
    with torch.profiler.profile() as prof:
        got = StaticCacheBackend().generate(model, grouped, s, seed=5).ids
    calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("prefkit_native")}
    assert calls["prefkit_native::shared_prefix_attention"] == \
        model.config.num_hidden_layers * (s.max_new_tokens - 1)
    assert calls["prefkit_native::uniform"] == s.max_new_tokens  # the sampler's hash
    monkeypatch.setattr(native, "_LOADED", [])
    monkeypatch.setattr("prefkit.models.decode.load_native_for", lambda model: False)
    assert StaticCacheBackend().generate(model, grouped, s, seed=5).ids == got


def test_a_later_sdpa_registration_turns_the_shared_path_off(world, monkeypatch):
    """Another library re-registering transformers' 'sdpa' attention after prefkit's
    dispatcher: the decode loop notices and copies the prompts' cache rows instead (the same
    tokens), rather than handing that function a cache layer."""
    from transformers import AttentionInterface

    from prefkit.models import prefix_attention

    tok, _, rows, models = world
    model = models["sdpa"]
    want = StaticCacheBackend().generate(model, rows, _settings(tok), seed=2).ids
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", prefix_attention._SDPA)
    assert "registered again" in prefix_attention.shared_prefix_unsupported(model)
    got, seen = _forwards(model, lambda: StaticCacheBackend().generate(
        model, rows, _settings(tok), seed=2).ids)
    assert got == want and not any(isinstance(c, SharedPrefixCache) for _, c, _ in seen)


def test_groups_are_equal_or_refused():
    assert equal_groups([0, 1, 0, 1]) == ([0, 2, 1, 3], 2)
    assert equal_groups([0, 0, 1]) is None
    with pytest.raises(TypeError, match="SharedPrefixCache"):
        shared_prefix_attention(None, torch.zeros(1, 1, 1, 2), torch.zeros(1), None)


def test_other_threads_use_the_model_while_it_decodes(world):
    """The shared path changes no global state: while one thread decodes (prompt-shared
    attention), other threads run plain forwards of the same model and decode through the
    copy path, and every result equals its single-threaded value. (A decode loop that
    switched the model config's attention implementation failed this: a model server runs
    requests in threads.)"""
    import threading

    tok, _, rows, models = world
    model = models["sdpa"]
    s = _settings(tok, min_new_tokens=10)
    shared_want = StaticCacheBackend().generate(model, rows, s, seed=7).ids
    copy_want = StaticCacheBackend().generate(model, rows[:5], s, seed=8).ids
    probe = torch.tensor([rows[0] + rows[4]])
    with torch.no_grad():
        logits_want = model(probe).logits
    failures = []

    def repeat(fn):
        try:
            for _ in range(8):
                fn()
        except Exception as err:  # noqa: BLE001 -- reported by the main thread
            failures.append(repr(err))

    def shared():
        assert StaticCacheBackend().generate(model, rows, s, seed=7).ids == shared_want

    def copied():
        assert StaticCacheBackend().generate(model, rows[:5], s, seed=8).ids == copy_want

    def plain():
        with torch.no_grad():
            assert torch.equal(model(probe).logits, logits_want)

    threads = [threading.Thread(target=repeat, args=(fn,)) for fn in (shared, copied, plain)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_pad_equal_to_eos_and_restored_training_mode(world):
    tok, _, rows, models = world
    model = models["sdpa"].train()
    s = _settings(tok, pad_id=tok.eos_token_id)
    a = StaticCacheBackend().generate(model, rows, s, seed=3)
    assert model.training  # mode restored
    model.eval()
    assert a.ids == GenerateBackend().generate(model, rows, s, seed=3).ids


def test_lora_policy_runs_the_static_loop_with_the_same_tokens(world):
    tok, _, rows, _ = world
    model = apply_lora(_model(tok, seed=1), LoraSettings(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    assert static_decode_unsupported(model) is None
    for batch_size in (8, 30):  # prompts' samples split (copied cache rows), then together
        s = _settings(tok, batch_size=batch_size)
        assert StaticCacheBackend().generate(model, rows, s, seed=2).ids == \
            GenerateBackend().generate(model, rows, s, seed=2).ids


def test_unsupported_models_fall_back_to_generate(world):
    from transformers import MistralConfig

    tok, _, rows, _ = world
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, max_position_embeddings=128, sliding_window=4,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    assert "sliding-window" in static_decode_unsupported(model)
    s = _settings(tok, batch_size=8)
    assert StaticCacheBackend().generate(model, rows, s, seed=0).ids == \
        GenerateBackend().generate(model, rows, s, seed=0).ids
    assert "not a torch module" in static_decode_unsupported(object())


def test_rollouts_use_the_chosen_backend_and_min_new_tokens(world):
    tok, prompts, _, models = world
    model = models["sdpa"]
    runs = {name: collect_rollout(TransformersBackend(SamplingSettings(
        max_new_tokens=8, min_new_tokens=3, backend=name)), model, tok, prompts, n=3, seed=5)
        for name in ("prefkit", "transformers")}
    assert runs["prefkit"].completion_ids == runs["transformers"].completion_ids
    assert all(len(c) >= 3 for cs in runs["prefkit"].completion_ids for c in cs)


@pytest.mark.parametrize("cpp", [False, True])
def test_gumbel_noise_equals_the_plain_formula(cpp, monkeypatch):
    """The in-place hash, and the C++ operator the uncompiled loop uses where it is loaded,
    give the bits of the plain out-of-place formula (the definition the samples of earlier
    prefkit versions were drawn with)."""
    from prefkit.models import native

    if cpp:
        _native_or_skip()
    else:
        monkeypatch.setattr(native, "_LOADED", [])
    m32, mix = 0xFFFFFFFF, 0x45D9F3B

    def plain_mix(x):
        x = ((x ^ (x >> 16)) * mix) & m32
        x = ((x ^ (x >> 16)) * mix) & m32
        return x ^ (x >> 16)

    rows = torch.tensor([0, 1, 7, 123456, 2**40 + 3])
    for seed, step in ((0, 0), (5, 3), (2**33 + 1, 17)):
        h = plain_mix(torch.full_like(rows, seed & m32))
        h = plain_mix(h ^ (rows & m32))
        h = plain_mix(h ^ (step & m32))
        bits = plain_mix(plain_mix(h[:, None] ^ torch.arange(300)[None, :]) ^ 0x9E3779B9)
        want = -torch.log(-torch.log((bits.double() + 0.5) / 2.0**32))
        assert torch.equal(gumbel_noise(seed, rows, step, 300), want)


def test_cpp_uniform_has_the_bits_of_the_tensor_hash_for_any_int64():
    """``prefkit_native::uniform`` computes on uint32 after the first round: the same bits as
    ``_uniform``'s int64 tensor operations for any int64 hashes and tokens (negative, beyond
    2^32 and 2^47, the extremes), with the profiler seeing one operator instead of ~20."""
    from prefkit.models.decode import _uniform

    _native_or_skip()
    g = torch.Generator().manual_seed(0)
    edges = torch.tensor([0, 1, -1, 2**32 - 1, 2**32, 2**47, -(2**47) - 1, 2**62, 2**63 - 1,
                          -(2**63)])
    hashes = torch.cat([edges, torch.randint(-(2**63), 2**63 - 1, (50,), generator=g)])
    tokens = torch.cat([edges, torch.randint(-(2**63), 2**63 - 1, (300,), generator=g),
                        torch.arange(4096)])
    got = torch.ops.prefkit_native.uniform(hashes, tokens)
    assert got.dtype == torch.float64 and torch.equal(got, _uniform(hashes.clone(), tokens))
    assert bool(((got > 0) & (got < 1)).all())
    with pytest.raises(RuntimeError, match="int64 CPU tensors"):
        torch.ops.prefkit_native.uniform(hashes.int(), tokens)


def test_step_sampler_draws_the_rule_of_each_step():
    """The decode loop's per-chunk sampler (all steps' row hashes at once, buffers reused, EOS
    masked in float64, ``scores - log(-log u)``) picks the token of the plain rule at every
    step, for temperature, top-k, top-p and min_new_tokens, and its hashes of a step range are
    the one-step hashes."""
    from prefkit.models.decode import _first_argmax, _row_hash, _StepSampler

    rows = torch.tensor([0, 1, 7, 123456, 2**40 + 3])
    assert torch.equal(_row_hash(9, rows, torch.arange(6)),
                       torch.stack([_row_hash(9, rows, t) for t in range(6)]))
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(5, 300, generator=g) * 3 for _ in range(6)]
    steps[2][1, 4] = steps[2][1, 9] = 50.0  # a tie before the noise
    for case in ({"temperature": 1.0}, {"temperature": 0.7, "top_k": 20},
                 {"temperature": 1.3, "top_p": 0.8, "min_new_tokens": 4},
                 {"temperature": 0.0, "min_new_tokens": 2}):
        s = DecodeSettings(max_new_tokens=6, eos_id=3, pad_id=0, **case)
        sample = _StepSampler(rows, 6, s, 11, False, steps[0])
        for t, logits in enumerate(steps):
            ban = logits.clone()
            if t < s.min_new_tokens:
                ban[:, 3] = float("-inf")
            want = _first_argmax(ban) if s.temperature == 0 else _first_argmax(sampling_scores(
                ban, rows, t, seed=11, temperature=s.temperature, top_k=s.top_k,
                top_p=s.top_p))
            assert torch.equal(sample(logits, t), want), (case, t)
            assert not (t < s.min_new_tokens and (want == 3).any())


def _exact_scores(logits, h, tokens, closed, temperature):
    """The rule's float64 scores before their float32 rounding, eagerly (module docs)."""
    from prefkit.models.decode import _log_minus_log_u

    scores = logits.double() / temperature
    return torch.where(closed, float("-inf"), scores - _log_minus_log_u(h, tokens, False))


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_approximate_scores_are_within_their_bound_of_the_exact_ones(compiled):
    """The proposal's approximate scores (one float32 logarithm) differ from the rule's exact
    float64 scores by less than 2^-16 -- the bound its margin is 8x wider than -- over 256k
    hashes, every logit scale and a temperature other than 1, eagerly and compiled (where the
    logarithms are inductor's vectorized ones); closed tokens are -inf in both."""
    from prefkit.models.decode import _approximate_scores, _row_hash

    if compiled:
        _approximate_scores = torch.compile(_approximate_scores, dynamic=False)
    g = torch.Generator().manual_seed(5)
    tokens = torch.arange(4096)
    closed = tokens == 3
    worst = 0.0
    for scale, temperature in ((0.05, 1.0), (3.0, 0.7), (40.0, 1.0), (400.0, 1.3)):
        h = _row_hash(int(scale * 10), torch.arange(64), 2)
        logits = torch.randn(64, 4096, generator=g) * scale
        approx = _approximate_scores(logits, h, tokens, closed, temperature)
        exact = _exact_scores(logits, h, tokens, closed, temperature)
        assert torch.isinf(approx[:, 3]).all() and torch.isinf(exact[:, 3]).all()
        worst = max(worst, float((approx - exact)[:, tokens != 3].abs().max()))
    assert 0 < worst < 2.0**-16


def test_a_certain_proposal_is_the_rules_token():
    """Where the proposal counts one candidate its index is the token the exact rule draws
    (thousands of rows, logit scales from a nearly uniform model's to a peaked one's, EOS
    closed, T != 1); most rows are certain; a row whose runner-up is placed within the
    margin, a NaN row, a fully closed row and rows whose scores overflow float32 are not."""
    from prefkit.models.decode import _proposal, _StepSampler

    g = torch.Generator().manual_seed(6)
    rows = torch.arange(128)
    certain = total = 0
    for scale, temperature in ((0.05, 1.0), (1.0, 1.0), (5.0, 0.7), (30.0, 1.0)):
        s = DecodeSettings(max_new_tokens=8, min_new_tokens=4, eos_id=3, pad_id=0,
                           temperature=temperature)
        logits = torch.randn(128, 1000, generator=g) * scale
        sampler = _StepSampler(rows, 8, s, 21, False, logits)
        for t in range(8):
            h, toks, closed, temp = sampler.proposal_inputs(t)
            index, count = _proposal(logits, h, toks, closed, temp)
            want = sampler(logits, t)
            one = count == 1
            assert torch.equal(index[one], want[one]), (scale, t)
            certain += int(one.sum())
            total += len(rows)
    assert certain > 0.97 * total
    # row 0's runner-up made to score (almost exactly) what its winner scores
    s = DecodeSettings(max_new_tokens=2, pad_id=0)
    logits = torch.randn(3, 1000, generator=g)
    sampler = _StepSampler(torch.arange(3), 2, s, 4, False, logits)
    h, toks, closed, temp = sampler.proposal_inputs(0)
    exact = _exact_scores(logits, h, toks, closed, temp)
    first, second = exact[0].topk(2).indices.tolist()
    logits[0, second] += float(exact[0, first] - exact[0, second])
    logits[1] = float("nan")
    logits[2] = float("-inf")
    index, count = _proposal(logits, h, toks, closed, temp)
    assert count[0] >= 2 and count[1] != 1 and count[2] != 1
    # scores past float32's range round to a tie at infinity: never certain
    huge = torch.full((3, 1000), -1e38)
    huge[:, 7], huge[:, 9] = 3e38, 2.9e38
    assert not _proposal(huge, h, toks, closed, 0.5)[1].eq(1).any()
    assert torch.equal(_proposal(huge / 1e30, h, toks, closed, 0.5)[0], torch.full((3,), 7))


def test_the_sampler_takes_a_certain_proposal_and_computes_the_rest():
    from prefkit.models.decode import _StepSampler

    s = DecodeSettings(max_new_tokens=2, pad_id=0)
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(7))
    sampler = _StepSampler(torch.arange(4), 2, s, 4, False, logits)
    exact = sampler(logits, 0)
    planted = (exact + 1) % 50
    assert torch.equal(sampler(logits, 0, (planted, torch.ones(4, dtype=torch.long))),
                       planted)  # taken as it is: certain rows need no exact scores
    assert torch.equal(sampler(logits, 0, (planted, torch.tensor([1, 1, 2, 1]))), exact)
    assert sampler.proposal_inputs(2) is None  # past the last step
    for other in ({"temperature": 0.0}, {"top_k": 5}, {"top_p": 0.9}):
        assert _StepSampler(torch.arange(4), 2, DecodeSettings(max_new_tokens=2, **other),
                            4, False, logits).proposal_inputs(0) is None


def test_settings_and_backend_names_are_checked():
    with pytest.raises(ValueError, match="min_new_tokens"):
        DecodeSettings(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        DecodeSettings(top_p=0.0)
    with pytest.raises(ValueError, match="unknown generation backend 'vlm'"):
        get_backend("vlm")
    with pytest.raises(TypeError, match="GenerationBackend"):
        get_backend(3)
    assert isinstance(get_backend("prefkit"), StaticCacheBackend)
    assert isinstance(get_backend("transformers"), GenerationBackend)

    class Echo:
        name = "echo"

        def generate(self, model, prompt_ids, settings, *, seed, row_offset=0, logprobs=False):
            return Generation([list(p[-1:]) for p in prompt_ids])

    echo = Echo()
    assert get_backend(echo) is echo


def test_vllm_row_seeds_are_a_pure_function_of_seed_and_row():
    seeds = [row_seed(3, r) for r in range(200)]
    assert seeds == [row_seed(3, r) for r in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= x < 2**31 for x in seeds)
    assert seeds != [row_seed(4, r) for r in range(200)]


@pytest.mark.skipif(vllm_unavailable() is not None,
                    reason=f"vLLM backend: {vllm_unavailable()}")
def test_vllm_backend_follows_the_policy_weights(tmp_path):  # pragma: no cover - GPU only
    from prefkit.models.vllm_backend import VLLMBackend

    task = SortTask()
    tok = word_level_tokenizer(task.vocabulary())
    model = _model(tok).cuda()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    backend = VLLMBackend(str(tmp_path), gpu_memory_utilization=0.2,
                          engine_kwargs={"dtype": "float32", "max_model_len": 64})
    rows = [encode_prompt(tok, "sort: 3 1 2")] * 4
    s = _settings(tok, temperature=0.0)
    greedy = backend.generate(model, rows, s, seed=0, logprobs=True)
    assert greedy.ids == StaticCacheBackend().generate(model, rows, s, seed=0).ids
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0  # now EOS always wins
    assert backend.generate(model, rows, s, seed=0).ids == [[tok.eos_token_id]] * 4


def test_compile_modes_are_checked():
    with pytest.raises(ValueError, match="compile must be"):
        StaticCacheBackend(compile="fast")
    assert get_backend("prefkit-compiled").compile is True


@pytest.mark.slow
def test_compiled_noise_has_the_same_bits():
    """The compiled hash gives the eager noise bit for bit (integer operations and an exact
    conversion; the logarithms stay eager), for several batch shapes (one dynamic graph)."""
    for rows, vocab in ((torch.arange(32) * 7919 + 3, 4096), (torch.arange(5), 17)):
        for seed, step in ((0, 0), (5, 3), (2**33 + 1, 17)):
            assert torch.equal(gumbel_noise(seed, rows, step, vocab, compiled=True),
                               gumbel_noise(seed, rows, step, vocab))


@pytest.mark.slow
def test_compiled_step_gives_the_same_tokens(world):
    """Compiled decode steps, both ways: batches of 14 rows split prompts' samples (their
    cache rows are copied), batches of 30 do not (prompt-shared attention)."""
    tok, _, rows, models = world
    compiled = StaticCacheBackend(compile=True)
    for batch_size in (14, 30):
        s = _settings(tok, batch_size=batch_size, top_p=0.9)
        assert compiled.generate(models["sdpa"], rows, s, seed=8).ids == \
            StaticCacheBackend().generate(models["sdpa"], rows, s, seed=8).ids


@pytest.mark.slow
def test_compiled_steps_propose_the_next_token_with_the_same_tokens(world, monkeypatch):
    """Without top-k/top-p the compiled step also proposes the next token (_proposal): the
    same tokens as the eager loop, and the exact noise is computed for few of the steps."""
    from prefkit.models import decode

    tok, _, rows, models = world
    exact_steps = []
    original = decode._log_minus_log_u
    monkeypatch.setattr(decode, "_log_minus_log_u",
                        lambda *a: exact_steps.append(1) or original(*a))
    s = _settings(tok, batch_size=30, temperature=0.8, min_new_tokens=3)
    got = StaticCacheBackend(compile=True).generate(models["sdpa"], rows, s, seed=9).ids
    assert len(exact_steps) < 0.3 * s.max_new_tokens * -(-len(rows) // 30)
    exact_steps.clear()
    assert got == StaticCacheBackend().generate(models["sdpa"], rows, s, seed=9).ids
    assert exact_steps  # the eager loop computes every step exactly


def test_a_failing_compile_falls_back_to_eager_steps_with_the_same_tokens(world, monkeypatch):
    """A compiled step that fails -- here after running the whole forward once, so the cache
    has already been written -- warns once and the same step, and every later one, runs
    eagerly: the same tokens on both decode paths (14-row batches split prompts' samples and
    copy the prompts' cache rows, 30-row batches share them)."""
    from prefkit.models import decode

    tok, _, rows, models = world
    model = models["sdpa"]
    monkeypatch.setattr(decode, "_STEP_COMPILE_FAILED", [])

    def broken_compile(fn, **kwargs):
        def run(module, propose, **inputs):
            fn(module, propose, **inputs)  # writes this step's keys, then "fails to compile"
            raise RuntimeError("inductor: no working C++ compiler")
        return run

    for batch_size in (14, 30):
        monkeypatch.setattr(decode, "_STEP_COMPILE_FAILED", [])
        monkeypatch.setattr(torch, "compile", broken_compile)
        s = _settings(tok, batch_size=batch_size, min_new_tokens=6)
        with pytest.warns(UserWarning, match="compiling the decode step failed .*RuntimeError"):
            got = StaticCacheBackend(compile="step").generate(model, rows, s, seed=4,
                                                              logprobs=True)
        assert decode._STEP_COMPILE_FAILED == ["RuntimeError: inductor: no working C++ compiler"]
        monkeypatch.undo()
        want = StaticCacheBackend().generate(model, rows, s, seed=4, logprobs=True)
        assert got.ids == want.ids
        for a, b in zip(got.logprobs, want.logprobs, strict=True):  # the same attention
            assert a == pytest.approx(b, abs=1e-6)
